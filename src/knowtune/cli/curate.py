"""``knowtune curate``: the controlled study's training-set variants from SliCK annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app
from knowtune.cli.options import with_config_flags
from knowtune.curate import CurateConfig


@app.command("curate")
@with_config_flags(CurateConfig)
def curate(
    config: Optional[Path] = typer.Option(None, "--config", help="curate.yaml with any config key; flags override it."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Build the training sets of the controlled study (Gekhman et al. 2024): see docs/curate.md.

    Every CurateConfig key is a flag; lists take comma-separated values (--unknown-ratios 0,50,100); flags override --config.
    """
    from knowtune.config import load_config
    from knowtune.curate import run_curate
    from knowtune.validate import preflight_curate

    cfg = load_config(CurateConfig, config, overrides, flags)
    preflight_curate(cfg)
    index = run_curate(cfg)
    _print_index(index, Path(cfg.out))


def _print_index(index: dict[str, Any], out: Path) -> None:
    table = Table(title=f"curated variants ({out / 'variants.json'})")
    for name, justify in (("variant", "left"), ("examples", "right"), ("Unknown", "right"), ("what", "left")):
        table.add_column(name, justify=justify)
    for entry in index["variants"]:
        table.add_row(entry["name"], str(entry["size"]), f"{100 * entry['unknown_share']:.1f}%", entry["description"])
    Console().print(table)
