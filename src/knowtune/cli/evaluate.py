"""``knowtune evaluate``: closed-book QA exact match, per SliCK category and relation, with abstention metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app, err_console
from knowtune.cli.options import with_config_flags
from knowtune.data.formats import FIELD_FLAG_ALIASES
from knowtune.matching import MATCH_FLAG_ALIASES
from knowtune.evaluate import EvalConfig

console = Console(markup=False)


@app.command("evaluate")
@with_config_flags(EvalConfig, aliases={"prompt.kind": ["--format"], "prompt.template": ["--template"], "prompt.shots": ["--shots"],
                                        "prompt.seed": ["--seed"], **FIELD_FLAG_ALIASES, **MATCH_FLAG_ALIASES,
                                        "abstain.method": ["--abstain"], "abstain.samples": ["--samples"], "abstain.threshold": ["--threshold"]})
def evaluate_command(
    config: Optional[Path] = typer.Option(None, "--config", help="evaluate.yaml with any EvalConfig key; flags override it."),
    allow_other_model_audit: bool = typer.Option(False, "--allow-other-model-audit", help="Use --annotations made with another model than --model or its base (refused by default)."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Greedy answers, exact match overall, per category and per relation, answer rate and hallucination rate.

    Every EvalConfig key is a flag (prompt keys as --prompt-kind or --format, --template, --shots, --seed); flags override --config.
    """
    from contextlib import nullcontext

    from knowtune.config import load_config
    from knowtune.io import OutputLock, command_name

    from knowtune.validate import preflight_evaluate

    settings = load_config(EvalConfig, config, overrides, flags)
    preflight_evaluate(settings, allow_other_audit=allow_other_model_audit, log=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    with OutputLock(settings.out, command_name()) if settings.out is not None else nullcontext():
        run_evaluate(settings)


def run_evaluate(config) -> None:
    """Load the model and data of ``config`` (an :class:`~knowtune.evaluate.EvalConfig`), evaluate, print, write outputs."""
    from knowtune.data import load_examples
    from knowtune.errors import KnowtuneError
    from knowtune.evaluate import evaluate_examples, load_categories, metadata_categories, write_eval_outputs
    from knowtune.judge import open_judge
    from knowtune.matching import long_answer_warning
    from knowtune.models import fingerprint_of, load
    from knowtune.world.embedded import resolve_data_path

    if not config.data:
        raise KnowtuneError("no dataset given", fix="pass --data PATH (a .jsonl/.json/.parquet file, an EntityQuestions directory, or `embedded`), or data: in --config")
    config.check_served()
    if config.abstain.method != "none" and config.served():
        raise KnowtuneError("--abstain agreement samples answers in-process", fix="leave out --backend openai, or drop --abstain")
    if config.retrieval_min_relevance is not None and config.retrieval is None:
        raise KnowtuneError("--retrieval-min-relevance gates the passages of --retrieval, which is not set", fix="add --retrieval STORE, or drop --retrieval-min-relevance")
    if config.abstain.method != "none" and config.retrieval is not None:
        raise KnowtuneError("--abstain agreement samples answers without the retrieved passages", fix="drop --abstain or --retrieval")
    task = config.task_spec()
    examples = load_examples(resolve_data_path(config.data), fields=config.data_fields)
    selected = [ex for ex in examples if ex.split == config.split][: config.limit]
    if not selected:
        raise KnowtuneError(f"{config.data}: no examples of the {config.split} split", fix="pick another --split, or check --data")
    categories = load_categories(config.annotations) if config.annotations is not None else metadata_categories(examples)
    pool = [ex for ex in examples if ex.split == task.fewshot.exemplars_from]
    judge = open_judge(task.match, Path(config.out) / "judge.sqlite" if config.out is not None else None)  # --match judge: cached verdicts
    contexts, retrieval = None, None
    if config.retrieval is not None:  # knowtune.retrieval: the top passages before each prompt
        from knowtune.retrieval import evaluation_contexts

        contexts, retrieval = evaluation_contexts(config.retrieval, selected, config.retrieval_k, task, config.retrieval_min_relevance)
    if config.served():
        result, fingerprint = _evaluate_served(config, selected, task, pool, categories, judge, contexts)
    else:
        llm, tokenizer = load(config.model, config.device, config.dtype)
        fingerprint = fingerprint_of(config.model)
        if warning := long_answer_warning(tokenizer, selected, task.generation.max_new_tokens):
            err_console.print(warning, highlight=False, soft_wrap=True)
        result = evaluate_examples(llm, tokenizer, selected, task=task, fewshot=config.prompt.kind == "fewshot", seed=config.prompt.seed,
                                   exemplar_pool=pool, categories=categories, batch_size=config.batch_size, judge=judge, contexts=contexts)
    abstention = None
    if config.abstain.method == "agreement":  # knowtune.abstain: answer only when sampled answers agree
        from knowtune.abstain import agreement_abstention

        abstention = agreement_abstention(llm, tokenizer, selected, result, config.abstain, task=task, fewshot=config.prompt.kind == "fewshot",
                                          seed=config.prompt.seed, exemplar_pool=pool, batch_size=config.batch_size)
    console.print(_table(f"{config.split} split, {config.prompt.kind} prompt ({len(selected)} examples)", {"all": result.overall, **result.per_category}))
    console.print(_table("per relation", result.per_relation))
    for line in abstention.lines() if abstention is not None else []:
        console.print(line, highlight=False, soft_wrap=True)
    if config.out is not None:
        write_eval_outputs(config.out, result, config, model_fingerprint=fingerprint, task=task,
                           extra={**({"abstention": abstention.to_dict()} if abstention is not None else {}), **({"retrieval": retrieval} if retrieval else {})})
        if abstention is not None:
            abstention.write(Path(config.out), result.predictions)
        out = Path(config.out)
        err_console.print(f"wrote {out / 'metrics.json'}, {out / 'predictions.jsonl'}, {out / 'config.yaml'} and {out / 'task.yaml'}", highlight=False)


def _evaluate_served(config, selected, task, pool, categories, judge=None, contexts=None):
    """``evaluate_examples`` with the greedy answers from the servers of ``config`` (``--backend openai``):
    the same prompts and token ids (``--model`` names the tokenizer), checked against the servers' tokenizer.
    Returns the result and the served fingerprint (the servers' model name and the tokenizer's hash)."""
    from knowtune.evaluate import evaluation_prompts, score_predictions
    from knowtune.models import resolve_model_dir
    from knowtune.slick.served import ServedAudit, load_tokenizer, served_greedy_answers

    model_dir = resolve_model_dir(config.model)
    audit = ServedAudit.connect(config, model_dir, log=lambda line: err_console.print(line, highlight=False))
    tokenizer = load_tokenizer(model_dir)
    prompts = evaluation_prompts(tokenizer, selected, task, fewshot=config.prompt.kind == "fewshot", seed=config.prompt.seed, exemplar_pool=pool)
    prompts = [context + prompt for context, prompt in zip(contexts, prompts)] if contexts is not None else prompts
    answers = served_greedy_answers(audit, tokenizer, prompts, task=task)
    result = score_predictions(selected, answers, categories=categories, idk_phrase=task.finetune.idk_phrase, match=task.match, judge=judge)
    return result, audit.fingerprint


def _table(title: str, groups: dict) -> Table:
    table = Table(title=title)
    for column in ("group", "n", "exact match", "answer rate", "accuracy (answered)", "hallucination rate"):
        table.add_column(column, justify="left" if column == "group" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, g in groups.items():
        table.add_row(name, str(g.n), fmt(g.exact_match), fmt(g.answer_rate), fmt(g.accuracy_answered), fmt(g.hallucination_rate))
    return table
