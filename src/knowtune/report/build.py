"""``knowtune report STUDY_DIR``: the study's results as one self-contained HTML page, PNGs and ``results.json``.

Reads what ``knowtune study`` wrote (``analysis.json``, ``study.json``, ``config.yaml``,
``audit/annotations.jsonl``), adds the paper's reference numbers
(:mod:`knowtune.study.paper`), the SliCK category distribution and, for a model pretrained
by knowtune, the categories against pretraining exposure (``exposures.jsonl`` beside the
model), for a study run with ``reaudit: true``, the category transition matrices of the
variants at ES and CONV (:mod:`knowtune.study.shift`), and the ``table2:`` and ``retrieval_route:``
sections' tables (:mod:`knowtune.study.table2`, :mod:`knowtune.study.retrieval_route`), then writes into ``STUDY_DIR/report`` (or ``out``)::

    index.html      one page, every figure embedded as base64 PNG, every table inline
    *.png           the figures
    results.json    findings, every table (ours beside the paper's), provenance
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knowtune.errors import KnowtuneError
from knowtune.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from knowtune.slick.categories import CATEGORIES
from knowtune.study import paper

FIGURES = ("accuracy_by_epoch", "fitted_by_category", "es_vs_conv", "linear_model", "category_distribution", "categories_by_exposure",
           "method_dynamics", "forgetting_against_learning", "key_overlap", "knowledge_shift")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise KnowtuneError(f"{path} not found: not a finished study directory",
                            fix="pass the --out directory of `knowtune study` after it finished (rerun the study to resume it)")
    return json.loads(path.read_text(encoding="utf-8"))


def category_distribution(annotations: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per audited split (and ``all``): example count and category shares in percent."""
    splits: dict[str, list[str]] = {}
    for record in annotations:
        splits.setdefault(record["split"], []).append(record["category"])
        splits.setdefault("all", []).append(record["category"])
    table = {}
    for split in sorted(splits, key=lambda s: (s == "all", s)):
        counts = Counter(splits[split])
        n = len(splits[split])
        table[split] = {"n": n, "shares": {c: 100.0 * counts[c] / n for c in CATEGORIES}}
    return table


