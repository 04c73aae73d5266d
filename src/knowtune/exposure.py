"""Validating the SliCK audit against pretraining exposure (ground truth).

knowtune pretrains its default model itself, so it knows how often the model saw each
fact (``exposures.jsonl`` beside the model). If SliCK (Gekhman et al. 2024, section 2)
measures knowledge, a fact's P0 (share of correct greedy answers over the N_ex few-shot
prompts) should rise with its exposure count, and the categories should order as
HighlyKnown > MaybeKnown > WeaklyKnown > Unknown in typical exposure. This module gives:

* Spearman's rank correlation rho between exposure count and P0 over all audited facts;
* the rank correlation between exposure and the category rank (Unknown=0 .. HighlyKnown=3);
* the mean and median exposure per category, and whether the medians are ordered;
* category shares per exposure bucket (the report's "categories against exposure" plot);
* the same two rhos without the facts whose answer can be read off the question ("What is
  the capital of Beirut Vilayet?" - "Beirut"): a model that uses its context answers those
  without having seen them, so exposure is no ground truth for them, and how many
  never-seen facts of each kind the audit did not call Unknown.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

from scipy.stats import spearmanr

from knowtune.matching import normalize_answer
from knowtune.recall import DEFAULT_BUCKETS

CATEGORY_ORDER = ("Unknown", "WeaklyKnown", "MaybeKnown", "HighlyKnown")


def _bucket_label(low: int, high: int) -> str:
    return f"{low}" if low == high else (f"{low}+" if high >= 10**9 else f"{low}-{high}")


def _spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho, or None when either side is constant (rho undefined)."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def answer_in_question(record: dict[str, Any], min_length: int = 4) -> bool:
    """Whether a word of ``min_length`` or more characters of a gold answer is a word of the question
    (both normalised for exact match); False for a record without ``question`` or ``answers``."""
    question = set(normalize_answer(record.get("question") or "").split())
    return any(len(word) >= min_length and word in question for answer in record.get("answers") or () for word in normalize_answer(answer).split())


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
    inferable = [answer_in_question(r) for r, _ in rows]
    rest = [row for row, skip in zip(rows, inferable) if not skip]
    never_seen = {kind: [r["category"] != "Unknown" for (r, count), skip in zip(rows, inferable) if count == 0 and skip == wanted]
                  for kind, wanted in (("inferable", True), ("not_inferable", False))}
    medians = [per_category[c]["median_exposures"] for c in reversed(CATEGORY_ORDER) if per_category[c]["facts"]]
    by_bucket = []
    for low, high in buckets:
        inside = [r["category"] for r, count in rows if low <= count <= high]
        by_bucket.append({"bucket": _bucket_label(low, high), "facts": len(inside), "shares": {c: (inside.count(c) / len(inside) if inside else 0.0) for c in reversed(CATEGORY_ORDER)}})
    return {
        "facts": len(rows),
        "spearman_exposure_p0": rho_p0,
        "spearman_exposure_category": rho_category,
        "inferable_facts": sum(inferable),
        "spearman_exposure_p0_not_inferable": _spearman([c for _, c in rest], [r["p0"] for r, _ in rest]),
        "spearman_exposure_category_not_inferable": _spearman([c for _, c in rest], [CATEGORY_ORDER.index(r["category"]) for r, _ in rest]),
        "never_seen_not_unknown": {kind: {"facts": len(flags), "not_unknown": sum(flags)} for kind, flags in never_seen.items()},
        "per_category": per_category,
        "category_medians_ordered": all(a >= b for a, b in zip(medians, medians[1:])),
        "by_bucket": by_bucket,
    }
