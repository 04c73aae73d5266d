"""A knowledge world: relations (question template + statement paraphrases) and facts.

A world is what knowtune pretrains its tiny base model on, and what the study audits
and fine-tunes on. On disk it is an EntityQuestions-layout directory
(``<dir>/{train,dev,test}/<relation>.<split>.jsonl``, records carrying ``id``, ``subject``
and ``object``) plus ``relations.json``, so every knowtune command reads it like any
other dataset.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from knowtune.data.schema import SPLITS, QAExample
from knowtune.errors import DataError
from knowtune.io import atomic_write_json, atomic_write_jsonl

RELATIONS_FILE = "relations.json"


class RelationSpec(BaseModel):
    """One relation: how its facts are asked (``[X]`` = subject) and stated (``[Y]`` = object)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    question_template: str
    statement_templates: tuple[str, ...] = Field(min_length=1)
    ood: bool = False

    @field_validator("question_template")
    @classmethod
    def _has_subject_slot(cls, value: str) -> str:
        if "[X]" not in value:
            raise ValueError("question_template must contain [X]")
        return value

    @field_validator("statement_templates")
    @classmethod
    def _has_both_slots(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for template in value:
            if "[X]" not in template or "[Y]" not in template:
                raise ValueError(f"statement template {template!r} must contain [X] and [Y]")
        return value

    def question(self, subject: str) -> str:
        return self.question_template.replace("[X]", subject)

    def statement(self, subject: str, obj: str, index: int) -> str:
        template = self.statement_templates[index % len(self.statement_templates)]
        return template.replace("[X]", subject).replace("[Y]", obj)


class World(BaseModel):
    """Relations plus facts; every fact is a :class:`QAExample` with subject and object set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    relations: dict[str, RelationSpec]
    examples: tuple[QAExample, ...]

    def split(self, split: str, *, ood: bool | None = None) -> list[QAExample]:
        """Examples of one split; ``ood`` keeps only (True) or drops (False) OOD relations."""
        return [
            ex
            for ex in self.examples
            if ex.split == split and (ood is None or self.relations[ex.relation].ood == ood)
        ]

    @property
    def in_distribution_relations(self) -> list[str]:
        return [r for r, spec in self.relations.items() if not spec.ood]

    @property
    def ood_relations(self) -> list[str]:
        return [r for r, spec in self.relations.items() if spec.ood]

    def save(self, directory: str | Path) -> Path:
        """Write the world in EntityQuestions layout plus ``relations.json``."""
        directory = Path(directory)
        grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for ex in self.examples:
            grouped[(ex.split, ex.relation)].append(
                {"id": ex.id, "question": ex.question, "answers": list(ex.answers), "subject": ex.subject, "object": ex.object}
            )
        for (split, relation), records in sorted(grouped.items()):
            atomic_write_jsonl(directory / split / f"{relation}.{split}.jsonl", records)
        atomic_write_json(
            directory / RELATIONS_FILE,
            {"name": self.name, "relations": [spec.model_dump(mode="json") for spec in self.relations.values()]},
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "World":
        """Read a world written by :meth:`save` (or any EQ-layout dir with a ``relations.json``)."""
        from knowtune.data import load_examples

        directory = Path(directory)
        relations_path = directory / RELATIONS_FILE
        if not relations_path.is_file():
            raise DataError(directory, f"not a knowtune world: {RELATIONS_FILE} is missing", fix="point at a directory written by `knowtune world` or the embedded world")
        try:
            meta = json.loads(relations_path.read_text(encoding="utf-8"))
            relations = {spec["id"]: RelationSpec.model_validate(spec) for spec in meta["relations"]}
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(relations_path, f"invalid relations file: {error}") from None
        examples = load_examples(directory)
        unknown = sorted({ex.relation for ex in examples} - set(relations))
        if unknown:
            raise DataError(relations_path, f"relations {unknown} have data files but no entry", fix="add them to relations.json")
        return cls(name=meta.get("name", directory.name), relations=relations, examples=tuple(sorted(examples, key=lambda e: e.id)))


def split_counts(examples: list[QAExample]) -> dict[str, dict[str, int]]:
    """``{relation: {split: count}}`` for printing."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {s: 0 for s in SPLITS})
    for ex in examples:
        counts[ex.relation][ex.split] += 1
    return {r: dict(c) for r, c in sorted(counts.items())}
