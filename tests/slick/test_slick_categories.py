"""SliCK category rules (Gekhman et al. 2024, section 3) on hand-made counts."""

from __future__ import annotations

import pytest

from knowtune.slick.categories import KNOWN, categorize, verdict


@pytest.mark.parametrize(
    ("greedy", "samples", "expected"),
    [
        (10, None, "HighlyKnown"),   # P0 = 1
        (10, 0, "HighlyKnown"),      # samples cannot demote P0 = 1
        (9, None, "MaybeKnown"),     # 0 < P0 < 1
        (1, 0, "MaybeKnown"),
        (0, 1, "WeaklyKnown"),       # P0 = 0, Ps > 0
        (0, 160, "WeaklyKnown"),
        (0, 0, "Unknown"),           # P0 = 0, Ps = 0
    ],
)
def test_category_table(greedy, samples, expected):
    assert categorize(greedy, 10, samples) == expected


def test_known_is_three_categories():
    assert KNOWN == {"HighlyKnown", "MaybeKnown", "WeaklyKnown"}


def test_p0_zero_needs_the_sample_count():
    with pytest.raises(ValueError, match="sample count"):
        categorize(0, 10, None)


@pytest.mark.parametrize("bad", [(11, 10), (-1, 10), (0, 0)])
def test_impossible_counts_are_rejected(bad):
    with pytest.raises(ValueError):
        categorize(bad[0], bad[1], 0)


def test_exact_verdict_has_exact_p_values():
    v = verdict(greedy_correct=3, n_greedy=10, sample_correct=40, samples=160, samples_total=160)
    assert (v.category, v.p0, v.p_s, v.generations) == ("MaybeKnown", 0.3, 0.25, 170)


def test_lazy_verdicts_mark_ps_not_computed_but_keep_the_category():
    decided_by_greedy = verdict(greedy_correct=10, n_greedy=10, sample_correct=0, samples=0, samples_total=160)
    assert (decided_by_greedy.category, decided_by_greedy.p_s, decided_by_greedy.generations) == ("HighlyKnown", None, 10)
    stopped_early = verdict(greedy_correct=0, n_greedy=10, sample_correct=2, samples=32, samples_total=160)
    assert (stopped_early.category, stopped_early.p_s, stopped_early.generations) == ("WeaklyKnown", None, 42)
    all_sampled = verdict(greedy_correct=0, n_greedy=10, sample_correct=0, samples=160, samples_total=160)
    assert (all_sampled.category, all_sampled.p_s) == ("Unknown", 0.0)
