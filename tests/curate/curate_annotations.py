"""Hand-made SliCK annotations with known category counts, and annotate output dirs
written by annotate's own writer (:func:`knowtune.slick.results.write_outputs`)."""

from __future__ import annotations

from pathlib import Path

# Category counts per relation of the train split. Paper size rule: n_r = min over the
# four categories = 4, 3, 5, so |D| = 12.
COUNTS = {
    "P1": {"HighlyKnown": 10, "MaybeKnown": 4, "WeaklyKnown": 6, "Unknown": 8},
    "P2": {"HighlyKnown": 12, "MaybeKnown": 6, "WeaklyKnown": 3, "Unknown": 20},
    "P3": {"HighlyKnown": 5, "MaybeKnown": 5, "WeaklyKnown": 5, "Unknown": 5},
}
DEV_UNKNOWN = 6  # dev-split Unknown examples of P1: never curated with the default split

_SCORES = {"HighlyKnown": (1.0, None), "MaybeKnown": (0.5, None), "WeaklyKnown": (0.0, 0.125), "Unknown": (0.0, 0.0)}


def annotation_records(counts: dict[str, dict[str, int]] = COUNTS, dev_unknown: int = DEV_UNKNOWN) -> list[dict]:
    """Records with exactly the keys ``knowtune.slick.annotate._Scorer.row`` writes."""
    records = []
    for relation, per_category in counts.items():
        for category, n in per_category.items():
            records += [_record(f"{relation}-{category}-{i}", relation, "train", category) for i in range(n)]
    records += [_record(f"P1-dev-{i}", "P1", "dev", "Unknown") for i in range(dev_unknown)]
    return records


def _record(example_id: str, relation: str, split: str, category: str) -> dict:
    p0, ps = _SCORES[category]
    correct = int(p0 * 10)
    return {
        "id": example_id, "relation": relation, "split": split,
        "question": f"What is the {relation} of {example_id}?", "answers": [f"answer of {example_id}"],
        "category": category, "p0": p0, "ps": ps, "ps_computed": ps is not None,
        "greedy_answers": ["x"] * 10, "greedy_correct": correct,
        "samples": 0 if correct else 160, "sample_correct": int((ps or 0) * 160), "generations": 10 if correct else 170,
        "mode": "lazy",
    }


def write_annotation_dir(out: Path, records: list[dict], *, expected: int | None = None) -> Path:
    """An annotate output dir as ``run_annotate`` leaves it: protocol.json, then annotate's writer."""
    from knowtune.io import atomic_write_json
    from knowtune.slick.results import write_outputs
    from knowtune.slick.store import StoredRow

    rows = [StoredRow(r["id"], f"hash-{r['id']}", i, r["category"], r) for i, r in enumerate(records)]
    atomic_write_json(out / "protocol.json", {"protocol_hash": "p" * 16, "model_fingerprint": "m" * 16, "protocol": {"seed": 0}})
    write_outputs(out, rows, "p" * 16, "m" * 16, {"seed": 0}, 0, {"expected": len(records) if expected is None else expected})
    return out
