"""Reference numbers of Gekhman et al., "Does Fine-Tuning LLMs on New Knowledge Encourage
Hallucinations?" (EMNLP 2024, arXiv 2405.05904): PaLM 2-M fine-tuned on EntityQuestions.

Shown beside knowtune's own results in ``knowtune report``; accuracies are EM in percent.
"""

from __future__ import annotations

#: Table 1: Accuracy = b0 + b_kn * N_kn/|D| + b_unk * N_unk/|D| over every (variant, epoch).
LINEAR_MODEL = {
    "in_distribution": {"b0": 36.9, "b_kn": 7.3, "b_unk": -8.3, "r2": 0.86},
    "ood": {"b0": 36.2, "b_kn": 3.2, "b_unk": -3.0, "r2": 0.95},
}

_TABLE2_COLUMNS = ("full", "HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
_TABLE2_ROWS = {
    "D_HighlyKnown": ((40.5, 98.7, 60.1, 9.0, 0.6), (40.0, 98.4, 58.8, 8.5, 0.7)),
    "D_MaybeKnown": ((43.6, 98.4, 69.9, 12.1, 1.0), (43.2, 97.5, 68.2, 12.9, 1.3)),
    "D_WeaklyKnown": ((39.2, 95.0, 59.2, 8.6, 0.4), (35.4, 73.5, 55.8, 17.2, 2.2)),
    "D_Unknown": ((37.5, 95.6, 52.9, 6.5, 0.6), (25.8, 55.8, 36.6, 12.2, 3.2)),
    "D_Natural": ((43.5, 98.0, 67.6, 14.1, 1.8), (41.8, 95.5, 61.7, 14.8, 2.5)),
}
#: Table 2: test accuracy per SliCK category, at EARLY_STOP (``es``) and CONVERGENCE (``conv``).
CATEGORY_TABLE = {
    name: {"es": dict(zip(_TABLE2_COLUMNS, es)), "conv": dict(zip(_TABLE2_COLUMNS, conv))}
    for name, (es, conv) in _TABLE2_ROWS.items()
}

#: The "I don't know" table (50% Unknown): accuracy on answered questions and % answered.
IDK_TABLE = {
    "D": {"es_accuracy": 43.0, "es_answered": 100.0, "conv_accuracy": 38.8, "conv_answered": 100.0},
    "D_IDK": {"es_accuracy": 61.8, "es_answered": 58.7, "conv_accuracy": 61.8, "conv_answered": 55.6},
}
#: The ratio the paper relabelled for its "I don't know" variant.
IDK_RATIO = 50

#: SliCK categories of PaLM 2-M's EntityQuestions training set, in percent.
CATEGORY_DISTRIBUTION = {"HighlyKnown": 24.0, "MaybeKnown": 23.0, "WeaklyKnown": 17.0, "Unknown": 36.0}

#: Variants of D with X% Unknown whose test accuracy the paper plots (Figure 1).
UNKNOWN_RATIOS = (0, 25, 50, 75, 100)


def paper_row(variant: str) -> dict | None:
    """The Table 2 row of ``variant`` (``D_Unknown`` also stands for ``D_100``, which it equals), or None."""
    return CATEGORY_TABLE.get("D_Unknown" if variant == "D_100" else variant)
