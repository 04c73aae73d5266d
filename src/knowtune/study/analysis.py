"""The controlled study's analysis (Gekhman et al., EMNLP 2024, arXiv 2405.05904, sections 4-6).

Pure functions of the per-epoch metric records that ``knowtune train`` writes
(``metrics.jsonl``, keys in docs/train.md), one :class:`Run` per trained variant:

* :func:`select_epochs`: EARLY_STOP = the epoch >= 1 with the best dev exact match (ties keep
  the earlier one), CONVERGENCE = the last epoch;
* :func:`fitted_fractions`: N_kn/|D| and N_unk/|D|, the fitted Known and Unknown training
  examples (greedy answer to the training question correct) over the fixed size |D|;
* :func:`linear_model`: Accuracy = b0 + b_kn * N_kn/|D| + b_unk * N_unk/|D| by least squares
  over every (variant, epoch >= 1) point, with R^2, on the in-distribution and OOD test sets;
* :func:`category_table` (the shape of the paper's Table 2) and :func:`idk_table`.

Accuracies in the tables and the linear model are percentages, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowtune.slick.categories import CATEGORIES

#: Variant kinds whose training targets are the gold answers (an IDK variant's Unknown targets are the phrase).
GOLD_KINDS = ("ratio", "known", "single", "natural", "filtered")


@dataclass
class Run:
    """One trained variant: its curation facts and its per-epoch metric records (epoch 0 = base model)."""

    name: str
    kind: str
    metrics: list[dict[str, Any]]
    ratio: int | None = None
    size: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def at(self, epoch: int) -> dict[str, Any]:
        for record in self.metrics:
            if record["epoch"] == epoch:
                return record
        raise KeyError(f"{self.name}: no evaluation at epoch {epoch}")

    @property
    def epochs(self) -> list[int]:
        return sorted(r["epoch"] for r in self.metrics)


def pct(value: float | None) -> float | None:
    """A rate in [0, 1] as a percentage (None stays None)."""
    return None if value is None else 100.0 * value


def select_epochs(metrics: Sequence[Mapping[str, Any]]) -> tuple[int | None, int]:
    """``(early_stop_epoch, convergence_epoch)``.

    EARLY_STOP is the epoch >= 1 with the highest ``dev/exact_match`` (ties: the earliest),
    None without dev evaluations; CONVERGENCE is the last evaluated epoch.
    """
    trained = sorted((r for r in metrics if r["epoch"] >= 1), key=lambda r: r["epoch"])
    if not trained:
        raise ValueError("no evaluation after training: the run has no epoch >= 1")
    scored = [r for r in trained if r.get("dev/exact_match") is not None]
    best = max(scored, key=lambda r: r["dev/exact_match"], default=None)  # max keeps the first of equal values
    return (best["epoch"] if best else None), trained[-1]["epoch"]


def snapshot(record: Mapping[str, Any]) -> dict[str, Any]:
    """The test results of one evaluation, in percent: full, per category, OOD, answered."""
    result = {"epoch": record["epoch"], "test": pct(record.get("test/exact_match")), "ood": pct(record.get("ood/exact_match")),
              "dev": pct(record.get("dev/exact_match")), "train_fit": pct(record.get("train/exact_match")),
              "answer_rate": pct(record.get("test/answer_rate")), "accuracy_answered": pct(record.get("test/accuracy_answered"))}
    result["per_category"] = {c: pct(record.get(f"test/exact_match/{c}")) for c in (*CATEGORIES, "Known")}
    return result


def es_conv(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Per variant: the EARLY_STOP and CONVERGENCE epochs and the test results at each (``es`` is None without dev)."""
    table = {}
    for run in runs:
        es_epoch, conv_epoch = select_epochs(run.metrics)
        table[run.name] = {"kind": run.kind, "ratio": run.ratio, "es_epoch": es_epoch, "conv_epoch": conv_epoch,
                           "es": snapshot(run.at(es_epoch)) if es_epoch is not None else None, "conv": snapshot(run.at(conv_epoch))}
    return table


