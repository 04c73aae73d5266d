"""``knowtune annotate``: the SliCK knowledge audit, and ``knowtune annotate merge`` for shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console
from knowtune.cli.options import with_config_flags
from knowtune.data.formats import FIELD_FLAG_ALIASES
from knowtune.matching import MATCH_FLAG_ALIASES
from knowtune.slick.categories import CATEGORIES
from knowtune.slick.protocol import AnnotateConfig

annotate_app = typer.Typer(
    help="SliCK knowledge audit: label each QA example HighlyKnown, MaybeKnown, WeaklyKnown or Unknown for a model.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(annotate_app, name="annotate")


@annotate_app.callback()
@with_config_flags(AnnotateConfig, aliases={"splits": ["--split"], **FIELD_FLAG_ALIASES, **MATCH_FLAG_ALIASES}, commas=["relations"])
def annotate(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="annotate.yaml with any config key; flags override it."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Audit what a model knows (SliCK, Gekhman et al. 2024; --method ptrue: P(True)): see docs/annotate.md.

    Every AnnotateConfig key is a flag (nested keys joined by -: --match-lowercase); flags override --config.
    """
    if ctx.invoked_subcommand is not None:
        return
    from contextlib import nullcontext

    from knowtune.config import load_config
    from knowtune.io import OutputLock, command_name
    from knowtune.slick.annotate import run_annotate
    from knowtune.validate import preflight_annotate

    cfg = load_config(AnnotateConfig, config, overrides, flags)
    preflight_annotate(cfg)
    log = lambda line: err_console.print(line, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    if cfg.method == "ptrue":
        from knowtune.ptrue import print_ptrue_progress, print_ptrue_summary, run_ptrue

        with OutputLock(cfg.out, command_name()) if cfg.out else nullcontext():
            summary = run_ptrue(cfg, on_batch=lambda state: print_ptrue_progress(state, err_console), log=log)
        print_ptrue_summary(summary, Path(cfg.out), Console())
        return
    with OutputLock(cfg.out, command_name()) if cfg.out else nullcontext():
        summary = run_annotate(cfg, on_batch=_print_progress, log=log)
    _print_summary(summary, Path(cfg.out))


@annotate_app.command("merge")
def merge(
    shard_dirs: list[Path] = typer.Argument(..., help="The --out dirs of the `--shard i/N` runs."),
    out: Path = typer.Option(..., "--out", help="Output dir of the merged results."),
) -> None:
    """Join sharded audit outputs into one output dir, equal to a single unsharded run's."""
    from knowtune.slick.results import merge_shards

    summary = merge_shards(shard_dirs, out)
    _print_summary(summary, out)


def _print_progress(state: dict[str, Any]) -> None:
    eta = f"{state['eta_s']:.0f} s" if state["eta_s"] is not None else "?"
    counts = " ".join(f"{c} {state['counts'][c]}" for c in CATEGORIES)
    err_console.print(f"annotate: {state['done']}/{state['total']} examples, {state['examples_per_s']:.1f} ex/s, ETA {eta} | {counts}",
                      highlight=False, soft_wrap=True)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"SliCK categories ({out / 'summary.json'})")
    table.add_column("relation")
    table.add_column("examples", justify="right")
    for category in CATEGORIES:
        table.add_column(category, justify="right")
    blocks = [("all", summary["overall"]), *summary["per_relation"].items()]
    for name, block in blocks:
        cells = [f"{block['counts'][c]} ({100 * block['shares'][c]:.0f}%)" for c in CATEGORIES]
        table.add_row(name, str(block["examples"]), *cells)
    Console().print(table)
    if not summary.get("complete", True):
        err_console.print("warning: not every selected example is annotated yet; rerun the same command to resume", highlight=False)
