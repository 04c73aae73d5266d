"""Knowledge shift: what a fine-tune did to the model's knowledge, from two SliCK audits.

Audit the same questions with the base model (BEFORE) and with the fine-tuned model
(AFTER), under one protocol; each example then moves from one SliCK category to another
(Gekhman et al., EMNLP 2024, section 3). The transition matrix M[b][a] counts the examples
in category b before and a after. Read from it:

- **lost**: Known before (HighlyKnown, MaybeKnown or WeaklyKnown), Unknown after;
- **learned**: Unknown before, Known after;
- **degraded** / **improved**: moved to a lower / higher category (HighlyKnown > MaybeKnown
  > WeaklyKnown > Unknown), which includes lost / learned.

Given the fine-tuning set, the examples split into **trained** (their id is in it) and
**held out**: a fine-tune that teaches new facts should move trained Unknown examples to
Known, and the papers' warning is about the held-out Known ones that it moves down.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from knowtune.errors import KnowtuneError
from knowtune.slick.categories import CATEGORIES, KNOWN

RANK = {category: rank for rank, category in enumerate(reversed(CATEGORIES))}  # Unknown 0 .. HighlyKnown 3
SHIFT_FILE = "shift.json"


def load_audit(directory: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(records by id, protocol.json) of a finished ``knowtune annotate`` output directory."""
    directory = Path(directory)
    fix = "pass the --out directory of a finished `knowtune annotate` run"
    records_path, protocol_path, summary_path = (directory / n for n in ("annotations.jsonl", "protocol.json", "summary.json"))
    for path in (records_path, protocol_path, summary_path):
        if not path.is_file():
            raise KnowtuneError(f"{path}: not found ({directory} is not a finished audit)", fix=fix)
    if not json.loads(summary_path.read_text(encoding="utf-8")).get("complete", False):
        raise KnowtuneError(f"{summary_path}: the audit is unfinished (complete: false)", fix="rerun the same `knowtune annotate` command to finish it")
    records: dict[str, dict[str, Any]] = {}
    for line_no, line in enumerate(records_path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise KnowtuneError(f"{records_path}:{line_no}: not an annotation record", fix=fix) from None
    return records, json.loads(protocol_path.read_text(encoding="utf-8"))


def transition_block(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The transition matrix of (before, after) category pairs and the counts read from it."""
    matrix = {b: {a: 0 for a in CATEGORIES} for b in CATEGORIES}
    for before, after in pairs:
        matrix[before][after] += 1
    cells = [(b, a, n) for b, row in matrix.items() for a, n in row.items()]
    total = sum(n for _, _, n in cells)
    known_before = sum(n for b, _, n in cells if b in KNOWN)
    unknown_before = total - known_before
    lost = sum(n for b, a, n in cells if b in KNOWN and a == "Unknown")
    learned = sum(n for b, a, n in cells if b == "Unknown" and a in KNOWN)
    return {
        "examples": total, "matrix": matrix,
        "lost": lost, "learned": learned,
        "lost_share_of_known": lost / known_before if known_before else 0.0,
        "learned_share_of_unknown": learned / unknown_before if unknown_before else 0.0,
        "degraded": sum(n for b, a, n in cells if RANK[a] < RANK[b]),
        "improved": sum(n for b, a, n in cells if RANK[a] > RANK[b]),
        "unchanged": sum(n for b, a, n in cells if a == b),
        "known_before": known_before, "known_after": sum(n for _, a, n in cells if a in KNOWN),
    }


def knowledge_shift(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                    trained_ids: set[str] | None = None) -> dict[str, Any]:
    """Transition matrices overall, per relation, per split and (with ``trained_ids``) for
    trained vs held-out examples, over the ids both audits share."""
    common = [i for i in before if i in after]
    if not common:
        raise KnowtuneError("the two audits share no example ids", fix="audit the same dataset (same ids) with both models")
    changed = [i for i in common if before[i].get("question") != after[i].get("question")]
    if changed:
        raise KnowtuneError(f"example {changed[0]!r} has different questions in the two audits ({len(changed)} such ids)",
                            fix="audit the same dataset with both models")
    pairs = {i: (before[i]["category"], after[i]["category"]) for i in common}

    def grouped(key) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[str]] = {}
        for i in common:
            groups.setdefault(key(i), []).append(i)
        return {name: transition_block(pairs[i] for i in ids) for name, ids in sorted(groups.items())}

    shift = {
        "overall": transition_block(pairs.values()),
        "per_relation": grouped(lambda i: before[i]["relation"]),
        "per_split": grouped(lambda i: before[i]["split"]),
        "only_before": len(before) - len(common), "only_after": len(after) - len(common),
    }
    if trained_ids is not None:
        shift["per_training"] = grouped(lambda i: "trained" if i in trained_ids else "held_out")
        shift["trained_ids_in_audit"] = sum(i in trained_ids for i in common)
    return shift


def protocol_differences(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two audit protocols (``protocol.json["protocol"]``)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            out.append(prefix)

    walk(first, second, "")
    return [key for key in out if key != "knowtune_version"]


def plot_shift(shift: Mapping[str, Any], path: str | Path) -> None:
    """Heat maps of the transition matrix: overall, and trained / held out when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("all examples", shift["overall"])] + [(name.replace("_", " "), block) for name, block in shift.get("per_training", {}).items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    short = ["HK", "MK", "WK", "Unk"]
    for ax, (title, block) in zip(axes[0], panels):
        grid = [[block["matrix"][b][a] for a in CATEGORIES] for b in CATEGORIES]
        ax.imshow(grid, cmap="Blues")
        for r, row in enumerate(grid):
            for c, n in enumerate(row):
                ax.text(c, r, str(n), ha="center", va="center", color="black")
        ax.set_xticks(range(4), short)
        ax.set_yticks(range(4), short)
        ax.set_xlabel("after fine-tuning")
        ax.set_ylabel("before (base model)")
        ax.set_title(f"{title}: {block['lost']} lost, {block['learned']} learned", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: What ``knowtune train --reaudit`` audits: the model at convergence (``OUT/model``) and, when the
#: run kept it (``save_best``), the best-dev model (``OUT/best``, early stopping), with their shift files.
REAUDIT_STAGES = {"conv": ("model", SHIFT_FILE), "es": ("best", "shift_es.json")}


def reaudit(train_out: str | Path, annotations: str | Path, trained_ids: set[str], log=None,
            overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Audit the fine-tuned model(s) in ``train_out`` exactly as the base model was audited in
    ``annotations`` (its saved ``config.yaml``: same data, examples and protocol; in this process),
    into ``train_out/reaudit/{conv,es}``, and write the knowledge shift beside the training outputs:
    ``shift.json`` and ``shift.png`` (CONV), ``shift_es.json`` and ``shift_es.png`` (ES, when ``best/`` exists).
    ``overrides`` changes run keys of the saved config (``data``, ``splits``: which examples are
    audited again); a change that alters the protocol is an error. Returns the shifts by stage."""
    from knowtune.config import load_config
    from knowtune.io import atomic_write_json
    from knowtune.provenance import provenance
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.protocol import AnnotateConfig

    train_out, annotations = Path(train_out), Path(annotations)
    before, before_protocol = load_audit(annotations)
    if not (annotations / "config.yaml").is_file():
        raise KnowtuneError(f"{annotations / 'config.yaml'}: not found, so the audit cannot be repeated",
                            fix="pass --annotations the --out directory of a `knowtune annotate` run (it saves config.yaml)")
    base = load_config(AnnotateConfig, annotations / "config.yaml")
    shifts: dict[str, dict[str, Any]] = {}
    for stage, (model_name, shift_name) in REAUDIT_STAGES.items():
        model_dir = train_out / model_name
        if not (model_dir / "config.json").is_file():
            continue
        audit_dir = train_out / "reaudit" / stage
        if log is not None:
            log(f"reaudit: auditing the {stage.upper()} model {model_dir} as {annotations} was audited, into {audit_dir}")
        config = base.model_copy(update={"model": str(model_dir), "out": str(audit_dir), "shard": None, "backend": "hf", "overwrite": True,
                                         **(overrides or {})})
        run_annotate(config, log=log)
        after, after_protocol = load_audit(audit_dir)
        differences = protocol_differences(before_protocol["protocol"], after_protocol["protocol"])
        if differences:
            raise KnowtuneError(f"{audit_dir}: the re-audit's protocol differs from {annotations}'s in {', '.join(differences[:6])}",
                                fix="audit the base model in this process (not --backend openai) with this knowtune version, then reaudit again; "
                                    "or audit the fine-tuned model yourself and compare with `knowtune diff`")
        shift = knowledge_shift(before, after, trained_ids)
        shift["before"] = {"dir": str(annotations), "model_fingerprint": before_protocol.get("model_fingerprint"), "protocol_hash": before_protocol.get("protocol_hash")}
        shift["after"] = {"dir": str(audit_dir), "model_fingerprint": after_protocol.get("model_fingerprint"), "protocol_hash": after_protocol.get("protocol_hash"),
                          "stage": stage}
        shift["provenance"] = provenance({"before": str(annotations), "after": str(audit_dir), "trained": str(train_out)})
        plot_shift(shift, train_out / shift_name.replace(".json", ".png"))
        atomic_write_json(train_out / shift_name, shift)
        shifts[stage] = shift
    return shifts
