"""The study report as ONE self-contained HTML page: inline CSS, figures as base64 PNG data URIs,
tables with the paper's numbers (Gekhman et al., EMNLP 2024) beside ours. No external resource."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from knowtune.slick.categories import CATEGORIES

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.paper { color: #777; } .holds { color: #1b7837; font-weight: bold; } .fails { color: #b2182b; font-weight: bold; }
.untested { color: #777; font-weight: bold; } img { max-width: 100%; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.note { color: #555; font-style: italic; }
"""

_FINDING_TEXT = {
    "unknown_fitted_slower": "Unknown training examples are fitted more slowly than Known ones",
    "accuracy_falls_with_unknown": "test accuracy at convergence falls as the Unknown share grows",
    "regression_signs": "in the linear model, fitting Unknown examples lowers accuracy (b_unk < 0 < b_kn)",
    "early_stop_recovers": "early stopping limits the damage done by Unknown examples",
    "idk_improves_answered_accuracy": "relabelling Unknown examples \"I don't know\" raises accuracy on answered questions",
    "selfdistill_reduces_forgetting": "self-distillation forgets at least 3x less held-out knowledge than SFT at comparable new-fact learning",
    "attention_only_preserves": "training attention only keeps held-out knowledge and learns few new facts",
    "namelike_keys_forget_more": "name-like entity keys cause more forgetting than random keys",
    "slick_unknown_below_ptrue": "after fine-tuning, SliCK's Unknown test questions are answered worse than as many lowest-P(True) ones",
    "verification_raises_answered_accuracy": "answer-time verification answers more accurately than \"I don't know\" fine-tuning at its answer rate",
    "maybeknown_helps": "training on MaybeKnown examples gives the best overall test accuracy (paper Table 2)",
    "retrieval_beats_sft_on_unknown": "SFT on Known facts plus retrieval answers the Unknown facts better than SFT on all of them",
}


def _num(value: float | None, digits: int = 1) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _beside(ours: float | None, theirs: float | None, digits: int = 1) -> str:
    """``ours`` with the paper's number after it, greyed, where the paper has one."""
    cell = _num(ours, digits)
    return cell if theirs is None else f"{cell} <span class='paper'>({_num(theirs, digits)})</span>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{h}</th>" if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(figures: Mapping[str, bytes], name: str, alt: str) -> str:
    if name not in figures:
        return ""
    data = base64.b64encode(figures[name]).decode("ascii")
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


def findings_section(findings: Sequence[Mapping[str, Any]]) -> str:
    """The verdicts, with a sentence naming every finding that does not hold."""
    rows = []
    for f in findings:
        verdict = {True: "<span class='holds'>holds</span>", False: "<span class='fails'>does not hold</span>",
                   None: "<span class='untested'>not tested</span>"}[f["holds"]]
        rows.append([html.escape(f["name"]), html.escape(_FINDING_TEXT.get(f["name"], "")), verdict, _num(f["value"], 2), html.escape(f["detail"])])
    failing = [f["name"] for f in findings if f["holds"] is False]
    untested = [f["name"] for f in findings if f["holds"] is None]
    if failing or untested:
        summary = "".join([
            f"<p class='fails'>Does not hold in this study: {', '.join(failing)}.</p>" if failing else "",
            f"<p class='untested'>Not tested (the study lacks the variants it needs): {', '.join(untested)}.</p>" if untested else "",
        ])
    else:
        summary = f"<p class='holds'>All {len(findings)} findings of the paper hold in this study.</p>"
    return "<h2>Findings</h2>" + summary + _table(["finding", "claim", "verdict", "value", "detail"], rows, left=3)


