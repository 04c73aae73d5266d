"""Few-shot exemplar sets: N_ex sets of k exemplars per relation, drawn once with a seed.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 3: "we use N_ex = 10 different
random 4-shot prompts", exemplars from the dev split of the same relation as the
question, reused for every question of that relation. Each set here holds k exemplars
plus one spare: when the audited example is itself one of the k (possible with
``exemplars_from = train``, or when auditing the dev split), the spare takes its place,
so an example never sees its own answer. A relation therefore needs k + 1 candidates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from knowtune.data.schema import QAExample
from knowtune.errors import KnowtuneError


@dataclass(frozen=True)
class ExemplarSet:
    """k exemplars (in prompt order) and a spare used when the audited example is among them."""

    exemplars: tuple[QAExample, ...]
    spare: QAExample

    def for_example(self, example_id: str) -> tuple[QAExample, ...]:
        """The exemplars for ``example_id``: the set itself, with the spare in place of the example."""
        return tuple(self.spare if e.id == example_id else e for e in self.exemplars)

    def uses(self, example_id: str) -> bool:
        return any(e.id == example_id for e in self.exemplars)

    def to_record(self) -> dict:
        return {
            "ids": [e.id for e in self.exemplars],
            "spare": self.spare.id,
            "examples": [[e.question, e.answers[0]] for e in (*self.exemplars, self.spare)],
        }


def draw_exemplar_sets(pool: Sequence[QAExample], relations: Sequence[str], *, n_ex: int, k: int, seed: int,
                       source: str) -> dict[str, list[ExemplarSet]]:
    """Draw ``n_ex`` sets of ``k`` exemplars (+1 spare) per relation from ``pool``.

    Deterministic: candidates are sorted by id and each relation uses its own
    ``random.Random(f"{seed}:{relation}")``, so adding a relation, sharding or resuming
    never changes another relation's sets. Within a set the k + 1 examples are distinct.
    """
    by_relation: dict[str, list[QAExample]] = {}
    for example in pool:
        by_relation.setdefault(example.relation, []).append(example)
    sets: dict[str, list[ExemplarSet]] = {}
    for relation in sorted(set(relations)):
        candidates = sorted(by_relation.get(relation, []), key=lambda e: e.id)
        if len(candidates) < k + 1:
            raise KnowtuneError(
                f"relation {relation!r} has {len(candidates)} exemplar candidate(s) in the {source!r} split; "
                f"SliCK needs k + 1 = {k + 1} (k exemplars and a spare that replaces the audited example)",
                fix=_shortage_fix(source, k),
            )
        rng = random.Random(f"{seed}:{relation}")
        drawn = []
        for _ in range(n_ex):
            chosen = rng.sample(candidates, k + 1)
            drawn.append(ExemplarSet(exemplars=tuple(chosen[:k]), spare=chosen[k]))
        sets[relation] = drawn
    return sets


def _shortage_fix(source: str, k: int) -> str:
    if source == "dev":
        return ("add dev examples for this relation, use --exemplars-from train (the audited example is never its own "
                "exemplar), lower --k, or leave the relation out with --relations")
    return f"add {source} examples for this relation, lower --k (now {k}), or leave the relation out with --relations"


def draw_one_set_per_relation(pool: Sequence[QAExample], k: int, seed: int) -> dict[str, list[QAExample]]:
    """One seeded draw of ``k + 1`` exemplars per relation of ``pool`` (fewer when a relation
    has fewer), used by ``models recall`` and ``evaluate --format fewshot``: a question takes
    the first ``k`` that are not itself. One ``random.Random(seed)`` walks the relations in
    order of their first example by id, so the draw is that of knowtune's recall table."""
    rng = random.Random(seed)
    by_relation: dict[str, list[QAExample]] = {}
    for example in sorted(pool, key=lambda e: e.id):
        by_relation.setdefault(example.relation, []).append(example)
    return {relation: rng.sample(candidates, min(k + 1, len(candidates))) for relation, candidates in by_relation.items()}


def shots_for(drawn: Sequence[QAExample], example_id: str, k: int) -> list[QAExample]:
    """The first ``k`` exemplars of a :func:`draw_one_set_per_relation` set that are not ``example_id``."""
    return [e for e in drawn if e.id != example_id][:k]
