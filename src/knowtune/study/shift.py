"""The study's knowledge shift (``reaudit: true``): each trained variant's model audited again, at CONV and ES.

Gekhman et al. (EMNLP 2024) read what fine-tuning did from test accuracy per SliCK category;
a second audit of the fine-tuned model shows it example by example: the transition matrix of
categories (:mod:`knowtune.shift`), e.g. how many trained Unknown facts became Known (learned)
and how many held-out Known facts became Unknown (lost). For each trained run the study
re-audits, with the study audit's protocol, the run's training facts and as many held-out
training-split facts (a seeded sample of the audited ones the variant did not train on), with
the model at convergence (``OUT/model``, CONV) and, when the run kept it (``train.save_best``),
at the best dev epoch (``OUT/best``, EARLY_STOP). Outputs per run: ``runs/<run>/reaudit/``,
``shift.json`` (CONV) and ``shift_es.json`` (ES), as ``knowtune train --reaudit`` writes them.
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from knowtune.shift import REAUDIT_STAGES
from knowtune.slick.categories import CATEGORIES

STAGES = {"es": "EARLY_STOP", "conv": "CONVERGENCE"}


def shift_done(out: Path, runs: Mapping[str, str]) -> bool:
    """Whether every run directory (relative to the study ``out``) has its CONV shift."""
    return bool(runs) and all((out / run_dir / REAUDIT_STAGES["conv"][1]).is_file() for run_dir in runs)


def reaudit_runs(out: Path, index: Mapping[str, Mapping[str, Any]], runs: Mapping[str, str], seed: int,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-audit every run in ``runs`` (run dir -> a variant trained there) and write its shift files (module docstring)."""
    from knowtune.config import load_config
    from knowtune.data import load_examples, save_examples
    from knowtune.shift import reaudit
    from knowtune.slick.protocol import AnnotateConfig

    audit = out / "audit"
    base = load_config(AnnotateConfig, audit / "config.yaml")
    examples = load_examples(base.data)
    audited = {json.loads(line)["id"] for line in (audit / "annotations.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()}
    pool_split = base.task_spec().fewshot.exemplars_from
    summary: dict[str, Any] = {}
    for run_dir, variant in sorted(runs.items()):
        trained = {e.id for e in load_examples(out / "variants" / index[variant]["train"])}
        candidates = sorted(e.id for e in examples if e.split == "train" and e.id in audited and e.id not in trained)
        held_out = set(random.Random(f"{seed}:{variant}:held-out").sample(candidates, min(len(trained), len(candidates))))
        chosen = [e for e in examples if e.split == pool_split or (e.split == "train" and e.id in trained | held_out)]
        data = out / run_dir / "reaudit" / "data.jsonl"
        save_examples(chosen, data)  # the exemplar pool is whole, so the exemplar sets (and the protocol) are the audit's
        log(f"[shift] {variant}: re-auditing {len(trained & audited)} trained and {len(held_out)} held-out facts")
        shifts = reaudit(out / run_dir, audit, trained, log=lambda line: log(f"[shift] {line}"),
                         overrides={"data": str(data), "splits": ["train"], "limit": None})
        summary[variant] = {stage: {"lost": s["overall"]["lost"], "learned": s["overall"]["learned"]} for stage, s in shifts.items()}
    return {"shift": summary}


def load_shifts(study_dir: Path, state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """variant -> {stage: shift.json} for the trained variants whose runs were re-audited (empty without ``reaudit``)."""
    found: dict[str, dict[str, Any]] = {}
    for name in state.get("trained") or []:
        run = (state.get("runs") or {}).get(name)
        if not run:
            continue
        for stage, (_, file) in REAUDIT_STAGES.items():
            path = study_dir / run["dir"] / file
            if path.is_file():
                found.setdefault(name, {})[stage] = json.loads(path.read_text(encoding="utf-8"))
    return found


def shift_rows(shifts: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, stage): lost and learned counts, trained and held out, and the matrices."""
    rows = []
    for variant, stages in shifts.items():
        for stage in ("es", "conv"):
            if stage not in stages:
                continue
            shift = stages[stage]
            groups = shift.get("per_training", {})
            rows.append({
                "variant": variant, "stage": stage, "examples": shift["overall"]["examples"], "matrix": shift["overall"]["matrix"],
                "trained_learned": groups.get("trained", {}).get("learned"), "trained_unknown": _unknown(groups.get("trained")),
                "held_out_lost": groups.get("held_out", {}).get("lost"), "held_out_known": _known(groups.get("held_out")),
                "held_out_matrix": groups.get("held_out", {}).get("matrix"), "trained_matrix": groups.get("trained", {}).get("matrix"),
            })
    return rows


def _known(block: Mapping[str, Any] | None) -> int | None:
    return None if block is None else block["known_before"]


def _unknown(block: Mapping[str, Any] | None) -> int | None:
    return None if block is None else block["examples"] - block["known_before"]


def shift_figure(rows: list[dict[str, Any]]) -> bytes:
    """Heat maps of the transition matrices: one row of panels per variant, ES then CONV."""
    from knowtune.report.plots import plt, png_bytes

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    figure, axes = plt.subplots(len(variants), 2, figsize=(7.6, 3.4 * len(variants)), squeeze=False)
    short = ["HK", "MK", "WK", "Unk"]
    for i, variant in enumerate(variants):
        for j, stage in enumerate(("es", "conv")):
            axis = axes[i][j]
            row = next((r for r in rows if r["variant"] == variant and r["stage"] == stage), None)
            if row is None:
                axis.axis("off")
                axis.set_title(f"{variant} {STAGES[stage]}: not audited (train.save_best)", fontsize=8)
                continue
            grid = [[row["matrix"][b][a] for a in CATEGORIES] for b in CATEGORIES]
            axis.imshow(grid, cmap="Blues")
            for r, cells in enumerate(grid):
                for c, n in enumerate(cells):
                    axis.text(c, r, str(n), ha="center", va="center", fontsize=8)
            axis.set_xticks(range(4), short)
            axis.set_yticks(range(4), short)
            axis.set(xlabel="after fine-tuning", ylabel="base model")
            axis.set_title(f"{variant} at {STAGES[stage]}", fontsize=9)
    return png_bytes(figure)


def shift_section(rows: list[dict[str, Any]], figures: Mapping[str, bytes]) -> str:
    """The report's HTML section: the table of lost and learned facts, then the matrices."""
    import base64

    cells = "".join(
        f"<tr><td>{html.escape(r['variant'])}</td><td>{STAGES[r['stage']]}</td><td>{r['examples']}</td>"
        f"<td>{_ratio(r['trained_learned'], r['trained_unknown'])}</td><td>{_ratio(r['held_out_lost'], r['held_out_known'])}</td></tr>"
        for r in rows)
    table = ("<table><tr><th>variant</th><th>model</th><th>facts re-audited</th><th>trained Unknown learned</th>"
             f"<th>held-out Known lost</th></tr>{cells}</table>")
    png = figures.get("knowledge_shift")
    image = f"<img alt='transition matrices' src='data:image/png;base64,{base64.b64encode(png).decode()}'>" if png else ""
    note = ("<p>Each variant's model, audited again with the study's protocol on its training facts and as many held-out "
            "ones: rows are the base model's category, columns the fine-tuned model's (HK HighlyKnown, MK MaybeKnown, "
            "WK WeaklyKnown, Unk Unknown). Learned = Unknown to Known, lost = Known to Unknown.</p>")
    return note + table + image


def _ratio(n: int | None, of: int | None) -> str:
    return "-" if n is None or not of else f"{n} of {of} ({100 * n / of:.0f}%)"
