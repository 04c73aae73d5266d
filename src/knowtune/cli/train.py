"""``knowtune train``: fine-tune a model on QA data (SFT or self-distillation), evaluating every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console
from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, KnowtuneError

console = Console()


@app.command("train")
def train_command(
    data: str = typer.Option(..., "--data", help="Training data (its train split); dev/test come from its other splits unless --dev/--test are given. `embedded` = the embedded world."),
    out: Path = typer.Option(..., "--out", help="Output dir: model/, metrics.jsonl, config.yaml, provenance.json; rerunning resumes."),
    model: str = typer.Option("default", "--model", help="Base model: a directory, a Hugging Face Hub id, or `default`."),
    config: Optional[Path] = typer.Option(None, "--config", help="train.yaml with any TrainConfig key; flags override it."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="A `knowtune annotate` output dir (annotations.jsonl): SliCK categories per example."),
    dev: Optional[str] = typer.Option(None, "--dev", help="Dev examples (split dev of this dataset) for early stopping and the best epoch."),
    test: Optional[str] = typer.Option(None, "--test", help="Test examples (split test of this dataset)."),
    ood: Optional[str] = typer.Option(None, "--ood", help="OOD test examples; default: the test examples of relations absent from the training data."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs [30]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate [3e-4]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per device step [16]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of initialisation, data order and evaluation subsets [0]."),
    method: Optional[str] = typer.Option(None, "--method", help="sft [default] or selfdistill."),
    lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters (settings from the config's lora: block, else defaults)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank (implies --lora)."),
    train_only: Optional[list[str]] = typer.Option(None, "--train-only", help="Train only parameters matching this preset (attention, mlp, embeddings, lm_head, norms) or regex; repeatable."),
    early_stopping_patience: Optional[int] = typer.Option(None, "--early-stopping-patience", help="Stop after this many epochs without a better dev exact match."),
    save_every_epoch: Optional[bool] = typer.Option(None, "--save-every-epoch/--no-save-every-epoch", help="Keep a checkpoint of every epoch."),
    save_best: Optional[bool] = typer.Option(None, "--save-best/--no-save-best", help="Keep the best-dev model in OUT/best."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from the last checkpoint in --out [on]; --no-resume starts over."),
    report_to: Optional[list[str]] = typer.Option(None, "--report-to", help="Trainer reporters, e.g. tensorboard; repeatable."),
    max_eval_examples: Optional[int] = typer.Option(None, "--max-eval-examples", help="Cap of each per-epoch evaluation set [1000]."),
    drift: Optional[bool] = typer.Option(None, "--drift/--no-drift", help="Track the representation drift of held-out entities every epoch (settings from the config's drift: block, else defaults)."),
    drift_layer: Optional[int] = typer.Option(None, "--drift-layer", help="hidden_states index for the drift: 0 = embeddings, -1 = last layer [-1] (implies --drift)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda."),
) -> None:
    """Fine-tune a model on closed-book QA and track what it learns and forgets: see docs/train.md."""
    from knowtune.config import load_config
    from knowtune.train.config import TrainConfig
    from knowtune.train.sft import train_model

    overrides: dict[str, Any] = {
        "epochs": epochs, "learning_rate": lr, "batch_size": batch_size, "seed": seed, "method": method, "train_only": train_only or None,
        "early_stopping_patience": early_stopping_patience, "save_every_epoch": save_every_epoch, "save_best": save_best,
        "report_to": report_to or None, "max_eval_examples": max_eval_examples, "device": device,
    }
    settings = load_config(TrainConfig, config, overrides)
    settings = _with_lora(settings, lora, lora_r)
    settings = _with_drift(settings, drift, drift_layer)
    splits = load_training_data(data, dev=dev, test=test, ood=ood)
    categories = _categories(annotations, [example for split in splits.values() for example in split])
    err_console.print(f"train: {len(splits['train'])} train, {len(splits['dev'])} dev, {len(splits['test'])} test, "
                      f"{len(splits['ood'])} OOD examples; categories: {'yes' if categories else 'none'}", highlight=False)
    result = train_model(settings, model, splits["train"], splits["dev"], splits["test"], splits["ood"], categories, out,
                         resume=resume, log=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    console.print(_summary_table(result))
    typer.echo(str(result.model_dir))


def load_training_data(data: str, *, dev: str | None = None, test: str | None = None, ood: str | None = None) -> dict[str, list[QAExample]]:
    """Train, dev, test and OOD examples; the test examples of relations without training data
    are the OOD set unless ``ood`` names one."""
    from knowtune.data import load_examples
    from knowtune.world.embedded import resolve_data_path

    examples = load_examples(resolve_data_path(data))
    train = [ex for ex in examples if ex.split == "train"]
    if not train:
        raise KnowtuneError(f"{data}: no examples of the train split", fix="pass a dataset whose records have split train (or no split field) to --data")
    splits = {
        "train": train,
        "dev": load_examples(resolve_data_path(dev), split="dev") if dev else [ex for ex in examples if ex.split == "dev"],
        "test": load_examples(resolve_data_path(test), split="test") if test else [ex for ex in examples if ex.split == "test"],
    }
    if ood:
        splits["ood"] = load_examples(resolve_data_path(ood), split="test")
    else:
        relations = {ex.relation for ex in train}
        splits["ood"] = [ex for ex in splits["test"] if ex.relation not in relations]
        splits["test"] = [ex for ex in splits["test"] if ex.relation in relations]
    return splits


def _categories(annotations: Path | None, examples: list[QAExample]) -> dict[str, str] | None:
    from knowtune.evaluate import load_categories, metadata_categories

    return load_categories(annotations) if annotations is not None else metadata_categories(examples)


def _with_block(settings, block: str, cls, enabled: bool | None, field: str, value, *, fix: str):
    """Apply ``--<block>/--no-<block>`` and ``--<block>-<field>`` (which implies the block) on top of
    the config's ``block`` mapping, validated with ``cls``."""
    from pydantic import ValidationError

    flag = f"--{block}-{field.replace('_', '-')}"
    if enabled is False:
        if value is not None:
            raise ConfigError(f"--no-{block} and {flag} contradict each other", fix="drop one of them")
        return settings.model_copy(update={block: None})
    if not enabled and value is None:
        return settings
    current = getattr(settings, block)
    values = current.model_dump() if current is not None else {}
    if value is not None:
        values[field] = value
    try:
        return settings.model_copy(update={block: cls.model_validate(values)})
    except ValidationError as error:
        raise ConfigError(f"{flag}: {error.errors()[0]['msg']} (got {value})", fix=fix) from None


