"""``knowtune train``: fine-tune a model on QA data (SFT or self-distillation), evaluating every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console
from knowtune.cli.options import with_config_flags
from knowtune.data.schema import QAExample
from knowtune.data.splits import Splits, load_splits
from knowtune.errors import KnowtuneError
from knowtune.train.config import TrainConfig

console = Console()


@app.command("train")
@with_config_flags(TrainConfig, aliases={"learning_rate": ["--lr"]})
def train_command(
    data: str = typer.Option(..., "--data", help="Training data (its train split); dev/test come from its other splits unless --dev/--test are given. `embedded` = the embedded world."),
    out: Path = typer.Option(..., "--out", help="Output dir: model/, metrics.jsonl, config.yaml, provenance.json; rerunning resumes."),
    model: str = typer.Option("default", "--model", help="Base model: a directory, a Hugging Face Hub id, or `default`."),
    config: Optional[Path] = typer.Option(None, "--config", help="train.yaml with any TrainConfig key; flags override it."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="A `knowtune annotate` output dir (annotations.jsonl): SliCK categories per example."),
    dev: Optional[str] = typer.Option(None, "--dev", help="Dev examples (split dev of this dataset) for early stopping and the best epoch."),
    test: Optional[str] = typer.Option(None, "--test", help="Test examples (split test of this dataset)."),
    ood: Optional[str] = typer.Option(None, "--ood", help="OOD test examples; default: the test examples of relations absent from the training data."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from the last checkpoint in --out; --no-resume starts over."),
    reaudit: bool = typer.Option(False, "--reaudit", help="At the end, audit the fine-tuned model (and OUT/best) as --annotations was audited; write OUT/shift.json (knowledge shift)."),
    question_field: Optional[str] = typer.Option(None, "--question-field", help="Record key holding the question [question]."),
    answer_field: Optional[str] = typer.Option(None, "--answer-field", help="Record key holding the gold answer(s) [answers, or answer]."),
    relation_field: Optional[str] = typer.Option(None, "--relation-field", help="Record key holding the relation [relation]."),
    split_field: Optional[str] = typer.Option(None, "--split-field", help="Record key holding the split [split]."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Record key holding the example id [id]."),
    allow_other_model_audit: bool = typer.Option(False, "--allow-other-model-audit", help="Use categories audited with another model than --model (refused by default)."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Fine-tune a model on closed-book QA and track what it learns and forgets: see docs/train.md.

    Every TrainConfig key is a flag (nested keys joined by -: --selfdistill-teacher, --lora-r); flags override --config.
    """
    from knowtune.config import load_config
    from knowtune.io import command_name
    from knowtune.train import distributed
    from knowtune.train.sft import train_model
    from knowtune.validate import preflight_train

    settings = load_config(TrainConfig, config, overrides, flags)
    from knowtune.data.formats import DataFields

    fields = DataFields(question=question_field, answer=answer_field, relation=relation_field, split=split_field, id=id_field)
    splits = load_training_data(data, dev=dev, test=test, ood=ood, fields=fields)
    preflight_train(settings, model=model, out=out, data=data, examples=list(splits.all), annotations=annotations,
                    allow_other_audit=allow_other_model_audit, log=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    categories = _categories(annotations, list(splits.all))
    if reaudit and (annotations is None or not (annotations / "config.yaml").is_file()):
        raise KnowtuneError("--reaudit repeats the audit of --annotations on the fine-tuned model, but there is no such audit",
                            fix="pass --annotations DIR, the --out directory of the `knowtune annotate` run of the base model")
    if distributed.is_main():
        err_console.print(f"train: {splits.describe()}; categories: {'yes' if categories else 'none'}", highlight=False)
    with distributed.output_lock(out, command_name(), device=settings.device):  # held by the main process for all ranks
        result = train_model(settings, model, splits, categories, out,
                             resume=resume, log=lambda line: err_console.print(line, highlight=False, soft_wrap=True), console=err_console)
        if reaudit and distributed.is_main():
            _reaudit(out, annotations, splits)
    if distributed.is_main():
        console.print(_summary_table(result))
        typer.echo(str(result.model_dir))


def _reaudit(out: Path, annotations: Path, splits: Splits) -> None:
    """``--reaudit``: audit the fine-tuned models as ``annotations`` was audited; write and summarise the shift (:func:`knowtune.shift.reaudit`)."""
    from knowtune.shift import reaudit

    shifts = reaudit(out, annotations, {e.id for e in splits.train}, log=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    for stage, shift in shifts.items():
        block = shift["overall"]
        err_console.print(f"reaudit {stage}: {block['lost']} lost, {block['learned']} learned of {block['examples']} examples "
                          f"({out / ('shift.json' if stage == 'conv' else 'shift_es.json')})", highlight=False)


def load_training_data(data: str, *, dev: str | None = None, test: str | None = None, ood: str | None = None, fields=None) -> Splits:
    """The run's splits of ``data`` (:func:`knowtune.data.splits.load_splits`); an error when it has no training example."""
    splits = load_splits(data, dev=dev, test=test, ood=ood, fields=fields)
    if not splits.train:
        raise KnowtuneError(f"{data}: no examples of the train split", fix="pass a dataset whose records have split train (or no split field) to --data")
    return splits


def _categories(annotations: Path | None, examples: list[QAExample]) -> dict[str, str] | None:
    from knowtune.evaluate import load_categories, metadata_categories

    return load_categories(annotations) if annotations is not None else metadata_categories(examples)


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
