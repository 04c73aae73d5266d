"""``knowtune diff BEFORE AFTER``: what a fine-tune did to the model's knowledge (:mod:`knowtune.shift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console

console = Console(markup=False)


@app.command("diff")
def diff_command(
    before: Path = typer.Argument(..., help="Audit of the base model (`knowtune annotate --out` dir)."),
    after: Path = typer.Argument(..., help="Audit of the fine-tuned model, same data and protocol."),
    trained: Optional[str] = typer.Option(None, "--trained", help="The fine-tuning set (file, or a curate variant dir): splits the matrix into trained vs held-out examples."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write shift.json and shift.png here."),
    allow_protocol_change: bool = typer.Option(False, "--allow-protocol-change", help="Compare audits made with different protocols (their categories are then not comparable)."),
) -> None:
    """Category transition matrix (HighlyKnown -> Unknown = knowledge lost; Unknown -> Known = learned)."""
    from knowtune.errors import KnowtuneError
    from knowtune.io import atomic_write_json
    from knowtune.provenance import provenance
    from knowtune.shift import SHIFT_FILE, knowledge_shift, load_audit, plot_shift, protocol_differences

    before_records, before_protocol = load_audit(before)
    after_records, after_protocol = load_audit(after)
    differences = protocol_differences(before_protocol["protocol"], after_protocol["protocol"])
    if differences and not allow_protocol_change:
        raise KnowtuneError(f"{before} and {after} were audited with different protocols (differ in: {', '.join(differences[:6])})",
                            fix="audit both models with the same annotate config, or pass --allow-protocol-change")
    if before_protocol.get("model_fingerprint") == after_protocol.get("model_fingerprint"):
        err_console.print("diff: warning: both audits are of the same model (equal fingerprints)", highlight=False)
    trained_ids = _trained_ids(trained) if trained else None
    shift = knowledge_shift(before_records, after_records, trained_ids)
    if trained_ids is not None and shift["trained_ids_in_audit"] == 0:
        raise KnowtuneError(f"{trained}: none of its ids are in the audits", fix="pass the training set the fine-tune used (its ids must match the audited data)")
    shift["before"] = {"dir": str(before), "model_fingerprint": before_protocol.get("model_fingerprint"), "protocol_hash": before_protocol.get("protocol_hash")}
    shift["after"] = {"dir": str(after), "model_fingerprint": after_protocol.get("model_fingerprint"), "protocol_hash": after_protocol.get("protocol_hash")}
    console.print(_table(shift))
    if out is not None:
        if out.exists() and not out.is_dir():
            raise KnowtuneError(f"{out} exists and is not a directory", fix="pass another --out")
        shift["provenance"] = provenance({"before": str(before), "after": str(after), "trained": trained})
        out.mkdir(parents=True, exist_ok=True)
        plot_shift(shift, out / "shift.png")
        atomic_write_json(out / SHIFT_FILE, shift)
        typer.echo(str(out / SHIFT_FILE))


def _trained_ids(spec: str) -> set[str]:
    from knowtune.data import load_examples

    path = Path(spec)
    if path.is_dir() and (path / "train.jsonl").is_file():
        path = path / "train.jsonl"
    return {example.id for example in load_examples(path)}


def _table(shift: dict) -> Table:
    from knowtune.slick.categories import CATEGORIES

    matrix = shift["overall"]["matrix"]
    table = Table(title=f"knowledge shift over {shift['overall']['examples']} examples (rows: before, columns: after)")
    table.add_column("before \\ after")
    for category in CATEGORIES:
        table.add_column(category, justify="right")
    for category in CATEGORIES:
        table.add_row(category, *(str(matrix[category][a]) for a in CATEGORIES))
    groups = [("all", shift["overall"]), *shift.get("per_training", {}).items(), *shift["per_relation"].items()]
    summary = Table(title="lost = Known -> Unknown, learned = Unknown -> Known")
    for column in ("group", "examples", "lost", "learned", "degraded", "improved"):
        summary.add_column(column, justify="right" if column != "group" else "left")
    for name, block in groups:
        summary.add_row(name, str(block["examples"]), f"{block['lost']} ({block['lost_share_of_known']:.0%} of Known)",
                        f"{block['learned']} ({block['learned_share_of_unknown']:.0%} of Unknown)", str(block["degraded"]), str(block["improved"]))
    grid = Table.grid()
    grid.add_row(table)
    grid.add_row(summary)
    return grid
