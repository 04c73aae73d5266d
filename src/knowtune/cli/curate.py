"""``knowtune curate``: the controlled study's training-set variants from SliCK annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app


def _items(text: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``None`` stays ``None`` (the config decides)."""
    return [item.strip() for item in text.split(",") if item.strip()] if text is not None else None


@app.command("curate")
def curate(
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Output dir of `knowtune annotate` (annotations.jsonl)."),
    data: Optional[str] = typer.Option(None, "--data", help="The annotated dataset, joined by id (needed when records lack question/answers)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir: one folder per variant plus variants.json."),
    config: Optional[Path] = typer.Option(None, "--config", help="curate.yaml with any config key; flags override it."),
    unknown_ratios: Optional[str] = typer.Option(None, "--unknown-ratios", help="Percentages of Unknown, comma-separated [0,25,50,75,100]."),
    size: Optional[int] = typer.Option(None, "--size", help="|D| of every fixed-size variant (default: the paper's rule, per relation its smallest category, summed)."),
    size_split: Optional[str] = typer.Option(None, "--size-split", help="How |D| is split over relations: paper (default: in proportion to the paper rule) or equal."),
    split: Optional[str] = typer.Option(None, "--split", help="Which annotated split to curate from: train (default), dev, test or all."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every draw [0]."),
    idk_phrase: Optional[str] = typer.Option(None, "--idk-phrase", help="Answer that replaces Unknown answers in D_IDK (default: I don't know)."),
    idk_base_ratio: Optional[int] = typer.Option(None, "--idk-base-ratio", help="D_IDK relabels D_X for this X [50]."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Kinds to build, comma-separated: ratio,known,single,natural,idk,filtered (default: all)."),
) -> None:
    """Build the training sets of the controlled study (Gekhman et al. 2024): see docs/curate.md."""
    from knowtune.config import load_config
    from knowtune.curate import CurateConfig, run_curate

    overrides: dict[str, Any] = {
        "annotations": str(annotations) if annotations else None, "data": data, "out": str(out) if out else None,
        "unknown_ratios": _items(unknown_ratios), "size": size, "size_split": size_split, "split": split, "seed": seed,
        "idk_phrase": idk_phrase, "idk_base_ratio": idk_base_ratio, "variants": _items(variants),
    }
    cfg = load_config(CurateConfig, config, overrides)
    index = run_curate(cfg)
    _print_index(index, Path(cfg.out))


def _print_index(index: dict[str, Any], out: Path) -> None:
    table = Table(title=f"curated variants ({out / 'variants.json'})")
    for name, justify in (("variant", "left"), ("examples", "right"), ("Unknown", "right"), ("what", "left")):
        table.add_column(name, justify=justify)
    for entry in index["variants"]:
        table.add_row(entry["name"], str(entry["size"]), f"{100 * entry['unknown_share']:.1f}%", entry["description"])
    Console().print(table)
