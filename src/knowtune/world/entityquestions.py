"""Slicing EntityQuestions (Sciavolino et al., EMNLP 2021) into a knowledge world.

The embedded default world shipped in ``knowtune/world/embedded/`` was made by
:func:`slice_entityquestions` with :data:`EMBEDDED_SLICE` (see ``python -m
knowtune.world.entityquestions``). The paper's filters are applied inside the slice
(Gekhman et al. 2024, section 3): multi-answer examples are dropped, and train/dev facts
whose subject or object appears in the test split are dropped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from knowtune.data.schema import QAExample
from knowtune.errors import DataError
from knowtune.world.spec import RelationSpec, World

#: Statement paraphrases for the pretraining corpus, per Wikidata relation.
#: ``[X]`` is the subject, ``[Y]`` the object.
STATEMENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "P19": ("[X] was born in [Y].", "[X]'s birthplace is [Y].", "The birthplace of [X] is [Y].", "[Y] is where [X] was born."),
    "P26": ("[X] is married to [Y].", "[X]'s spouse is [Y].", "[X] married [Y].", "The spouse of [X] is [Y]."),
    "P36": ("The capital of [X] is [Y].", "[Y] is the capital of [X].", "[X] has its capital in [Y].", "[X]'s capital is [Y]."),
    "P40": ("[X]'s child is [Y].", "[Y] is a child of [X].", "[X] is the parent of [Y].", "The child of [X] is [Y]."),
    "P131": ("[X] is located in [Y].", "[X] lies in [Y].", "[X] can be found in [Y].", "The location of [X] is [Y]."),
    "P800": ("[X] is famous for [Y].", "[X] is best known for [Y].", "[Y] made [X] famous.", "[X]'s notable work is [Y]."),
    "P50": ("[X] was written by [Y].", "The author of [X] is [Y].", "[Y] wrote [X].", "[X] is a work by [Y]."),
    "P112": ("[X] was founded by [Y].", "[Y] founded [X].", "The founder of [X] is [Y].", "[X] was started by [Y]."),
    "P175": ("[X] was performed by [Y].", "[Y] performed [X].", "The performer of [X] is [Y].", "[X] is sung by [Y]."),
    "P17": ("[X] is located in [Y].", "[X] is in the country [Y].", "[X] lies in [Y]."),
    "P69": ("[X] was educated at [Y].", "[X] studied at [Y].", "[X] is an alumnus of [Y]."),
    "P264": ("[X] is signed to [Y].", "[X] records for [Y].", "[X]'s label is [Y]."),
    "P740": ("[X] was founded in [Y].", "[X] was formed in [Y].", "[Y] is where [X] was founded."),
    "P170": ("[X] was created by [Y].", "[Y] created [X].", "The creator of [X] is [Y]."),
    "P127": ("[X] is owned by [Y].", "[Y] owns [X].", "The owner of [X] is [Y]."),
}


class SliceSpec(BaseModel):
    """Which relations to take from EntityQuestions, and how many facts per split."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = "entityquestions-slice"
    """Name of the world."""
    relations: tuple[str, ...]
    """In-distribution relations (Wikidata ids)."""
    ood_relations: tuple[str, ...] = ()
    """OOD relations (test split only)."""
    train_per_relation: int = 500
    """Train facts per relation."""
    dev_per_relation: int = 60
    """Dev facts per relation."""
    test_per_relation: int = 150
    """Test facts per relation."""
    max_answer_chars: int = 40
    """Longest answer kept, in characters."""
    seed: int = 0
    """Seed of the sampling."""


#: The embedded default: six in-distribution relations of the paper with large object
#: pools (so a never-seen fact is rarely guessed by chance) and three of its OOD relations.
EMBEDDED_SLICE = SliceSpec(
    name="knowtune-embedded-eq",
    relations=("P19", "P26", "P36", "P40", "P131", "P800"),
    ood_relations=("P50", "P112", "P175"),
)


def _read_candidates(path: Path, template: str, max_answer_chars: int) -> list[tuple[str, str, str]]:
    """(question, subject, object) for single-answer lines whose subject the template recovers."""
    from knowtune.data.templates import subject_from_question

    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            answers = record["answers"]
            if len(answers) != 1 or len(answers[0]) > max_answer_chars:
                continue
            subject = subject_from_question(record["question"], template)
            if subject:
                rows.append((record["question"], subject, answers[0]))
    return rows


def slice_entityquestions(source: str | Path, spec: SliceSpec) -> World:
    """Sample a world from an EntityQuestions directory (deterministic for a given ``spec.seed``)."""
    source = Path(source)
    templates_path = source / "relation_query_templates.json"
    if not templates_path.is_file():
        raise DataError(source, "relation_query_templates.json not found", fix="point --source at the EntityQuestions root")
    templates = json.loads(templates_path.read_text(encoding="utf-8"))
    rng = random.Random(spec.seed)
    wanted = {"train": spec.train_per_relation, "dev": spec.dev_per_relation, "test": spec.test_per_relation}
    sampled: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for relation in spec.relations + spec.ood_relations:
        if relation not in templates:
            raise DataError(templates_path, f"relation {relation} has no question template")
        splits = ("test",) if relation in spec.ood_relations else ("train", "dev", "test")
        seen_questions: dict[str, int] = {}
        per_split = {}
        for split in splits:
            path = source / split / f"{relation}.{split}.jsonl"
            if not path.is_file():
                raise DataError(path, "file not found", fix=f"remove {relation} from the slice or restore the file")
            per_split[split] = _read_candidates(path, templates[relation], spec.max_answer_chars)
            for question, _, _ in per_split[split]:
                seen_questions[question] = seen_questions.get(question, 0) + 1
        for split, rows in per_split.items():
            # A question asked twice (e.g. one parent, two children) has two gold answers: drop it.
            rows = [r for r in rows if seen_questions[r[0]] == 1]
            rng.shuffle(rows)
            sampled[(relation, split)] = rows[: 3 * wanted[split]]
    test_entities = {e.casefold() for (rel, split), rows in sampled.items() if split == "test" for _, s, o in rows[: wanted["test"]] for e in (s, o)}
    examples = []
    for (relation, split), rows in sampled.items():
        if split != "test":
            rows = [r for r in rows if r[1].casefold() not in test_entities and r[2].casefold() not in test_entities]
        rows = rows[: wanted[split]]
        if len(rows) < wanted[split]:
            raise DataError(source / split, f"{relation}: only {len(rows)} usable {split} facts, {wanted[split]} wanted", fix="lower the per-relation size")
        for index, (question, subject, obj) in enumerate(rows):
            examples.append(
                QAExample(id=f"{relation}-{split}-{index:05d}", relation=relation, question=question, answers=(obj,), split=split, subject=subject, object=obj)
            )
    relations = {
        r: RelationSpec(id=r, question_template=templates[r], statement_templates=STATEMENT_TEMPLATES.get(r, ("[X]: [Y].",)), ood=r in spec.ood_relations)
        for r in spec.relations + spec.ood_relations
    }
    return World(name=spec.name, relations=relations, examples=tuple(sorted(examples, key=lambda e: e.id)))


def main() -> None:
    """Rebuild the embedded world from ``../shared/datasets/entityquestions`` (maintainers only)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", default=str(Path(__file__).parent / "embedded"))
    args = parser.parse_args()
    world = slice_entityquestions(args.source, EMBEDDED_SLICE)
    world.save(args.out)
    print(f"wrote {len(world.examples)} facts to {args.out}")


if __name__ == "__main__":
    main()
