"""The training-set variants of the controlled study (Gekhman et al., EMNLP 2024, section 3).

Size rule. Let C(r, c) be the examples of relation r in SliCK category c. The paper fixes
|D| = sum_r n_r with n_r = min_c |C(r, c)| over the four categories. ``size=N`` replaces
|D| by N, split over relations in proportion to the n_r ("paper") or equally ("equal"),
by largest remainder (ties go to the relation that sorts first).

Unknown share. In D_X relation r holds u_r = round_half_up(n_r * X / 100) Unknown and
k_r = n_r - u_r Known examples (Known = HighlyKnown + MaybeKnown + WeaklyKnown), so every
D_X has the same size and relation mix; the total Unknown share is sum_r u_r / |D|.

Draws. Each pool (relation x Known, relation x Unknown, relation x category) is sorted
by id and shuffled once with a generator seeded by (seed, relation, pool); a variant
takes a prefix of it. Hence draws are nested: D_25's Unknown examples are a subset of
D_50's, D_50's Known examples a subset of D_25's, and D_Unknown equals D_100. Selected
examples keep the order of the input list.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from knowtune.curate.annotated import AnnotatedExample
from knowtune.errors import KnowtuneError
from knowtune.slick.categories import CATEGORIES

SizeSplit = Literal["paper", "equal"]
KNOWN_POOL = "Known"
_MAX_LISTED = 12  # shortfall lines shown in an error


@dataclass(frozen=True)
class Shortfall:
    """A draw that asks for more examples than a pool holds."""

    variant: str
    relation: str
    pool: str
    needed: int
    available: int

    def __str__(self) -> str:
        return f"{self.variant}: relation {self.relation}, {self.pool}: needed {self.needed}, available {self.available}"


def paper_sizes(examples: Iterable[AnnotatedExample]) -> dict[str, int]:
    """n_r = the size of relation r's smallest SliCK category (0 if one is empty), by relation."""
    counts = Counter((e.relation, e.category) for e in examples)
    relations = sorted({relation for relation, _ in counts})
    return {r: min(counts[r, c] for c in CATEGORIES) for r in relations}


def relation_sizes(examples: Sequence[AnnotatedExample], size: int | None = None, size_split: SizeSplit = "paper") -> dict[str, int]:
    """Examples per relation in every fixed-size variant: the paper's n_r, or ``size`` split over relations."""
    if size is not None and size < 1:
        raise KnowtuneError(f"size must be at least 1, got {size}", fix="pass --size N with N >= 1")
    paper = paper_sizes(examples)
    weights = paper if size_split == "paper" else {r: 1 for r in paper}
    if (size is None and sum(paper.values()) == 0) or sum(weights.values()) == 0:
        per_relation = ", ".join(f"{r} {n}" for r, n in paper.items()) or "no examples"
        raise KnowtuneError(
            f"no relation has examples of all four SliCK categories, so the paper's size rule gives |D| = 0 (per relation: {per_relation})",
            fix="pass --size N together with --size-split equal",
        )
    total = sum(paper.values()) if size is None else size
    return largest_remainder(total, weights)


def largest_remainder(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method, ties to the first key)."""
    whole = sum(weights.values())
    shares = {key: total * w // whole for key, w in weights.items()}
    order = sorted(weights, key=lambda key: -(total * weights[key] % whole))  # stable: ties keep key order
    for key in order[: total - sum(shares.values())]:
        shares[key] += 1
    return shares


def unknown_count(n: int, ratio: int) -> int:
    """u = round_half_up(n * ratio / 100): Unknown examples among a relation's n at ``ratio`` percent."""
    return (2 * n * ratio + 100) // 200


def unknown_ratio_variants(examples: Sequence[AnnotatedExample], ratios: Iterable[int], size: int | None = None, seed: int = 0,
                           size_split: SizeSplit = "paper") -> dict[int, list[AnnotatedExample]]:
    """D_X for each X in ``ratios``: |D| examples, X% Unknown taken per relation (see the module docstring)."""
    sizes = relation_sizes(examples, size, size_split)
    pools = _Pools(examples, seed)
    variants, shortfalls = {}, []
    for ratio in ratios:
        if not 0 <= ratio <= 100:
            raise KnowtuneError(f"unknown ratio {ratio} is not a percentage", fix="use ratios between 0 and 100")
        chosen: list[AnnotatedExample] = []
        for relation, n in sizes.items():
            unknown = unknown_count(n, ratio)
            chosen += pools.take(f"D_{ratio}", relation, KNOWN_POOL, n - unknown, shortfalls)
            chosen += pools.take(f"D_{ratio}", relation, "Unknown", unknown, shortfalls)
        variants[ratio] = _in_order(examples, chosen)
    raise_shortfalls(shortfalls, sizes, examples)
    return variants


