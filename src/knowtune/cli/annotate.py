"""``knowtune annotate``: the SliCK knowledge audit, and ``knowtune annotate merge`` for shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console
from knowtune.slick.categories import CATEGORIES

annotate_app = typer.Typer(
    help="SliCK knowledge audit: label each QA example HighlyKnown, MaybeKnown, WeaklyKnown or Unknown for a model.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(annotate_app, name="annotate")


@annotate_app.callback()
def annotate(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", help="Model dir, Hugging Face Hub id, or `default` (the embedded model)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset: .jsonl/.json/.parquet, an EntityQuestions dir, or `embedded`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir (results, protocol, summary); rerunning resumes."),
    config: Optional[Path] = typer.Option(None, "--config", help="annotate.yaml with any config key; flags override it."),
    mode: Optional[str] = typer.Option(None, "--mode", help="lazy (default: same categories, far fewer generations) or exact (exact P0 and Ps)."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Audit only this split (repeatable); default: every split."),
    relations: Optional[str] = typer.Option(None, "--relations", help="Audit only these relations (comma-separated)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Audit only the first N selected examples."),
    n_ex: Optional[int] = typer.Option(None, "--n-ex", help="Few-shot prompts (exemplar sets) per relation [10]."),
    k: Optional[int] = typer.Option(None, "--k", help="Exemplars per prompt [4]."),
    exemplars_from: Optional[str] = typer.Option(None, "--exemplars-from", help="Split the exemplars come from: dev [default], train or test."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of exemplar draws and samples [0]."),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", help="Samples per prompt [16]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature [0.5]."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sampling top-k [40]."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length cap in tokens [24]."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template",
                                                 help="Wrap the few-shot text in the tokenizer's chat template."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences decoded together [512]."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Examples per committed batch [256]."),
    prune_samples: Optional[bool] = typer.Option(None, "--prune-samples/--no-prune-samples",
                                                 help="Stop sampled answers that can no longer be correct (exact; on by default)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/N: audit only shard i (0-based) of N; join with `annotate merge`."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard results of another protocol or model found in --out."),
) -> None:
    """Audit what a model knows (SliCK, Gekhman et al. 2024): see docs/annotate.md."""
    if ctx.invoked_subcommand is not None:
        return
    from knowtune.config import load_config
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.protocol import AnnotateConfig

    overrides: dict[str, Any] = {
        "model": model, "data": data, "out": str(out) if out else None, "mode": mode, "splits": split or None,
        "relations": [r.strip() for r in relations.split(",") if r.strip()] if relations else None,
        "limit": limit, "n_ex": n_ex, "k": k, "exemplars_from": exemplars_from, "seed": seed, "n_samples": n_samples,
        "temperature": temperature, "top_k": top_k, "max_new_tokens": max_new_tokens, "chat_template": chat_template,
        "device": device, "dtype": dtype, "batch_size": batch_size, "chunk_size": chunk_size, "shard": shard, "prune_samples": prune_samples,
        "overwrite": overwrite or None,
    }
    cfg = load_config(AnnotateConfig, config, overrides)
    summary = run_annotate(cfg, on_batch=_print_progress)
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
