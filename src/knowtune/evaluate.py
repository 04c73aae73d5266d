"""Closed-book QA evaluation: exact match overall, per SliCK category and per relation,
plus the abstention metrics of "I don't know" fine-tuning.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904): a model answers each question greedily,
the answer is cut at the first newline and compared to the gold answers by exact match
(:func:`knowtune.matching.is_correct`). With answers relabelled as ``idk_phrase`` for
Unknown training examples (paper section 6, "I don't know" variant), accuracy is also
reported on the answered questions only. For a group of n questions:

    exact_match        = correct / n                  (an abstention counts as wrong)
    answer_rate        = answered / n                 (answered: normalised answer != normalised idk_phrase)
    accuracy_answered  = correct_and_answered / answered
    hallucination_rate = (answered - correct_and_answered) / answered = 1 - accuracy_answered

An empty generation is "answered" (it is not the abstention phrase) and wrong. Ratios over
an empty group are ``None``. The scoring (:func:`score_predictions`) is a pure function of
the predictions; :func:`evaluate_examples` adds the batched greedy generation.

Prompts, their encoding, the stop rule and the answer normalisation come from the task spec
(:mod:`knowtune.task`), the same object ``annotate`` and ``train`` use: ``finetuned``
renders the fine-tuning input ``Answer the following question. <question>\\n``; ``fewshot``
renders SliCK's 4-shot ``Q: ... / A: ...`` prompt for base models, exemplars drawn once per
relation from the dev split with ``seed``
(:func:`knowtune.slick.exemplars.draw_one_set_per_relation`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from knowtune.abstain import AbstainSettings, AnsweredRates
from knowtune.config import StageConfig
from knowtune.data.formats import DataFields
from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, DataError
from knowtune.matching import DEFAULT_MATCH, MATCH_VERSION, MatchConfig, StopRule, correct_many, normalize_answer
from knowtune.serving.config import ServedSettings
from knowtune.slick.categories import CATEGORIES, KNOWN
from knowtune.task import DEFAULT_IDK, DEFAULT_TASK, DEFAULT_TEMPLATE, TaskSpec, resolve_task

ANNOTATIONS_FILE = "annotations.jsonl"
#: Group name of HighlyKnown + MaybeKnown + WeaklyKnown in ``per_category``.
KNOWN_GROUP = "Known"
GROUPS: tuple[str, ...] = (*CATEGORIES, KNOWN_GROUP)


class PromptFormat(StageConfig):
    """Which prompt ``knowtune evaluate`` shows: the fine-tuning template or SliCK's few-shot prompt.

    ``template`` (the task's ``finetune.template``) must contain ``{question}`` (replaced
    literally, so other braces are text). ``shots`` (the task's ``fewshot.k``) and ``seed``
    apply to ``fewshot`` only: ``shots`` exemplars of the question's relation, drawn once per
    relation from the exemplar pool (the dev split).
    """

    kind: Literal["finetuned", "fewshot"] = "finetuned"
    """finetuned: the fine-tuning prompt; fewshot: SliCK's few-shot Q:/A: prompt (base models)."""
    template: str = DEFAULT_TEMPLATE
    """Fine-tuning prompt template; {question} is replaced by the question."""
    shots: int = Field(4, ge=0)
    """Exemplars per few-shot prompt, from the dev split of the data."""
    seed: int = 0
    """Seed of the few-shot exemplar draw."""

    @field_validator("template")
    @classmethod
    def _has_question_slot(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("the prompt template must contain {question}, e.g. 'Answer the following question. {question}\\n'")
        return value

    def task(self, base: TaskSpec = DEFAULT_TASK) -> TaskSpec:
        """``base`` with this format's template and shots."""
        return base.updated(prompt_template=self.template, k=self.shots)

    def render(self, question: str) -> str:
        """The fine-tuning prompt text of ``question`` (no chat template)."""
        return self.task().prompts(None).finetune(question)

    def prompts(self, examples: Sequence[QAExample], exemplar_pool: Sequence[QAExample] = ()) -> list[str]:
        """One prompt text per example (no chat template); ``fewshot`` needs ``exemplar_pool``."""
        return evaluation_prompts(None, examples, self.task(), fewshot=self.kind == "fewshot", seed=self.seed, exemplar_pool=exemplar_pool)


def evaluation_prompts(tokenizer, examples: Sequence[QAExample], task: TaskSpec, *, fewshot: bool = False, seed: int = 0,
                       exemplar_pool: Sequence[QAExample] = ()) -> list[str]:
    """One prompt per example: the task's fine-tuning prompt, or (``fewshot``) its k-shot prompt
    with exemplars of the same relation from ``exemplar_pool`` (one seeded draw per relation)."""
    if not fewshot:
        prompts = task.prompts(tokenizer)
        return [prompts.finetune(ex.question) for ex in examples]
    from knowtune.recall import few_shot_prompts
    from knowtune.slick.exemplars import draw_one_set_per_relation

    k = task.fewshot.k
    sets = draw_one_set_per_relation(list(exemplar_pool), k, seed)
    short = sorted({ex.relation for ex in examples if len(sets.get(ex.relation, [])) < k})
    if short:
        raise ConfigError(
            f"few-shot prompts need {k} exemplars per relation from the {task.fewshot.exemplars_from} split; too few for {', '.join(short)}",
            fix="add exemplar examples of these relations, lower shots, or use the finetuned prompt format",
        )
    return few_shot_prompts(tokenizer, list(examples), list(exemplar_pool), task=task, seed=seed)


@dataclass(frozen=True)
class Prediction:
    """One scored answer."""

    id: str
    relation: str
    question: str
    answers: tuple[str, ...]
    prediction: str
    correct: bool
    answered: bool
    category: str | None = None


@dataclass(frozen=True)
class GroupMetrics(AnsweredRates):
    """Counts and rates of a group of predictions (definitions in the module docstring)."""

    n: int
    correct: int
    answered: int
    correct_answered: int

    @property
    def exact_match(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def hallucination_rate(self) -> float | None:
        return (self.answered - self.correct_answered) / self.answered if self.answered else None

    def to_dict(self) -> dict[str, Any]:
        rates = {name: getattr(self, name) for name in ("exact_match", "answer_rate", "accuracy_answered", "hallucination_rate")}
        return {**asdict(self), **rates}

    @classmethod
    def of(cls, predictions: Sequence[Prediction]) -> "GroupMetrics":
        return cls(
            n=len(predictions),
            correct=sum(p.correct for p in predictions),
            answered=sum(p.answered for p in predictions),
            correct_answered=sum(p.correct and p.answered for p in predictions),
        )


@dataclass
class EvalResult:
    """Metrics overall, per category (the four SliCK categories and ``Known``, when
    categories were given; examples without a category are counted in ``uncategorized``),
    per relation, and the per-example predictions."""

    overall: GroupMetrics
    per_category: dict[str, GroupMetrics]
    per_relation: dict[str, GroupMetrics]
    predictions: list[Prediction] = field(repr=False)
    uncategorized: int = 0

    @property
    def exact_match(self) -> float | None:
        return self.overall.exact_match

    def to_dict(self, *, predictions: bool = False) -> dict[str, Any]:
        record: dict[str, Any] = {
            "overall": self.overall.to_dict(),
            "per_category": {name: group.to_dict() for name, group in self.per_category.items()},
            "per_relation": {name: group.to_dict() for name, group in self.per_relation.items()},
            "uncategorized": self.uncategorized,
        }
        if predictions:
            record["predictions"] = [asdict(p) for p in self.predictions]
        return record


def score_predictions(
    examples: Sequence[QAExample],
    predictions: Sequence[str],
    *,
    categories: Mapping[str, str] | None = None,
    idk_phrase: str = DEFAULT_IDK,
    match: MatchConfig = DEFAULT_MATCH,
    judge=None,
) -> EvalResult:
    """Score ``predictions`` (one extracted answer per example) against the gold answers, by
    ``match.method`` (``judge``: a :class:`knowtune.judge.Judge`; without one, an uncached judge is opened)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    idk = normalize_answer(idk_phrase, match)
    if judge is None and match.method == "judge":
        from knowtune.judge import open_judge

        judge = open_judge(match)
    verdicts = correct_many([(ex.question, ex.answers, text) for ex, text in zip(examples, predictions)], match, judge)
    scored = [
        Prediction(
            id=ex.id, relation=ex.relation, question=ex.question, answers=ex.answers, prediction=text,
            correct=correct, answered=normalize_answer(text, match) != idk,
            category=categories.get(ex.id) if categories is not None else None,
        )
        for ex, text, correct in zip(examples, predictions, verdicts)
    ]
    per_category: dict[str, GroupMetrics] = {}
    if categories is not None:
        unknown = sorted({p.category for p in scored if p.category is not None and p.category not in CATEGORIES})
        if unknown:
            raise ConfigError(f"unknown SliCK categories {unknown}", fix=f"categories must be one of {', '.join(CATEGORIES)}")
        for name in CATEGORIES:
            per_category[name] = GroupMetrics.of([p for p in scored if p.category == name])
        per_category[KNOWN_GROUP] = GroupMetrics.of([p for p in scored if p.category in KNOWN])
    relations = sorted({p.relation for p in scored})
    return EvalResult(
        overall=GroupMetrics.of(scored),
        per_category=per_category,
        per_relation={r: GroupMetrics.of([p for p in scored if p.relation == r]) for r in relations},
        predictions=scored,
        uncategorized=sum(p.category is None for p in scored) if categories is not None else 0,
    )


def evaluate_examples(
    model,
    tokenizer,
    examples: Sequence[QAExample],
    *,
    task: TaskSpec = DEFAULT_TASK,
    fewshot: bool = False,
    seed: int = 0,
    exemplar_pool: Sequence[QAExample] = (),
    categories: Mapping[str, str] | None = None,
    batch_size: int = 64,
    judge=None,
    contexts: Sequence[str] | None = None,
    sharded: bool = False,
) -> EvalResult | None:
    """Greedy answers to ``examples`` (batched, left-padded ``generate``), scored by exact match.

    Prompts, their token ids, the stop rule, the abstention phrase and the normalisation are
    those of ``task`` (:func:`evaluation_prompts`, :func:`knowtune.recall.greedy_answers`).
    The model is put in eval mode for the generation and returned to its previous mode.
    ``contexts`` (one text per example, e.g. :func:`knowtune.retrieval.retrieval_contexts`) go before the prompts.
    ``sharded``: the model is an FSDP one, whose forward pass needs every rank. Every rank calls
    this; each generates for its share (:func:`knowtune.train.distributed.shard`) in lockstep
    (``synced_gpus``), the answers are gathered, and the main process scores them (None on the others).
    """
    from knowtune.recall import greedy_answers
    from knowtune.train import distributed

    prompts = evaluation_prompts(tokenizer, examples, task, fewshot=fewshot, seed=seed, exemplar_pool=exemplar_pool)
    if contexts is not None:  # retrieval: passages, then the usual prompt
        prompts = [context + prompt for context, prompt in zip(contexts, prompts, strict=True)]
    if sharded:
        prompts = distributed.shard(prompts)
    was_training = model.training
    model.eval()
    try:
        answers = greedy_answers(model, tokenizer, prompts, task=task, batch_size=batch_size, synced=sharded) if prompts else []
    finally:
        model.train(was_training)
    if sharded:
        answers = distributed.gather_shards(answers, len(examples))
        if not distributed.is_main():
            return None
    return score_predictions(examples, answers, categories=categories, idk_phrase=task.finetune.idk_phrase, match=task.match, judge=judge)


def flat_metrics(prefix: str, result: EvalResult) -> dict[str, float | int | None]:
    """``{prefix}/exact_match``, ``/answer_rate``, ``/accuracy_answered``, ``/hallucination_rate``,
    ``/n``, and per group g of ``per_category``: ``{prefix}/exact_match/g``, ``/correct/g``, ``/n/g``."""
    overall = result.overall
    record: dict[str, float | int | None] = {
        f"{prefix}/n": overall.n,
        f"{prefix}/exact_match": overall.exact_match,
        f"{prefix}/answer_rate": overall.answer_rate,
        f"{prefix}/accuracy_answered": overall.accuracy_answered,
        f"{prefix}/hallucination_rate": overall.hallucination_rate,
    }
    for name, group in result.per_category.items():
        record[f"{prefix}/exact_match/{name}"] = group.exact_match
        record[f"{prefix}/correct/{name}"] = group.correct
        record[f"{prefix}/n/{name}"] = group.n
    return record


class EvalConfig(ServedSettings):
    """Settings of ``knowtune evaluate`` (YAML keys = CLI flags; saved as ``config.yaml`` and in ``metrics.json``).

    ``task`` names a task YAML file (:mod:`knowtune.task`); ``prompt.template``,
    ``prompt.shots``, ``idk_phrase``, ``max_new_tokens``, ``stop`` and ``match``, when set, override it.
    ``backend: openai`` and its fields (:class:`~knowtune.serving.config.ServedSettings`) take the
    greedy answers from OpenAI-compatible servers (:func:`knowtune.slick.served.served_greedy_answers`);
    ``model`` then names the served model's tokenizer only.
    """

    ADDED_DEFAULTS = {"retrieval_min_relevance": None}

    model: str = "default"
    """Model dir (e.g. a train run's OUT/model), Hugging Face Hub id, or default."""
    data: str | None = None
    """Dataset: any format of docs/data.md, or embedded."""
    data_fields: DataFields = Field(default_factory=DataFields)
    """Record keys of the data's fields when they differ from knowtune's (--question-field, --answer-field, ...)."""
    split: Literal["train", "dev", "test"] = "test"
    """Split to evaluate."""
    annotations: str | None = None
    """A `knowtune annotate` output dir: report per SliCK category."""
    out: str | None = None
    """Write metrics.json and predictions.jsonl here."""
    task: str | None = None
    """A task YAML (docs/task.md); prompt.template, prompt.shots, idk_phrase, max_new_tokens, stop and match set here override it."""
    prompt: PromptFormat = Field(default_factory=PromptFormat)
    """The prompt shown to the model."""
    idk_phrase: str = DEFAULT_IDK
    """The abstention answer."""
    batch_size: int = Field(64, ge=1)
    """Questions decoded together."""
    max_new_tokens: int = Field(24, ge=1)
    """Answer length cap in tokens."""
    stop: StopRule = "\n"
    """Text that ends an answer (repeat for several stop strings)."""
    match: MatchConfig = Field(default_factory=MatchConfig)
    """Answer matching: the normalisation and the method (--match exact|contains|f1|judge, docs/annotate.md)."""
    limit: int | None = Field(None, ge=1)
    """Evaluate only the first N examples of the split."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (CUDA when available), cpu or cuda."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16."""
    abstain: AbstainSettings = Field(default_factory=AbstainSettings)
    """Answer-time verification: --abstain agreement --samples N --threshold T (knowtune.abstain, docs/train.md)."""
    retrieval: str | None = None
    """A retrieval store (`knowtune curate --route-unknown retrieval`): its top passages go before each prompt (docs/train.md)."""
    retrieval_k: int = Field(2, ge=1)
    """Passages retrieved per question with --retrieval."""
    retrieval_min_relevance: float | None = Field(None, gt=0.0)
    """With --retrieval: leave out passages less relevant than this (BM25 score for the question over the score for the
    passage's own question, 1.0 for that question; knowtune.retrieval); a question with none left is asked closed book."""

    def task_spec(self) -> TaskSpec:
        """The evaluation's task: the ``task`` file (if any) with this config's prompt keys on top."""
        return resolve_task(self, EVAL_TASK_KEYS)


#: Task keys of :class:`EvalConfig` -> their field paths.
EVAL_TASK_KEYS = {"prompt_template": "prompt.template", "k": "prompt.shots", "idk_phrase": "idk_phrase", "max_new_tokens": "max_new_tokens",
                  "stop": "stop", "match": "match"}


def load_categories(path: str | Path) -> dict[str, str]:
    """Example id -> SliCK category from a ``knowtune annotate`` output: its directory or
    its ``annotations.jsonl`` (records with ``id`` and ``category``)."""
    path = Path(path)
    file = path / ANNOTATIONS_FILE if path.is_dir() else path
    fix = "pass the --out directory of a finished `knowtune annotate` run"
    if not file.is_file():
        raise DataError(file, "no such annotations file", fix=fix)
    categories: dict[str, str] = {}
    for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(file, f"not valid JSON: {error.msg}", line=line_no, fix=fix) from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or record.get("category") not in CATEGORIES:
            raise DataError(file, f"a record needs a string 'id' and a 'category' in {', '.join(CATEGORIES)}", line=line_no, fix=fix)
        categories[record["id"]] = record["category"]
    if not categories:
        raise DataError(file, "no annotations", fix=fix)
    return categories


def metadata_categories(examples: Sequence[QAExample]) -> dict[str, str] | None:
    """Categories that curated datasets carry in ``metadata["category"]``; None when no example has one."""
    found = {ex.id: ex.metadata["category"] for ex in examples if ex.metadata.get("category") in CATEGORIES}
    return found or None


def write_eval_outputs(out: str | Path, result: EvalResult, config: EvalConfig, *, model_fingerprint: str | None, task: TaskSpec,
                       extra: Mapping[str, Any] | None = None) -> None:
    """``metrics.json`` (metrics, ``extra`` blocks such as ``abstention``, config, provenance), ``predictions.jsonl``,
    ``config.yaml`` and ``task.yaml`` (:func:`knowtune.task.save_task`), each written atomically."""
    from knowtune.config import save_config
    from knowtune.io import atomic_write_json, atomic_write_jsonl
    from knowtune.provenance import provenance
    from knowtune.task import save_task

    out = Path(out)
    atomic_write_jsonl(out / "predictions.jsonl", [asdict(p) for p in result.predictions])
    save_config(config, out / "config.yaml")
    save_task(task, out)
    record = {**result.to_dict(), **(extra or {})}
    record["provenance"] = provenance(config.model_dump(mode="json"), seed=config.prompt.seed, model_fingerprint=model_fingerprint,
                                      model=config.model, data=config.data, match_version=MATCH_VERSION, task_hash=task.hash())
    atomic_write_json(out / "metrics.json", record)