def es_conv_section(variants: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name, entry in variants.items():
        es, conv = entry["es"] or {}, entry["conv"]
        rows.append([name, str(entry["es_epoch"]), _num(es.get("test")), _num(es.get("ood")),
                     str(entry["conv_epoch"]), _num(conv["test"]), _num(conv["ood"])])
    return _table(["variant", "ES epoch", "ES test", "ES OOD", "CONV epoch", "CONV test", "CONV OOD"], rows)


def linear_model_section(models: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name, entry in models.items():
        ours, theirs = entry["ours"], entry["paper"]
        rows.append([name.replace("_", "-"), *(_beside(ours[k], theirs[k], 2 if k == "r2" else 1) for k in ("b0", "b_kn", "b_unk", "r2")), str(ours["n"])])
    return _table(["test set", "b0", "b_kn", "b_unk", "R²", "points"], rows)


def category_section(rows_in: Sequence[Mapping[str, Any]]) -> str:
    columns = ("full", *CATEGORIES)
    rows = []
    for row in rows_in:
        theirs = row.get("paper") or {}
        cells = [row["variant"]]
        for stage in ("es", "conv"):
            ours = row[stage] or {}
            cells += [_beside(ours.get(c), (theirs.get(stage) or {}).get(c)) for c in columns]
        rows.append(cells)
    header = ["trained on", *(f"{s} {c}" for s in ("ES", "CONV") for c in ("full", "Hkn", "Mkn", "Wkn", "Unk"))]
    return _table(header, rows)


def idk_section(rows_in: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for row in rows_in:
        theirs = row.get("paper") or {}
        rows.append([row["variant"], *(_beside(row[k], theirs.get(k)) for k in ("es_accuracy", "es_answered", "conv_accuracy", "conv_answered"))])
    return _table(["variant", "ES accuracy (answered)", "ES % answered", "CONV accuracy (answered)", "CONV % answered"], rows)


def methods_section(methods: Mapping[str, Any] | None, figures: Mapping[str, bytes]) -> str:
    """The method comparison (Kaplan, Gekhman et al. 2026): one row per method at its judged epoch, and the curves."""
    if not methods:
        return ""
    held = html.escape(methods["held_out"])
    rows = [[html.escape(r["label"]), r["variant"], f"{r['read']} ({r['epoch']})", _num(r["new_facts"]), _num(r["held_out"]),
             _num(r["forgetting"]), _num(r["test"]), _num(r["answer_rate"]), _num(r["drift"], 3)] for r in methods["table"]]
    intro = (f"<p>One mixture, several ways to fine-tune on it. New facts: Unknown training facts fitted. Held-out: test facts of "
             f"category {held}, never trained on; the base model answers all of them (few-shot, greedy), so forgetting = "
             "100 &minus; held-out accuracy. Paper (Qwen2.5-1.5B): forgetting about 15 points with SFT, about 3 with "
             "self-distillation; attention only learns 1% of new facts and keeps 93% held-out. The base model answers few-shot and the "
             "fine-tuned one zero-shot, so even the Known-only run (Unknown filtered) forgets what the learned format does not reach: "
             "the method findings count forgetting beyond it, as the paper reads its table against its Known-only row.</p>")
    table = _table(["method", "trained on", "read at (epoch)", "new facts %", f"held-out {held} %", "forgetting", "test EM", "answered %", "drift"], rows, left=3)
    return (intro + table + _figure(figures, "method_dynamics", "per-method dynamics")
            + _figure(figures, "forgetting_against_learning", "forgetting against new-fact learning"))


def keys_section(keys: Mapping[str, Any] | None, figures: Mapping[str, bytes]) -> str:
    """The key-overlap experiment: one row per (key type, world size) cell."""
    if not keys:
        return ""
    pct = lambda v: _num(None if v is None else 100 * v)  # noqa: E731
    rows = [[html.escape(r["key_type"]), str(r["entities"]), _num(r["key_overlap"], 2), pct(r["held_out_accuracy_before"]),
             pct(r["held_out_accuracy_after"]), f"{pct(r['forgetting'])} &plusmn; {pct(r['forgetting_se'])}", pct(r["new_fact_learning"]),
             pct(r["drift"]), pct(r["format_drift"])] for r in keys["rows"]]
    intro = ("<p>Synthetic worlds whose entity keys are name-like (shared name pieces) or random strings, the same facts in both "
             "(a paired design): a tiny model is pretrained on the known entities, learns the format on some of them (the reference), "
             "then is fine-tuned on new entities' facts. Forgetting: held-out known facts the reference answered and the fine-tuned "
             "model does not. Paper: name-like keys forget 38-41%, random keys 0-4%; drift about 11% against 5%. docs/mechanism.md "
             "explains every measure.</p>")
    header = ["keys", "entities", "key overlap", "held-out before %", "after %", "forgetting %", "new facts %", "drift %", "format drift %"]
    runs = [r.get("runs") or 1 for r in keys["rows"]]
    if max(runs, default=1) > 1:
        header.append("runs")
        for row, n in zip(rows, runs):
            row.append(str(n))
        intro += ("<p>Each row is the mean over the cell's runs (seeds seed, seed + 1, ...); &plusmn; is the standard error of "
                  "that mean across runs.</p>")
    return intro + _table(header, rows) + _figure(figures, "key_overlap", "forgetting and drift by key type and world size")


def table2_section(table2: Mapping[str, Any]) -> str:
    """Training on one SliCK category (paper Table 2): the sets' size, the test questions behind each column, the table."""
    sizes = sorted({row["size"] for row in table2["rows"]})
    relation = ", ".join(f"{r} {n}" for r, n in (table2.get("per_relation") or {}).items())
    pool = ", ".join(f"{c} {n}" for c, n in (table2.get("pool") or {}).items())
    test_n = ", ".join(f"{c} {n}" for c, n in table2["test_n"].items() if n is not None)
    intro = (f"<p>One set per SliCK category and D_Natural (the data's own mix), {' / '.join(map(str, sizes))} training facts each"
             + (f" (per relation: {html.escape(relation)})" if relation else "") + "; the paper's sets hold 6,142. "
             + (f"The curated training split holds {html.escape(pool)}: the rarest category bounds every set. " if pool else "")
             + f"Test questions per column: {html.escape(test_n)}.</p>")
    return intro + category_section(table2["rows"])


def retrieval_section(retrieval: Mapping[str, Any]) -> str:
    """The retrieval route against SFT on the same mixture: one row per route, and what the route's model answered."""
    held = html.escape(retrieval["held_out"])
    rows = [[html.escape(r["label"]), "" if r["epoch"] is None else str(r["epoch"]), "yes" if r["retrieval"] else "no", _num(r["unknown"]),
             _num(r["unknown_closed_book"]), _num(r["held_out"]), _num(r["forgetting"]), _num(r["test"]), _num(r["answer_rate"])]
            for r in retrieval["rows"]]
    intro = (f"<p>The mixture's {retrieval['unknown_facts']} Unknown facts go to a BM25 store ({retrieval['passages']} passages); the routes "
             f"with retrieval put the top {retrieval['k']} passages before every question (the fact's own passage is among them for "
             f"{_num(retrieval['passage_recall'])}% of the Unknown facts). Held-out: test facts of category {held}, never trained on; "
             f"forgetting = 100 &minus; held-out accuracy. Test EM and answered % on {retrieval['test_questions']} test questions. "
             "Retrieval alone asks the base model with the audit's few-shot prompt; the fine-tuned models get the fine-tuning prompt.</p>")
    header = ["route", "epoch", "passages", "Unknown facts %", "closed book %", f"held-out {held} %", "forgetting", "test EM", "answered %"]
    samples = [[html.escape(r["label"]), html.escape(e["passages"]).replace("\n", "<br>"), html.escape(e["question"]), html.escape(", ".join(e["answers"])),
                html.escape(e["prediction"])] for r in retrieval["rows"] for e in r.get("examples", [])]
    return (intro + _table(header, rows, left=1)
            + ("<p>What the routes with retrieval answered to the first Unknown facts:</p>"
               + _table(["route", "passages", "question", "gold", "answer"], samples, left=5) if samples else ""))


def distribution_section(distribution: Mapping[str, Any]) -> str:
    rows = [[split, str(d["n"]), *(_num(d["shares"][c]) for c in CATEGORIES)] for split, d in distribution["ours"].items()]
    rows.append(["<span class='paper'>paper (PaLM 2-M, train)</span>", "", *(_num(distribution["paper"][c]) for c in CATEGORIES)])
    return _table(["split", "examples", *(f"{c} %" for c in CATEGORIES)], rows)


def exposure_section(exposure: Mapping[str, Any]) -> str:
    if not exposure["rows"]:
        return f"<p class='note'>{html.escape(exposure['note'])}</p>"
    rows = [[r["bucket"], str(r["facts"]), *(_num(r["shares"][c]) for c in CATEGORIES)] for r in exposure["rows"]]
    return f"<p class='note'>{html.escape(exposure['note'])}</p>" + _table(["exposures", "facts", *(f"{c} %" for c in CATEGORIES)], rows)


def render_page(results: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The whole report page."""
    from knowtune.study.shift import shift_section
    prov = results["study_provenance"]
    config = prov.get("config") or {}
    stages = "".join(f"<li>{html.escape(n)}: {s.get('seconds', '?')} s</li>" for n, s in results.get("stages", {}).items())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>knowtune study report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Does fine-tuning on new knowledge encourage hallucinations? A knowtune study</h1>",
        f"<p>Model <code>{html.escape(str(config.get('model')))}</code> (fingerprint {html.escape(str(prov.get('model_fingerprint')))}), "
        f"data <code>{html.escape(str(config.get('data')))}</code>, seed {prov.get('seed')}, knowtune {html.escape(str(prov.get('knowtune_version')))}. "
        "Replicates Gekhman et al., EMNLP 2024 (arXiv 2405.05904); the paper's numbers (PaLM 2-M) are shown "
        "<span class='paper'>(in grey, in brackets)</span> beside ours. Accuracies are test exact match in %.</p>",
        findings_section(results["findings"]),
        "<h2>Test accuracy against epoch</h2>", _figure(figures, "accuracy_by_epoch", "test accuracy per epoch"),
        "<h2>Fitted training examples per category</h2>", _figure(figures, "fitted_by_category", "fitted share per category"),
        "<h2>EARLY_STOP against CONVERGENCE</h2>", _figure(figures, "es_vs_conv", "ES against CONV"), es_conv_section(results["variants"]),
        "<h2>Linear model (paper Table 1)</h2>",
        "<p>Accuracy = b0 + b_kn &middot; N_kn/|D| + b_unk &middot; N_unk/|D|, least squares over every (variant, epoch &ge; 1).</p>",
        linear_model_section(results["linear_model"]), _figure(figures, "linear_model", "linear model fit"),
        "<h2>Accuracy per SliCK category (paper Table 2)</h2>", category_section(results["category_table"]),
        "<h2>\"I don't know\" relabelling</h2>",
        idk_section(results["idk_table"]) if results["idk_table"] else "<p class='note'>No D_IDK variant was trained.</p>",
        *(["<h2>Method comparison (Kaplan, Gekhman et al. 2026)</h2>", methods_section(results["methods"], figures)]
          if results.get("methods") else []),
        *(["<h2>Key overlap: name-like against random entity keys</h2>", keys_section(results["key_overlap"], figures)]
          if results.get("key_overlap") else []),
        *(["<h2>Training on one SliCK category (paper Table 2)</h2>", table2_section(results["table2"])] if results.get("table2") else []),
        *(["<h2>Retrieval instead of fine-tuning on Unknown facts</h2>", retrieval_section(results["retrieval"])]
          if results.get("retrieval") else []),
        *(["<h2>Knowledge shift: category transitions at EARLY_STOP and CONVERGENCE</h2>", shift_section(results["knowledge_shift"], figures)]
          if results.get("knowledge_shift") else []),
        "<h2>SliCK category distribution</h2>", _figure(figures, "category_distribution", "category distribution"),
        distribution_section(results["category_distribution"]),
        "<h2>SliCK categories against pretraining exposure</h2>", _figure(figures, "categories_by_exposure", "categories by exposure"),
        exposure_section(results["categories_by_exposure"]),
        f"<h2>Provenance</h2><ul>{stages}</ul><pre>{html.escape(json.dumps(prov, indent=2))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