def _with_lora(settings, lora: bool | None, lora_r: int | None):
    """Apply --lora/--no-lora and --lora-r on top of the config's ``lora`` block."""
    from knowtune.train.config import LoraSettings

    return _with_block(settings, "lora", LoraSettings, lora, "r", lora_r, fix="pass a rank >= 1")


def _with_drift(settings, drift: bool | None, drift_layer: int | None):
    """Apply --drift/--no-drift and --drift-layer on top of the config's ``drift`` block."""
    from knowtune.train.config import DriftSettings

    return _with_block(settings, "drift", DriftSettings, drift, "layer", drift_layer, fix="pass a hidden_states index, e.g. -1")


def _summary_table(result) -> Table:
    table = Table(title=f"fine-tuning metrics ({result.out_dir / 'metrics.jsonl'})")
    columns = [("train/exact_match", "train fit"), ("dev/exact_match", "dev EM"), ("test/exact_match", "test EM"),
               ("test/exact_match/Known", "test Known EM"), ("test/exact_match/Unknown", "test Unknown EM"),
               ("ood/exact_match", "OOD EM"), ("test/answer_rate", "test answered")]
    present = [(key, label) for key, label in columns if any(record.get(key) is not None for record in result.metrics)]
    table.add_column("epoch", no_wrap=True)
    for _, label in present:
        table.add_column(label, justify="right")
    rows = [("0 (base)", 0)]
    if result.best_epoch is not None:
        rows.append((f"{result.best_epoch} (best dev)", result.best_epoch))
    rows.append((f"{result.epochs_run} (last)", result.epochs_run))
    for name, epoch in rows:
        record = result.at_epoch(epoch)
        table.add_row(name, *("-" if record.get(key) is None else f"{record[key]:.3f}" for key, _ in present))
    return table
