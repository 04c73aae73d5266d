"""The controlled study's variants on hand-made annotations with known category counts."""

from __future__ import annotations

from collections import Counter

import pytest

from knowtune.curate import (
    CurateConfig,
    build_variants,
    filter_unknown,
    largest_remainder,
    natural_sample,
    paper_sizes,
    relabel_unknown,
    relation_sizes,
    single_category_sets,
    unknown_ratio_variants,
)
from knowtune.errors import KnowtuneError

RATIOS = [0, 25, 50, 75, 100]
# u_r = round_half_up(n_r * X / 100) with n = 4, 3, 5 (e.g. P2 at 50%: 1.5 -> 2; P3 at 75%: 3.75 -> 4).
EXPECTED_UNKNOWN = {
    0: {"P1": 0, "P2": 0, "P3": 0},
    25: {"P1": 1, "P2": 1, "P3": 1},
    50: {"P1": 2, "P2": 2, "P3": 3},
    75: {"P1": 3, "P2": 2, "P3": 4},
    100: {"P1": 4, "P2": 3, "P3": 5},
}
PAPER = {"P1": 4, "P2": 3, "P3": 5}


def ids(examples) -> set[str]:
    return {e.id for e in examples}


def per_relation(examples, unknown: bool | None = None) -> dict[str, int]:
    return dict(Counter(e.relation for e in examples if unknown is None or (e.category == "Unknown") == unknown))


def test_paper_size_rule_is_the_smallest_category_per_relation_summed(train):
    assert paper_sizes(train) == PAPER
    assert relation_sizes(train) == PAPER and sum(relation_sizes(train).values()) == 12


def test_ratio_variants_have_fixed_size_relation_mix_and_exact_unknown_counts(train):
    variants = unknown_ratio_variants(train, RATIOS, seed=0)
    for ratio in RATIOS:
        d = variants[ratio]
        assert len(d) == len(ids(d)) == 12
        assert per_relation(d) == PAPER  # identical relation mix in every variant
        unknown = {r: per_relation(d, unknown=True).get(r, 0) for r in PAPER}
        assert unknown == EXPECTED_UNKNOWN[ratio], ratio
        assert all(e.split == "train" for e in d)


def test_draws_are_nested_across_ratios(train):
    variants = unknown_ratio_variants(train, RATIOS, seed=3)
    unknown = [ids(e for e in variants[x] if e.category == "Unknown") for x in RATIOS]
    known = [ids(e for e in variants[x] if e.category != "Unknown") for x in RATIOS]
    for low, high in zip(range(4), range(1, 5)):
        assert unknown[low] <= unknown[high]
        assert known[high] <= known[low]


def test_size_override_is_split_in_proportion_to_the_paper_rule_or_equally(train):
    assert relation_sizes(train, 24) == {"P1": 8, "P2": 6, "P3": 10}
    # 10 * (4, 3, 5) / 12 = 3.33, 2.5, 4.17: floors 3, 2, 4; the one left goes to the largest remainder (P2).
    assert relation_sizes(train, 10) == {"P1": 3, "P2": 3, "P3": 4}
    assert relation_sizes(train, 10, "equal") == {"P1": 4, "P2": 3, "P3": 3}
    assert largest_remainder(7, {"a": 1, "b": 1}) == {"a": 4, "b": 3}
    d = unknown_ratio_variants(train, [50], size=24, seed=0)[50]
    assert per_relation(d) == {"P1": 8, "P2": 6, "P3": 10}
    assert per_relation(d, unknown=True) == {"P1": 4, "P2": 3, "P3": 5}


def test_too_large_size_names_the_relation_category_and_numbers(train):
    # |D| = 100 -> P1 33, P2 25, P3 42; P1 holds 8 Unknown and 20 Known examples.
    with pytest.raises(KnowtuneError) as caught:
        unknown_ratio_variants(train, [0, 100], size=100)
    message = str(caught.value)
    assert "D_100: relation P1, Unknown: needed 33, available 8" in message
    assert "D_0: relation P1, Known: needed 33, available 20" in message
    assert "|D| = 12" in caught.value.fix
    with pytest.raises(KnowtuneError, match=r"D_MaybeKnown: relation P1, MaybeKnown: needed 10, available 4"):
        single_category_sets(train, size=30)


def test_known_variant_drops_exactly_the_unknown_part(train):
    config = CurateConfig(variants=["ratio", "known"])
    variants = {v.name: v.examples for v in build_variants(train, config)}
    assert sorted(variants) == ["D_0", "D_100", "D_25", "D_50", "D_75", "D_Known_25", "D_Known_50", "D_Known_75"]
    for ratio in (25, 50, 75):
        full, known = variants[f"D_{ratio}"], variants[f"D_Known_{ratio}"]
        assert ids(known) == ids(e for e in full if e.category != "Unknown")
        assert len(full) - len(known) == sum(EXPECTED_UNKNOWN[ratio].values())


