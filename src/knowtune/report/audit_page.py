"""One SliCK audit as one self-contained HTML page (``knowtune report AUDIT_DIR``).

What a person deciding whether to fine-tune on a dataset needs from its audit (Gekhman et
al., EMNLP 2024, section 3): how many examples carry facts the model already knows
(HighlyKnown: P_Correct(greedy) = 1; MaybeKnown: 0 < P_Correct(greedy) < 1; WeaklyKnown:
only sampled answers are ever right; Unknown: never right), per relation; the distributions
of P0 = P_Correct(greedy) and Ps = P_Correct(T = 0.5) behind the categories; examples of each
category with the model's greedy answers; the generations spent; and what knowtune suggests
doing about the Unknown examples.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from knowtune.errors import KnowtuneError
from knowtune.report.html import _CSS, _figure, _table
from knowtune.report.plots import CATEGORY_COLOURS, png_bytes
from knowtune.slick.categories import CATEGORIES, KNOWN

PAGE_FILE = "audit.html"
_EXAMPLES_PER_CATEGORY = 8


def load_audit_dir(directory: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(annotation records, summary.json, protocol.json) of a ``knowtune annotate`` output directory."""
    directory = Path(directory)
    paths = {name: directory / name for name in ("annotations.jsonl", "summary.json", "protocol.json")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise KnowtuneError(f"{missing[0]}: not found, so {directory} is not a `knowtune annotate` output directory",
                            fix="pass the --out directory of `knowtune annotate` (or a study directory for the study report)")
    records = [json.loads(line) for line in paths["annotations.jsonl"].read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise KnowtuneError(f"{paths['annotations.jsonl']}: the audit holds no examples", fix="rerun `knowtune annotate`")
    summary = json.loads(paths["summary.json"].read_text(encoding="utf-8"))
    protocol = json.loads(paths["protocol.json"].read_text(encoding="utf-8"))
    return records, summary, protocol


def figures(records: list[dict[str, Any]]) -> dict[str, bytes]:
    """PNG figures: category shares per relation, and the P0 / Ps histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    relations = sorted({r["relation"] for r in records})
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(relations) + 1.5))
    left = [0.0] * len(relations)
    for category in CATEGORIES:
        shares = []
        for relation in relations:
            items = [r for r in records if r["relation"] == relation]
            shares.append(sum(r["category"] == category for r in items) / len(items))
        ax.barh(relations, shares, left=left, color=CATEGORY_COLOURS[category], label=category)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlabel("share of examples")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False)
    out["categories"] = png_bytes(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, key, label in ((axes[0], "p0", "P0 = P_Correct(greedy)"), (axes[1], "ps", "Ps = P_Correct(T = 0.5)")):
        values = [r[key] for r in records if r.get(key) is not None]
        ax.hist(values, bins=[i / 10 for i in range(11)], color="#4575b4")
        ax.set_xlabel(label)
        ax.set_ylabel("examples")
        if key == "ps":
            ax.set_title(f"{len(values)} of {len(records)} examples sampled", fontsize=9)
    out["distributions"] = png_bytes(fig)
    return out


def advice(records: list[dict[str, Any]]) -> str:
    """A plain-language summary of what fine-tuning on this set would teach, and what to do."""
    counts = Counter(r["category"] for r in records)
    n = len(records)
    unknown, weak = counts["Unknown"], counts["WeaklyKnown"]
    share = unknown / n
    lines = [f"Of {n} examples, <b>{unknown} ({share:.0%}) carry facts the model does not know</b> (Unknown): it never "
             f"answered them correctly, greedy or sampled. {sum(counts[c] for c in KNOWN)} ({1 - share:.0%}) it already knows "
             f"to some degree ({counts['HighlyKnown']} HighlyKnown, {counts['MaybeKnown']} MaybeKnown, {weak} WeaklyKnown)."]
    if share >= 0.1:
        lines.append("Fine-tuning on Unknown examples is slow to fit them and, once fitted, makes the model hallucinate more on "
                     "what it knew (Gekhman et al. 2024). Options, most conservative first: <b>filter</b> them "
                     "(<code>knowtune curate --variants filtered</code>); <b>relabel</b> them \"I don't know\" "
                     "(<code>--variants idk</code>), which raises accuracy on answered questions; <b>route them to retrieval</b> "
                     "instead of training; or, if the model must learn them, train with <b>early stopping</b> on dev accuracy or "
                     "<b>self-distillation</b> (<code>knowtune train --method selfdistill</code>), which forgets less.")
    else:
        lines.append("Few examples are Unknown, so fine-tuning on this set mostly teaches the format and surfaces knowledge the "
                     "model has; early stopping on dev accuracy is still advised.")
    if weak:
        lines.append(f"The {weak} WeaklyKnown examples are answered correctly only by sampling; the paper found them fitted "
                     "faster than Unknown ones, but they still count against held-out accuracy when over-trained.")
    return "".join(f"<p>{line}</p>" for line in lines)


def examples_section(records: list[dict[str, Any]]) -> str:
    """A few examples per category with their gold and greedy answers."""
    parts = []
    for category in CATEGORIES:
        items = [r for r in records if r["category"] == category][:_EXAMPLES_PER_CATEGORY]
        if not items:
            continue
        rows = [[html.escape(r["id"]), html.escape(r["question"]), html.escape(" | ".join(r.get("answers", []))),
                 html.escape(" | ".join(dict.fromkeys(r.get("greedy_answers") or []))), f"{r.get('p0', 0):.2f}",
                 "&ndash;" if r.get("ps") is None else f"{r['ps']:.2f}"] for r in items]
        parts.append(f"<h3>{category}</h3>" + _table(["id", "question", "gold", "greedy answers (distinct)", "P0", "Ps"], rows, left=4))
    return "<h2>Examples</h2>" + "".join(parts)


def _matching(protocol: dict[str, Any]) -> str:
    """How answers were judged correct and where decoding stopped, from the audit's protocol
    (a protocol written before matchers existed, or at the default, records none: exact match)."""
    match, decoding = protocol.get("match", {}), protocol["decoding"]
    method = match.get("method", "exact")
    detail = {"f1": f" (token F1 >= {match.get('f1_threshold', 0.5)})",
              "judge": f" (judge model {html.escape(str((match.get('judge') or {}).get('model')))})"}.get(method, "")
    stops = decoding["stop"] if isinstance(decoding["stop"], list) else [decoding["stop"]]
    return (f"answers matched by <b>{html.escape(method)}</b>{detail}, decoding stopped at "
            f"{', '.join('<code>' + html.escape(stop.encode('unicode_escape').decode()) + '</code>' for stop in stops)} "
            f"or {decoding['max_new_tokens']} tokens")


def render_audit_page(directory: str | Path) -> str:
    """The page's HTML for the audit in ``directory``."""
    records, summary, protocol = load_audit_dir(directory)
    overall = summary["overall"]
    share_rows = [["all", str(overall["examples"]), *(f"{overall['counts'][c]} ({overall['shares'][c]:.0%})" for c in CATEGORIES),
                   f"{overall['generations']:,}"]]
    share_rows += [[html.escape(rel), str(b["examples"]), *(f"{b['counts'][c]} ({b['shares'][c]:.0%})" for c in CATEGORIES), f"{b['generations']:,}"]
                   for rel, b in summary["per_relation"].items()]
    decoding = protocol["protocol"]["decoding"]
    provenance = summary.get("provenance", {})
    meta = (f"model fingerprint <code>{html.escape(str(protocol.get('model_fingerprint')))}</code>, protocol "
            f"<code>{html.escape(str(protocol.get('protocol_hash')))}</code>, knowtune {html.escape(str(provenance.get('knowtune_version')))}; "
            f"{protocol['protocol']['n_ex']} few-shot prompts of {protocol['protocol']['k']} exemplars per example, "
            f"{decoding['greedy_per_prompt']} greedy and {decoding['samples_per_prompt']} sampled answers per prompt at "
            f"T = {decoding['temperature']}, mode {html.escape(protocol['protocol']['mode'])}; {_matching(protocol['protocol'])}"
            + ("" if summary.get("complete", True) else "; <b>the audit is unfinished</b>"))
    figs = figures(records)
    body = [
        "<h1>SliCK audit</h1>", f"<p class='note'>{html.escape(str(directory))}: {meta}.</p>",
        "<h2>What fine-tuning on this set would teach</h2>", advice(records),
        "<h2>Categories</h2>",
        _table(["relation", "examples", *CATEGORIES, "generations"], share_rows),
        _figure(figs, "categories", "category shares per relation"),
        "<h2>P0 and Ps</h2>", _figure(figs, "distributions", "P0 and Ps distributions"),
        examples_section(records),
    ]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>knowtune audit</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>")


def write_audit_page(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the page (default ``DIRECTORY/audit.html``) atomically; returns its path."""
    from knowtune.io import atomic_write_bytes

    path = Path(out) if out is not None else Path(directory) / PAGE_FILE
    atomic_write_bytes(path, render_audit_page(directory).encode("utf-8"))
    return path
