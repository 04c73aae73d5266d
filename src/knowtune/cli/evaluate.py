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
    model: Optional[str] = typer.Option(None, "--model", help="Model dir (e.g. a train run's OUT/model), Hugging Face Hub id in the local cache, or `default` [default]."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset: .jsonl/.json/.parquet, an EntityQuestions dir, or `embedded`."),
    config: Optional[Path] = typer.Option(None, "--config", help="evaluate.yaml with any EvalConfig key; flags override it."),
    task: Optional[Path] = typer.Option(None, "--task", help="A task YAML (docs/task.md): prompts, tokenization, stop rule, matching."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate: test [default], dev or train."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="A `knowtune annotate` output dir: report per SliCK category."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, predictions.jsonl, config.yaml and task.yaml here."),
    format: Optional[str] = typer.Option(None, "--format", help="finetuned [default]: the fine-tuning prompt; fewshot: SliCK's 4-shot Q:/A: prompt (base models)."),
    template: Optional[str] = typer.Option(None, "--template", help="Fine-tuning prompt template with {question} [\"Answer the following question. {question}\\n\"]."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Exemplars per few-shot prompt, from the dev split of --data [4]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the few-shot exemplar draw [0]."),
    idk_phrase: Optional[str] = typer.Option(None, "--idk-phrase", help="The abstention answer [\"I don't know\"]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Questions decoded together [64]."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length cap in tokens [24]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N examples of the split."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default: CUDA when visible), cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
) -> None:
    """Greedy answers, exact match overall, per category and per relation, answer rate and hallucination rate."""
    from knowtune.config import load_config
    from knowtune.evaluate import EvalConfig

    prompt = {key: value for key, value in {"kind": format, "template": template, "shots": shots, "seed": seed}.items() if value is not None}
    overrides: dict[str, Any] = {
        "model": model, "data": data, "split": split, "annotations": str(annotations) if annotations else None, "out": str(out) if out else None,
        "task": str(task) if task else None, "idk_phrase": idk_phrase, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "limit": limit, "device": device, "dtype": dtype,
    }
    settings = load_config(EvalConfig, config, overrides)
    if prompt:  # nested keys: flags override the YAML's prompt block key by key
        settings = load_config(EvalConfig, None, {**settings.model_dump(exclude_unset=True), "prompt": {**settings.prompt.model_dump(exclude_unset=True), **prompt}})
    run_evaluate(settings)


def run_evaluate(config) -> None:
    """Load the model and data of ``config`` (an :class:`~knowtune.evaluate.EvalConfig`), evaluate, print, write outputs."""
    from knowtune.data import load_examples
    from knowtune.errors import KnowtuneError
    from knowtune.evaluate import evaluate_examples, load_categories, metadata_categories, write_eval_outputs
    from knowtune.models import fingerprint_of, load
    from knowtune.world.embedded import resolve_data_path

    if not config.data:
        raise KnowtuneError("no dataset given", fix="pass --data PATH (a .jsonl/.json/.parquet file, an EntityQuestions directory, or `embedded`), or data: in --config")
    task = config.task_spec()
    examples = load_examples(resolve_data_path(config.data))
    selected = [ex for ex in examples if ex.split == config.split][: config.limit]
    if not selected:
        raise KnowtuneError(f"{config.data}: no examples of the {config.split} split", fix="pick another --split, or check --data")
    categories = load_categories(config.annotations) if config.annotations is not None else metadata_categories(examples)
    pool = [ex for ex in examples if ex.split == task.fewshot.exemplars_from]
    llm, tokenizer = load(config.model, config.device, config.dtype)
    fingerprint = fingerprint_of(config.model)
    result = evaluate_examples(llm, tokenizer, selected, task=task, fewshot=config.prompt.kind == "fewshot", seed=config.prompt.seed,
                               exemplar_pool=pool, categories=categories, batch_size=config.batch_size)
    console.print(_table(f"{config.split} split, {config.prompt.kind} prompt ({len(selected)} examples)", {"all": result.overall, **result.per_category}))
    console.print(_table("per relation", result.per_relation))
    if config.out is not None:
        write_eval_outputs(config.out, result, config, model_fingerprint=fingerprint, task=task)
        out = Path(config.out)
        err_console.print(f"wrote {out / 'metrics.json'}, {out / 'predictions.jsonl'}, {out / 'config.yaml'} and {out / 'task.yaml'}", highlight=False)


def _table(title: str, groups: dict) -> Table:
    table = Table(title=title)
    for column in ("group", "n", "exact match", "answer rate", "accuracy (answered)", "hallucination rate"):
        table.add_column(column, justify="left" if column == "group" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, g in groups.items():
        table.add_row(name, str(g.n), fmt(g.exact_match), fmt(g.answer_rate), fmt(g.accuracy_answered), fmt(g.hallucination_rate))
    return table
