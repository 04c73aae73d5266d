"""``knowtune evaluate``: closed-book QA exact match, per SliCK category and relation, with abstention metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console

console = Console()


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Option(..., "--model", help="Model dir (e.g. a train run's OUT/model), Hugging Face Hub id, or `default`."),
    data: str = typer.Option(..., "--data", help="Dataset: .jsonl/.json/.parquet, an EntityQuestions dir, or `embedded`."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate: test [default], dev or train."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="A `knowtune annotate` output dir: report per SliCK category."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json and predictions.jsonl here."),
    format: Optional[str] = typer.Option(None, "--format", help="finetuned [default]: the fine-tuning prompt; fewshot: SliCK's 4-shot Q:/A: prompt (base models)."),
    template: Optional[str] = typer.Option(None, "--template", help="Fine-tuning prompt template with {question} [\"Answer the following question. {question}\\n\"]."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Exemplars per few-shot prompt, from the dev split of --data [4]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the few-shot exemplar draw [0]."),
    idk_phrase: Optional[str] = typer.Option(None, "--idk-phrase", help="The abstention answer [\"I don't know\"]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Questions decoded together [64]."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length cap in tokens [24]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N examples of the split."),
) -> None:
    """Greedy answers, exact match overall, per category and per relation, answer rate and hallucination rate."""
    from knowtune.config import load_config
    from knowtune.data import load_examples
    from knowtune.errors import KnowtuneError
    from knowtune.evaluate import EvalConfig, evaluate_examples, load_categories, metadata_categories, write_eval_outputs
    from knowtune.models import fingerprint_of, load_model_and_tokenizer
    from knowtune.world.embedded import resolve_data_path

    prompt = {key: value for key, value in {"kind": format, "template": template, "shots": shots, "seed": seed}.items() if value is not None}
    overrides: dict[str, Any] = {"split": split, "prompt": prompt or None, "idk_phrase": idk_phrase, "batch_size": batch_size,
                                 "max_new_tokens": max_new_tokens, "limit": limit}
    config = load_config(EvalConfig, None, overrides)
    examples = load_examples(resolve_data_path(data))
    selected = [ex for ex in examples if ex.split == config.split][: config.limit]
    if not selected:
        raise KnowtuneError(f"{data}: no examples of the {config.split} split", fix="pick another --split, or check --data")
    categories = load_categories(annotations) if annotations is not None else metadata_categories(examples)
    pool = [ex for ex in examples if ex.split == "dev"]
    llm, tokenizer = load_model_and_tokenizer(model)
    fingerprint = fingerprint_of(model)
    result = evaluate_examples(llm, tokenizer, selected, categories=categories, idk_phrase=config.idk_phrase, batch_size=config.batch_size,
                               prompt_format=config.prompt, exemplar_pool=pool, max_new_tokens=config.max_new_tokens)
    console.print(_table(f"{config.split} split, {config.prompt.kind} prompt ({len(selected)} examples)", {"all": result.overall, **result.per_category}))
    console.print(_table("per relation", result.per_relation))
    if out is not None:
        write_eval_outputs(out, result, config, model=model, model_fingerprint=fingerprint, data=data)
        err_console.print(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}", highlight=False)


def _table(title: str, groups: dict) -> Table:
    table = Table(title=title)
    for column in ("group", "n", "exact match", "answer rate", "accuracy (answered)", "hallucination rate"):
        table.add_column(column, justify="left" if column == "group" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, g in groups.items():
        table.add_row(name, str(g.n), fmt(g.exact_match), fmt(g.answer_rate), fmt(g.accuracy_answered), fmt(g.hallucination_rate))
    return table