def single_category_sets(examples: Sequence[AnnotatedExample], size: int | None = None, seed: int = 0,
                         size_split: SizeSplit = "paper") -> dict[str, list[AnnotatedExample]]:
    """D_c for each SliCK category c: per relation the same count as every D_X (by default n_r, which every category holds)."""
    sizes = relation_sizes(examples, size, size_split)
    pools = _Pools(examples, seed)
    sets, shortfalls = {}, []
    for category in CATEGORIES:
        chosen = [e for relation, n in sizes.items() for e in pools.take(f"D_{category}", relation, category, n, shortfalls)]
        sets[category] = _in_order(examples, chosen)
    raise_shortfalls(shortfalls, sizes, examples)
    return sets


def natural_sample(examples: Sequence[AnnotatedExample], size: int | None = None, seed: int = 0) -> list[AnnotatedExample]:
    """D_Natural: |D| examples drawn uniformly from all of ``examples`` (the natural relation and category mix)."""
    total = sum(relation_sizes(examples).values()) if size is None else size
    if total > len(examples):
        raise KnowtuneError(f"D_Natural needs {total} examples but the data holds {len(examples)}",
                            fix=f"lower --size to at most {len(examples)}")
    pool = sorted(examples, key=lambda e: e.id)
    chosen = random.Random(f"knowtune.curate:{seed}:natural").sample(pool, total)
    return _in_order(examples, chosen)


def filter_unknown(examples: Iterable[AnnotatedExample]) -> list[AnnotatedExample]:
    """The examples that are not Unknown (D_Known from D, or the Known-only training set)."""
    return [e for e in examples if e.category != "Unknown"]


def relabel_unknown(examples: Iterable[AnnotatedExample], phrase: str = "I don't know") -> list[AnnotatedExample]:
    """D_IDK: Unknown examples get ``phrase`` as their only answer (the gold answers move to
    ``metadata["original_answers"]``); every other example is returned unchanged."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise KnowtuneError(f"the 'I don't know' phrase must be non-blank text, got {phrase!r}", fix='pass e.g. --idk-phrase "I don\'t know"')
    return [
        e.model_copy(update={"answers": (phrase,), "metadata": {**e.metadata, "original_answers": list(e.answers)}})
        if e.category == "Unknown" else e
        for e in examples
    ]


def raise_shortfalls(shortfalls: Sequence[Shortfall], sizes: dict[str, int], examples: Sequence[AnnotatedExample]) -> None:
    """One error listing every draw that needs more examples than the data holds."""
    if not shortfalls:
        return
    lines = [f"  {s}" for s in shortfalls[:_MAX_LISTED]]
    if len(shortfalls) > _MAX_LISTED:
        lines.append(f"  ... and {len(shortfalls) - _MAX_LISTED} more")
    per_relation = ", ".join(f"{r} {n}" for r, n in sizes.items())
    paper_total = sum(paper_sizes(examples).values())
    raise KnowtuneError(
        f"the data holds too few examples for the requested variants (|D| = {sum(sizes.values())}; per relation: {per_relation}):\n"
        + "\n".join(lines),
        fix=f"lower --size (the paper's size rule, which always fits, gives |D| = {paper_total} here), "
            "drop the ratios that need more examples (--unknown-ratios), or try --size-split paper/equal",
    )


class _Pools:
    """Per (relation, pool) the examples sorted by id and shuffled once by (seed, relation, pool)."""

    def __init__(self, examples: Sequence[AnnotatedExample], seed: int):
        ids = Counter(e.id for e in examples)
        duplicates = sorted(i for i, n in ids.items() if n > 1)
        if duplicates:
            raise KnowtuneError(f"duplicate example ids: {duplicates[:5]}", fix="give every example a unique id")
        self._seed = seed
        self._members: dict[tuple[str, str], list[AnnotatedExample]] = {}
        for e in sorted(examples, key=lambda e: e.id):
            self._members.setdefault((e.relation, e.category), []).append(e)
            if e.category != "Unknown":
                self._members.setdefault((e.relation, KNOWN_POOL), []).append(e)
        self._orders: dict[tuple[str, str], list[AnnotatedExample]] = {}

    def order(self, relation: str, pool: str) -> list[AnnotatedExample]:
        key = (relation, pool)
        if key not in self._orders:
            members = list(self._members.get(key, []))
            random.Random(f"knowtune.curate:{self._seed}:{relation}:{pool}").shuffle(members)
            self._orders[key] = members
        return self._orders[key]

    def take(self, variant: str, relation: str, pool: str, n: int, shortfalls: list[Shortfall]) -> list[AnnotatedExample]:
        """The first ``n`` of the pool's order, or nothing and a recorded :class:`Shortfall`."""
        order = self.order(relation, pool)
        if n > len(order):
            shortfalls.append(Shortfall(variant, relation, pool, n, len(order)))
            return []
        return order[:n]


def _in_order(examples: Sequence[AnnotatedExample], chosen: Iterable[AnnotatedExample]) -> list[AnnotatedExample]:
    ids = {e.id for e in chosen}
    return [e for e in examples if e.id in ids]
