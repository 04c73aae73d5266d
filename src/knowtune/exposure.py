"""Validating the SliCK audit against pretraining exposure (ground truth).

knowtune pretrains its default model itself, so it knows how often the model saw each
fact (``exposures.jsonl`` beside the model). If SliCK (Gekhman et al. 2024, section 2)
measures knowledge, a fact's P0 (share of correct greedy answers over the N_ex few-shot
prompts) should rise with its exposure count, and the categories should order as
HighlyKnown > MaybeKnown > WeaklyKnown > Unknown in typical exposure. This module gives:

* Spearman's rank correlation rho between exposure count and P0 over all audited facts;
* the rank correlation between exposure and the category rank (Unknown=0 .. HighlyKnown=3);
* the mean and median exposure per category, and whether the medians are ordered;
* category shares per exposure bucket (the report's "categories against exposure" plot).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

from scipy.stats import spearmanr

from knowtune.recall import DEFAULT_BUCKETS

CATEGORY_ORDER = ("Unknown", "WeaklyKnown", "MaybeKnown", "HighlyKnown")


def _bucket_label(low: int, high: int) -> str:
    return f"{low}" if low == high else (f"{low}+" if high >= 10**9 else f"{low}-{high}")


def _spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho, or None when either side is constant (rho undefined)."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def validate_against_exposure(records: Iterable[dict[str, Any]], exposures: dict[str, dict], buckets=DEFAULT_BUCKETS) -> dict[str, Any]:
    """Compare annotation records (``id``, ``category``, ``p0``) with exposure ground truth.

    Records whose id has no exposure entry are ignored (they were not in the corpus world).
    """
    rows = [(r, exposures[r["id"]]["exposures"]) for r in records if r["id"] in exposures]
    if len(rows) < 3:
        raise ValueError("fewer than 3 annotated facts have exposure ground truth")
    counts = [count for _, count in rows]
    rho_p0 = _spearman(counts, [r["p0"] for r, _ in rows])
    rho_category = _spearman(counts, [CATEGORY_ORDER.index(r["category"]) for r, _ in rows])
    per_category = {}
    for category in reversed(CATEGORY_ORDER):
        inside = [count for r, count in rows if r["category"] == category]
        per_category[category] = {
            "facts": len(inside),
            "mean_exposures": statistics.fmean(inside) if inside else None,
            "median_exposures": statistics.median(inside) if inside else None,
        }
    medians = [per_category[c]["median_exposures"] for c in reversed(CATEGORY_ORDER) if per_category[c]["facts"]]
    by_bucket = []
    for low, high in buckets:
        inside = [r["category"] for r, count in rows if low <= count <= high]
        by_bucket.append({"bucket": _bucket_label(low, high), "facts": len(inside), "shares": {c: (inside.count(c) / len(inside) if inside else 0.0) for c in reversed(CATEGORY_ORDER)}})
    return {
        "facts": len(rows),
        "spearman_exposure_p0": rho_p0,
        "spearman_exposure_category": rho_category,
        "per_category": per_category,
        "category_medians_ordered": all(a >= b for a, b in zip(medians, medians[1:])),
        "by_bucket": by_bucket,
    }