def test_single_category_sets_match_the_per_relation_sizes(train):
    sets = single_category_sets(train, seed=0)
    for category, examples in sets.items():
        assert {e.category for e in examples} == {category}
        assert per_relation(examples) == PAPER
    assert ids(sets["Unknown"]) == ids(unknown_ratio_variants(train, [100], seed=0)[100])


def test_natural_sample_draws_uniformly_from_every_category(train):
    d = natural_sample(train, seed=0)
    assert len(d) == len(ids(d)) == 12 and ids(d) <= ids(train)
    assert ids(natural_sample(train, size=len(train), seed=5)) == ids(train)
    # Unlike the fixed-mix variants, the relation mix follows the data: over many seeds, P2
    # (41 of 89 examples) is drawn about 41/89 of the time, not 3/12 of it.
    drawn = Counter(e.relation for seed in range(200) for e in natural_sample(train, seed=seed))
    assert abs(drawn["P2"] / 2400 - 41 / 89) < 0.03
    with pytest.raises(KnowtuneError, match="D_Natural needs 90 examples but the data holds 89"):
        natural_sample(train, size=90)


def test_every_variant_is_deterministic_in_the_seed(annotated):
    def build(seed: int) -> dict[str, set[str]]:
        return {v.name: ids(v.examples) for v in build_variants(annotated, CurateConfig(seed=seed))}

    first, again, other = build(0), build(0), build(1)
    assert first == again
    changed = {name for name in first if first[name] != other[name]}
    assert {"D_25", "D_50", "D_75", "D_HighlyKnown", "D_Natural", "D_IDK_50"} <= changed


def test_default_build_curates_the_train_split_only(annotated):
    variants = build_variants(annotated, CurateConfig())
    names = [v.name for v in variants]
    assert names == ["D_0", "D_25", "D_50", "D_75", "D_100", "D_Known_25", "D_Known_50", "D_Known_75", "D_HighlyKnown",
                     "D_MaybeKnown", "D_WeaklyKnown", "D_Unknown", "D_Natural", "D_IDK_50", "D_Filtered"]
    assert all(e.split == "train" for v in variants for e in v.examples)
    everything = {v.name: v for v in build_variants(annotated, CurateConfig(split="all", variants=["filtered"]))}
    assert len(everything["D_Filtered"].examples) == 89 - 33  # the dev examples are all Unknown


def test_relabel_unknown_only_touches_unknown_examples(train):
    d50 = unknown_ratio_variants(train, [50], seed=0)[50]
    relabelled = relabel_unknown(d50, "no idea")
    assert [e.id for e in relabelled] == [e.id for e in d50]
    for before, after in zip(d50, relabelled):
        if before.category == "Unknown":
            assert after.answers == ("no idea",)
            assert after.metadata["original_answers"] == list(before.answers)
            assert after.model_dump(exclude={"answers", "metadata"}) == before.model_dump(exclude={"answers", "metadata"})
        else:
            assert after == before
    assert sum(e.answers == ("no idea",) for e in relabelled) == 7
    with pytest.raises(KnowtuneError, match="non-blank"):
        relabel_unknown(d50, "  ")


def test_idk_variant_relabels_the_base_ratio_variant(annotated):
    variants = {v.name: v for v in build_variants(annotated, CurateConfig(variants=["ratio", "idk"], unknown_ratios=[0], idk_base_ratio=75))}
    assert sorted(variants) == ["D_0", "D_IDK_75"]
    idk = variants["D_IDK_75"].examples
    assert ids(idk) == ids(unknown_ratio_variants([e for e in annotated if e.split == "train"], [75], seed=0)[75])
    assert {e.answers for e in idk if e.category == "Unknown"} == {("I don't know",)}
    assert all(e.answers != ("I don't know",) for e in idk if e.category != "Unknown")


def test_filter_unknown_keeps_every_known_example(train):
    kept = filter_unknown(train)
    assert ids(kept) == ids(e for e in train if e.category != "Unknown") and len(kept) == 89 - 33


def test_paper_rule_of_zero_asks_for_a_size(train):
    no_maybe = [e for e in train if e.category != "MaybeKnown"]
    with pytest.raises(KnowtuneError, match=r"\|D\| = 0 \(per relation: P1 0, P2 0, P3 0\)") as caught:
        unknown_ratio_variants(no_maybe, [50])
    assert "--size-split equal" in caught.value.fix
    d = unknown_ratio_variants(no_maybe, [50], size=9, size_split="equal")[50]
    assert per_relation(d) == {"P1": 3, "P2": 3, "P3": 3}


def test_a_variant_that_would_be_empty_is_an_error(train):
    only_unknown = [e for e in train if e.category == "Unknown"]
    with pytest.raises(KnowtuneError, match="D_Filtered"):
        build_variants(only_unknown, CurateConfig(variants=["filtered"]))