def fitted_fractions(record: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(N_kn/n, N_unk/n)`` at one evaluation, over the variant's own n training examples;
    None without per-category train metrics.

    N_c = ``train/correct/c``, counted on ``train/n`` examples (all of them, or a seeded
    sample when ``max_eval_examples`` caps the evaluation: then an estimate).
    """
    n = record.get("train/n")
    if not n or record.get("train/correct/Known") is None or record.get("train/correct/Unknown") is None:
        return None
    return record["train/correct/Known"] / n, record["train/correct/Unknown"] / n


def regression_points(runs: Sequence[Run], d_size: int | None = None) -> list[dict[str, Any]]:
    """One point per (variant, epoch >= 1) of every gold-answer variant: fitted fractions and test accuracies.

    With ``d_size`` (the fixed |D| of the D_X variants) a variant of another size (D_Known_X)
    contributes N/|D| = fraction of its own examples * its size / |D|, as in the paper's formula.
    """
    points = []
    for run in runs:
        if run.kind not in GOLD_KINDS:
            continue
        scale = (run.size / d_size) if (d_size and run.size) else 1.0
        for record in sorted(run.metrics, key=lambda r: r["epoch"]):
            fractions = fitted_fractions(record)
            if record["epoch"] < 1 or fractions is None:
                continue
            points.append({"variant": run.name, "epoch": record["epoch"], "known": fractions[0] * scale,
                           "unknown": fractions[1] * scale, "test": pct(record.get("test/exact_match")),
                           "ood": pct(record.get("ood/exact_match"))})
    return points


def fit_linear_model(x_known: Sequence[float], x_unknown: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Least squares of y = b0 + b_kn * x_known + b_unk * x_unknown (numpy ``lstsq``), with R^2.

    R^2 = 1 - SS_res / SS_tot. ``{"b0", "b_kn", "b_unk", "r2", "n"}``; coefficients are None when
    the design is rank-deficient (fewer than 3 points, or the fractions are collinear).
    """
    design = np.column_stack([np.ones(len(y)), np.asarray(x_known, float), np.asarray(x_unknown, float)])  # (n, 3)
    target = np.asarray(y, float)  # (n,)
    result: dict[str, Any] = {"b0": None, "b_kn": None, "b_unk": None, "r2": None, "n": len(target)}
    if len(target) < 3 or np.linalg.matrix_rank(design) < 3:
        result["note"] = f"cannot fit 3 coefficients: {len(target)} points, design rank {np.linalg.matrix_rank(design) if len(target) else 0}"
        return result
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    total = float(((target - target.mean()) ** 2).sum())
    result.update(b0=float(coef[0]), b_kn=float(coef[1]), b_unk=float(coef[2]),
                  r2=(1.0 - float((residual ** 2).sum()) / total) if total > 0 else None)
    return result


def linear_model(points: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paper's Table 1: the linear model fitted on the in-distribution and the OOD test accuracy."""
    models = {}
    for name, key in (("in_distribution", "test"), ("ood", "ood")):
        usable = [p for p in points if p[key] is not None]
        models[name] = fit_linear_model([p["known"] for p in usable], [p["unknown"] for p in usable], [p[key] for p in usable])
    return models


def category_table(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the shape of the paper's Table 2: per variant, test accuracy overall and per category, at ES and CONV."""
    rows = []
    for name, entry in results.items():
        if entry["kind"] == "idk":
            continue
        row = {"variant": name}
        for stage in ("es", "conv"):
            snap = entry[stage]
            row[stage] = None if snap is None else {"full": snap["test"], **{c: snap["per_category"][c] for c in CATEGORIES}}
        rows.append(row)
    return rows


def idk_table(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The "I don't know" table: each D_IDK_X beside D_X, accuracy on answered and % answered at ES and CONV."""
    rows = []
    for name, entry in results.items():
        if entry["kind"] != "idk":
            continue
        base = f"D_{entry['ratio']}"
        for variant in (base, name):
            if variant not in results:
                continue
            item = results[variant]
            row = {"variant": variant, "role": "D_IDK" if variant == name else "D", "ratio": entry["ratio"]}
            for stage in ("es", "conv"):
                snap = item[stage]
                row[f"{stage}_accuracy"] = snap["accuracy_answered"] if snap else None
                row[f"{stage}_answered"] = snap["answer_rate"] if snap else None
            rows.append(row)
    return rows


def fixed_size(runs: Sequence[Run]) -> int | None:
    """|D|: the size of the D_X variants (the same for all), else None."""
    sizes = {run.size for run in runs if run.kind == "ratio" and run.size}
    return sizes.pop() if len(sizes) == 1 else None


def analyse(runs: Sequence[Run]) -> dict[str, Any]:
    """Every table of the study plus the findings (:mod:`knowtune.study.findings`)."""
    from knowtune.study.findings import evaluate_findings

    results = es_conv(runs)
    points = regression_points(runs, fixed_size(runs))
    models = linear_model(points)
    curves = {run.name: [_curve_point(r) for r in sorted(run.metrics, key=lambda r: r["epoch"])] for run in runs}
    return {
        "variants": results,
        "curves": curves,
        "linear_model": models,
        "regression_points": points,
        "category_table": category_table(results),
        "idk_table": idk_table(results),
        "findings": evaluate_findings(runs, results, models),
    }


def _curve_point(record: Mapping[str, Any]) -> dict[str, Any]:
    point = {"epoch": record["epoch"], "test": pct(record.get("test/exact_match")), "ood": pct(record.get("ood/exact_match")),
             "dev": pct(record.get("dev/exact_match")), "answer_rate": pct(record.get("test/answer_rate"))}
    point["fitted"] = {c: pct(record.get(f"train/exact_match/{c}")) for c in (*CATEGORIES, "Known")}
    return point