def categories_by_exposure(annotations: Sequence[Mapping[str, Any]], exposures: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per exposure bucket (:data:`knowtune.recall.DEFAULT_BUCKETS`): audited facts and their category shares in percent."""
    from knowtune.recall import DEFAULT_BUCKETS

    rows = []
    for low, high in DEFAULT_BUCKETS:
        inside = [r["category"] for r in annotations if r["id"] in exposures and low <= exposures[r["id"]]["exposures"] <= high]
        counts = Counter(inside)
        label = f"{low}" if low == high else (f"{low}+" if high >= 10**9 else f"{low}-{high}")
        rows.append({"bucket": label, "facts": len(inside),
                     "shares": {c: (100.0 * counts[c] / len(inside) if inside else 0.0) for c in CATEGORIES}})
    return rows


def _exposure_section(model: str, annotations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from knowtune.models import model_dir_of
    from knowtune.pretrain import EXPOSURES_FILE, load_exposures

    try:
        directory = model_dir_of(model)
    except KnowtuneError as error:
        return {"rows": None, "note": f"skipped: {error}"}
    if directory is None or not (Path(directory) / EXPOSURES_FILE).is_file():
        return {"rows": None, "note": f"skipped: model {model!r} was not pretrained by knowtune, so its pretraining exposures are unknown "
                                      f"(no {EXPOSURES_FILE} beside it)"}
    exposures = load_exposures(directory)
    covered = sum(r["id"] in exposures for r in annotations)
    return {"rows": categories_by_exposure(annotations, exposures), "note": f"{covered} of {len(annotations)} audited facts have exposure counts"}


def with_paper(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """The analysis tables with the paper's numbers beside ours (``paper`` keys; None where the paper has none)."""
    category_rows = [{**row, "paper": paper.paper_row(row["variant"])} for row in analysis["category_table"]]
    idk_rows = [{**row, "paper": paper.IDK_TABLE[row["role"]] if row["ratio"] == paper.IDK_RATIO else None} for row in analysis["idk_table"]]
    return {
        "linear_model": {name: {"ours": model, "paper": paper.LINEAR_MODEL[name]} for name, model in analysis["linear_model"].items()},
        "category_table": category_rows,
        "idk_table": idk_rows,
    }


def table2_with_paper(part: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``table2:`` analysis with the paper's Table 2 row beside each set (``paper``), or None without one."""
    if not part:
        return None
    return {**part, "rows": [{**row, "paper": paper.CATEGORY_TABLE.get(row["variant"])} for row in part["rows"]]}


def _paper_full(variant: str) -> dict[str, float] | None:
    row = paper.paper_row(variant)
    return {stage: row[stage]["full"] for stage in ("es", "conv")} if row else None


def build_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the study in ``study_dir``; returns the path of ``index.html``."""
    from knowtune.provenance import provenance
    from knowtune.report import plots
    from knowtune.report.html import render_page
    from knowtune.study.shift import load_shifts, shift_figure, shift_rows

    study_dir = Path(study_dir)
    analysis = _read_json(study_dir / "analysis.json")
    state = _read_json(study_dir / "study.json")
    annotations_path = study_dir / "audit" / "annotations.jsonl"
    annotations = [json.loads(line) for line in annotations_path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if annotations_path.is_file() else []
    config = state["provenance"]["config"]
    out = Path(out) if out is not None else study_dir / "report"

    distribution = category_distribution(annotations)
    exposure = _exposure_section(config["model"], annotations)
    tables = with_paper(analysis)
    paper_es_conv = {name: _paper_full(name) for name in analysis["variants"]}
    figures = {
        "accuracy_by_epoch": plots.accuracy_by_epoch(analysis["curves"], analysis["variants"]),
        "fitted_by_category": plots.fitted_by_category(analysis["curves"]),
        "es_vs_conv": plots.es_vs_conv(analysis["variants"], paper_es_conv),
        "linear_model": plots.linear_model_fit(analysis["regression_points"], analysis["linear_model"]),
        "category_distribution": plots.category_distribution({f"ours: {s}": d["shares"] for s, d in distribution.items() if s != "all"},
                                                             paper.CATEGORY_DISTRIBUTION),
    }
    if exposure["rows"]:
        figures["categories_by_exposure"] = plots.categories_by_exposure(exposure["rows"])
    methods = analysis.get("methods")
    if methods:
        from knowtune.study.methods import LABELS

        figures["method_dynamics"] = plots.method_dynamics(methods["curves"], LABELS)
        figures["forgetting_against_learning"] = plots.forgetting_against_learning(methods["table"])
    keys = analysis.get("key_overlap")
    if keys:
        figures["key_overlap"] = plots.key_overlap(keys["rows"])
    shift = shift_rows(load_shifts(study_dir, state))  # with the study's reaudit: the transition matrices at ES and CONV
    if shift:
        figures["knowledge_shift"] = shift_figure(shift)
    results = {
        "findings": analysis["findings"],
        "variants": analysis["variants"],
        **tables,
        "category_distribution": {"ours": distribution, "paper": paper.CATEGORY_DISTRIBUTION},
        "categories_by_exposure": exposure,
        "methods": methods,
        "key_overlap": keys,
        "knowledge_shift": shift,
        "table2": table2_with_paper(analysis.get("table2")),
        "retrieval": analysis.get("retrieval"),
        "stages": state.get("stages", {}),
        "figures": [f"{name}.png" for name in figures],
        "study": str(study_dir),
        "study_provenance": state["provenance"],
        "provenance": provenance(config, seed=state["provenance"].get("seed"), model_fingerprint=state["provenance"].get("model_fingerprint"),
                                 analysis_created=analysis.get("provenance", {}).get("created")),
    }
    for name, png in figures.items():
        atomic_write_bytes(out / f"{name}.png", png)
    atomic_write_json(out / "results.json", results)
    page = out / "index.html"
    atomic_write_text(page, render_page(results, figures))
    return page
