"""``knowtune pretrain`` and ``knowtune models``: the tiny base model and its quality check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app
from knowtune.cli.options import with_config_flags
from knowtune.config import load_config
from knowtune.pretrain import PretrainConfig

models_app = typer.Typer(help="Base models: the shipped default, and recall by pretraining exposure.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(markup=False)


@app.command("pretrain")
@with_config_flags(PretrainConfig, aliases={"learning_rate": ["--lr"]})
def pretrain_command(
    out: Optional[Path] = typer.Option(None, help="Directory to save the model to."),
    default: bool = typer.Option(False, "--default", help="Rebuild the shipped default model in place (default config and seed)."),
    world: str = typer.Option("embedded", help="A world directory, or `embedded`."),
    config: Optional[Path] = typer.Option(None, help="YAML with PretrainConfig keys (nested `corpus:` for the exposure schedule); flags override it."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Train a tokenizer and a small LlamaForCausalLM on a world's corpus (CPU, minutes).

    Every PretrainConfig key is a flag (corpus keys as --corpus-<key>).
    """
    from knowtune.errors import ConfigError
    from knowtune.models import DEFAULT_MODEL_DIR
    from knowtune.pretrain import pretrain
    from knowtune.world.embedded import resolve_world

    if default == (out is not None):
        raise ConfigError("give exactly one of --out DIR or --default", fix="`knowtune pretrain --out my-model` or `knowtune pretrain --default`")
    if default and (config or overrides or world != "embedded"):
        raise ConfigError("--default rebuilds the shipped model with the default config; it takes no other options", fix="use --out DIR for a custom model")
    settings = load_config(PretrainConfig, config, overrides, flags)
    target = DEFAULT_MODEL_DIR if default else out
    pretrain(resolve_world(world), settings, target, log=console.print)
    console.print(f"saved model to {target}")
    typer.echo(str(target))


@models_app.command("default")
def default_command() -> None:
    """Print the directory of the shipped default model (last line of output)."""
    from knowtune.models import default_model_dir

    typer.echo(str(default_model_dir()))


@models_app.command("export-gguf")
def export_gguf_command(
    model: str = typer.Argument("default", help="A Llama-architecture model directory, a cached hub id, or `default`."),
    out: Path = typer.Option(..., "--out", help="The GGUF file to write."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (as the in-process audit computes) or float16."),
) -> None:
    """Export a model with a byte-level BPE tokenizer to GGUF for llama.cpp's llama-server, tokenizing as transformers does (docs/serving.md)."""
    from knowtune.models.gguf import export_gguf

    typer.echo(str(export_gguf(model, out, dtype=dtype)))


@models_app.command("recall")
def recall_command(
    model: str = typer.Argument("default", help="A knowtune-pretrained model directory, or `default`."),
    world: str = typer.Option("embedded", help="The world it was pretrained on (a directory, or `embedded`)."),
    out: Optional[Path] = typer.Option(None, help="Write the table as JSON here."),
    seed: int = typer.Option(0, help="Seed of the exemplar draw."),
) -> None:
    """4-shot greedy accuracy by pretraining-exposure bucket (needs exposures.jsonl beside the model)."""
    from knowtune.io import atomic_write_json
    from knowtune.models import load, model_dir_of
    from knowtune.pretrain import load_exposures
    from knowtune.provenance import model_fingerprint, provenance
    from knowtune.recall import accuracy_by_exposure, few_shot_recall
    from knowtune.world.embedded import resolve_world

    loaded = resolve_world(world)
    directory = model_dir_of(model)
    exposures = load_exposures(directory)
    llm, tokenizer = load(model)
    facts = [ex for ex in loaded.examples if ex.id in exposures]
    results = few_shot_recall(llm, tokenizer, facts, loaded.split("dev"), seed=seed)
    rows = accuracy_by_exposure(results, exposures)
    table = Table(title=f"4-shot greedy accuracy by exposure ({len(results):,} facts)")
    for column in ("exposures", "facts", "accuracy", "uncontested facts", "uncontested accuracy"):
        table.add_column(column, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for row in rows:
        table.add_row(row["bucket"], str(row["facts"]), fmt(row["accuracy"]), str(row["clean_facts"]), fmt(row["clean_accuracy"]))
    console.print(table)
    if out:
        atomic_write_json(out, {"rows": rows, "provenance": provenance(None, seed=seed, model_fingerprint=model_fingerprint(directory), world=loaded.name)})


@models_app.command("exposure-check")
def exposure_check_command(
    annotations: Path = typer.Option(..., help="A `knowtune annotate` output directory (annotations.jsonl)."),
    model: str = typer.Option("default", help="The knowtune-pretrained model that was audited (holds exposures.jsonl)."),
    out: Optional[Path] = typer.Option(None, help="Write the validation as JSON here."),
) -> None:
    """Validate a SliCK audit against pretraining exposure: Spearman rho of exposure vs P0 and category."""
    from knowtune.errors import DataError
    from knowtune.exposure import validate_against_exposure
    from knowtune.io import atomic_write_json
    from knowtune.models import model_dir_of
    from knowtune.pretrain import load_exposures

    path = annotations / "annotations.jsonl"
    if not path.is_file():
        raise DataError(path, "not found", fix="pass the --out directory of a finished `knowtune annotate` run")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        result = validate_against_exposure(records, load_exposures(model_dir_of(model)))
    except ValueError as error:
        raise DataError(path, str(error), fix="audit the world the model was pretrained on") from None
    console.print(f"{result['facts']:,} audited facts with ground truth")
    rho = lambda v: "undefined (constant input)" if v is None else f"{v:.3f}"  # noqa: E731
    console.print(f"Spearman rho(exposures, P0) = {rho(result['spearman_exposure_p0'])}; rho(exposures, category rank) = {rho(result['spearman_exposure_category'])}")
    seen = result["never_seen_not_unknown"]
    console.print(f"without the {result['inferable_facts']:,} facts whose answer is in the question: rho(exposures, P0) = "
                  f"{rho(result['spearman_exposure_p0_not_inferable'])}; rho(exposures, category rank) = {rho(result['spearman_exposure_category_not_inferable'])}")
    console.print("never-seen facts the audit did not call Unknown: " + "; ".join(
        f"{kind.replace('_', ' ')} {row['not_unknown']:,} of {row['facts']:,}" for kind, row in seen.items()))
    table = Table(title="exposures per pass by SliCK category")
    for column in ("category", "facts", "mean", "median"):
        table.add_column(column, justify="right")
    for category, row in result["per_category"].items():
        table.add_row(category, str(row["facts"]), "-" if row["mean_exposures"] is None else f"{row['mean_exposures']:.1f}", "-" if row["median_exposures"] is None else f"{row['median_exposures']:g}")
    console.print(table)
    console.print(f"category medians ordered HighlyKnown >= MaybeKnown >= WeaklyKnown >= Unknown: {result['category_medians_ordered']}")
    if out:
        atomic_write_json(out, result)
