"""Retrieval instead of fine-tuning on Unknown facts: the study's route comparison (issue 12).

Gekhman et al. (EMNLP 2024) show that fine-tuning on Unknown facts is slow and teaches a model
to hallucinate; the practical alternative is to fine-tune on what the model knows and hand it
the Unknown facts at answer time. On the ``compare_methods`` mixture D_X the study compares:

================= ============================================= ================================
route             model                                         prompt
================= ============================================= ================================
sft               SFT on all of D_X (the ``sft`` run), CONV     closed book
sft_es            the same run at EARLY_STOP (best dev epoch)   closed book
known_retrieval   SFT on D_Known_X (the ``filtered`` run), CONV the top-k passages, then the fine-tuning prompt
known_passages    SFT on D_Known_X *with* passages, CONV        the top-k passages, then the fine-tuning prompt
retrieval         the base model                                the top-k passages, then the audit's few-shot prompt
================= ============================================= ================================

``known_passages`` runs with ``finetune_with_passages: true`` only: fine-tuning without passages teaches a
model that reads to stop reading (docs/train.md, "Fine-tuning with passages"), so this route trains D_Known_X
as ``knowtune train --retrieval`` does, every training question with its top-k passages from a store of all
of D_X's facts (``OUT/retrieval/passages-store``; RAFT's ``oracle_share``, Zhang et al. 2024, optional), with
the ``filtered`` run's settings, into ``OUT/retrieval/runs/known_passages`` (it resumes by itself).

The passages come from a BM25 store of D_X's Unknown facts, built as ``knowtune curate
--route-unknown retrieval`` builds it (into ``OUT/retrieval/variants/D_X/retrieval``), and are
put before every question, as ``knowtune evaluate --retrieval`` does (docs/train.md).

Measures, in percent, each on the same questions for every route:

* ``unknown``: exact match on D_X's Unknown facts (the questions SFT trained on; for the SFT rows
  their fitted share, ``train/exact_match/Unknown``); ``unknown_closed_book``: the same without passages;
* ``held_out``: exact match on the test facts of category ``held_out`` (never trained on);
  ``forgetting`` = 100 - held_out, as in the method comparison (the base model answers every
  HighlyKnown fact few-shot by definition);
* ``test``: exact match on the in-distribution test facts the training runs evaluate (the same
  seeded sample); ``answer_rate``: answers that are not the abstention phrase, on those facts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from knowtune.config import StageConfig
from knowtune.data.schema import QAExample
from knowtune.errors import KnowtuneError
from knowtune.study.analysis import pct, select_epochs

if TYPE_CHECKING:
    from knowtune.retrieval import RetrievalStore
    from knowtune.study.pipeline import Study
    from knowtune.task import TaskSpec

STAGE = "retrieval"
ROUTE_FILE = Path("retrieval") / "comparison.json"
STORE_VARIANTS = Path("retrieval") / "variants"
PASSAGES_STORE = Path("retrieval") / "passages-store"
PASSAGES_RUN = Path("retrieval") / "runs" / "known_passages"
ROUTES = ("sft", "sft_es", "known_retrieval", "known_passages", "retrieval")
RETRIEVAL_ROUTES = ("known_retrieval", "known_passages", "retrieval")
LABELS = {"sft": "SFT on everything", "sft_es": "SFT on everything, EARLY_STOP", "known_retrieval": "SFT on Known + retrieval",
          "known_passages": "SFT on Known with passages + retrieval", "retrieval": "retrieval alone (base model)"}


class RetrievalRouteConfig(StageConfig):
    """The ``retrieval_route:`` section of a study config (docs/study.md, "Retrieval instead of fine-tuning")."""

    ADDED_DEFAULTS = {"finetune_with_passages": False, "oracle_share": None, "min_relevance": None}

    k: int = Field(2, ge=1)
    """Passages retrieved per question."""
    base_shots: int | None = Field(None, ge=0)
    """Exemplars in the base model's few-shot prompt (retrieval alone); default: the audit's k."""
    min_relevance: float | None = Field(None, gt=0.0)
    """Passages less relevant than this are left out (``knowtune evaluate --retrieval-min-relevance``); unset: the top k always."""
    finetune_with_passages: bool = False
    """Also train D_Known_X with every question's top-k passages in its prompt (route ``known_passages``, docs/study.md)."""
    oracle_share: float | None = Field(None, ge=0.0, le=1.0)
    """With ``finetune_with_passages``: the share of training questions that keep their own passage
    (``knowtune train --retrieval-oracle-share``); unset: all of them."""

    @model_validator(mode="after")
    def _oracle_share_needs_passages(self) -> "RetrievalRouteConfig":
        if self.oracle_share is not None and not self.finetune_with_passages:
            raise ValueError("retrieval_route.oracle_share applies to the run with passages: set finetune_with_passages: true, or drop oracle_share")
        return self


@dataclass(frozen=True)
class RouteSetup:
    """What every route is measured on: the store, the Unknown facts, the test facts and the prompts."""

    store: RetrievalStore
    unknown: tuple[QAExample, ...]
    test: tuple[QAExample, ...]
    categories: Mapping[str, str]
    train_task: TaskSpec
    base_task: TaskSpec
    exemplar_pool: tuple[QAExample, ...]
    k: int = 2
    min_relevance: float | None = None
    held_out: str = "HighlyKnown"
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"


def _row(route: str, *, unknown: float | None, closed: float | None, held: float | None, test: float | None,
         answer_rate: float | None, epoch: int | None = None) -> dict[str, Any]:
    """One route's measures (rates in [0, 1] in, percent out)."""
    return {"route": route, "label": LABELS[route], "epoch": epoch, "retrieval": route in RETRIEVAL_ROUTES,
            "unknown": pct(unknown), "unknown_closed_book": pct(closed), "held_out": pct(held),
            "forgetting": None if held is None else 100.0 - 100.0 * held, "test": pct(test), "answer_rate": pct(answer_rate)}


def sft_row(record: Mapping[str, Any], route: str, held_out: str = "HighlyKnown") -> dict[str, Any]:
    """The SFT run's measures at one evaluation record (its own closed-book evaluation of the same questions)."""
    fitted = record.get("train/exact_match/Unknown")
    return _row(route, unknown=fitted, closed=fitted, held=record.get(f"test/exact_match/{held_out}"),
                test=record.get("test/exact_match"), answer_rate=record.get("test/answer_rate"), epoch=record["epoch"])


def passage_recall(store: RetrievalStore, facts: Sequence[QAExample], k: int, min_relevance: float | None = None) -> float | None:
    """Percent of ``facts`` whose own passage is among the top ``k`` retrieved for its question (past the relevance gate)."""
    if not facts:
        return None
    found = store.search([f.question for f in facts], k, min_relevance)
    return 100.0 * sum(fact.id in {p.id for p in hits} for fact, hits in zip(facts, found)) / len(facts)


def _measure_model(setup: RouteSetup, model_spec: str | Path, route: str, contexts: Mapping[str, list[str]]) -> dict[str, Any]:
    """A model answering with the passages: Unknown facts (also closed book) and the test facts."""
    from knowtune.evaluate import evaluate_examples
    from knowtune.models import load

    base = route == "retrieval"
    model, tokenizer = load(model_spec, setup.device)
    options = {"task": setup.base_task if base else setup.train_task, "fewshot": base, "seed": setup.seed,
               "exemplar_pool": setup.exemplar_pool, "categories": setup.categories, "batch_size": setup.batch_size}
    closed = evaluate_examples(model, tokenizer, setup.unknown, **options)
    opened = evaluate_examples(model, tokenizer, setup.unknown, contexts=contexts["unknown"], **options)
    tested = evaluate_examples(model, tokenizer, setup.test, contexts=contexts["test"], **options)
    held = tested.per_category.get(setup.held_out)
    row = _row(route, unknown=opened.overall.exact_match, closed=closed.overall.exact_match, held=held.exact_match if held else None,
               test=tested.overall.exact_match, answer_rate=tested.overall.answer_rate)
    row["examples"] = [{"question": p.question, "answers": list(p.answers), "passages": contexts["unknown"][i], "prediction": p.prediction}
                       for i, p in enumerate(opened.predictions[:3])]
    return row


def measure_route(setup: RouteSetup, sft_metrics: Sequence[Mapping[str, Any]], known_model: str | Path, base_model: str | Path,
                  passages_model: str | Path | None = None) -> dict[str, Any]:
    """Every route's measures (module docstring): the SFT rows from the ``sft`` run's records at EARLY_STOP
    and CONVERGENCE, the others by answering with the store's top ``k`` passages before each prompt
    (``known_passages`` when ``passages_model``, the run trained with passages, is given)."""
    from knowtune.retrieval import closed_book_count, retrieval_contexts

    for task in (setup.train_task, setup.base_task):
        retrieval_contexts(setup.store, [], setup.k, task)  # refuses a chat-template task before any model loads
    contexts = {"unknown": retrieval_contexts(setup.store, setup.unknown, setup.k, min_relevance=setup.min_relevance),
                "test": retrieval_contexts(setup.store, setup.test, setup.k, min_relevance=setup.min_relevance)}
    es, conv = select_epochs(sft_metrics)
    by_epoch = {r["epoch"]: r for r in sft_metrics}
    rows = [sft_row(by_epoch[conv], "sft", setup.held_out)]
    if es is not None:
        rows.append(sft_row(by_epoch[es], "sft_es", setup.held_out))
    rows.append(_measure_model(setup, known_model, "known_retrieval", contexts))
    if passages_model is not None:
        rows.append(_measure_model(setup, passages_model, "known_passages", contexts))
    rows.append(_measure_model(setup, base_model, "retrieval", contexts))
    gated = {} if setup.min_relevance is None else {
        "min_relevance": setup.min_relevance, "unknown_closed_book_questions": closed_book_count(contexts["unknown"]),
        "test_closed_book_questions": closed_book_count(contexts["test"])}
    return {"k": setup.k, "passages": len(setup.store.passages), "unknown_facts": len(setup.unknown), "test_questions": len(setup.test),
            "held_out": setup.held_out, "passage_recall": passage_recall(setup.store, setup.unknown, setup.k, setup.min_relevance), **gated, "rows": rows}


def route_store(study: Study) -> tuple[Path, list[QAExample]]:
    """Curate the mixture D_X again with ``route_unknown: retrieval`` (same audit, size and seed; passages from
    the world's statement templates when the study's data is a knowtune world): the store's directory and the
    routed Unknown facts, checked to be exactly D_X's."""
    from knowtune.curate import run_curate
    from knowtune.data import load_examples

    name = f"D_{study.config.compare_methods.mixture}"
    base = study.config.curate_config(study.out, study.data_path)
    config = base.model_copy(update={"variants": ["ratio"], "unknown_ratios": [study.config.compare_methods.mixture],
                                     "route_unknown": "retrieval", "data": str(study.config.data), "out": str(study.out / STORE_VARIANTS)})
    entry = next(e for e in run_curate(config)["variants"] if e["name"] == name)
    store_dir = study.out / STORE_VARIANTS / entry["retrieval"]
    routed = load_examples(store_dir / "examples.jsonl")
    trained = study.variant_index()[name]["train"]
    unknown = [e for e in load_examples(study.out / "variants" / trained) if study.categories().get(e.id) == "Unknown"]
    if sorted(e.id for e in routed) != sorted(e.id for e in unknown):
        raise KnowtuneError(f"{store_dir}: the routed facts are not {name}'s Unknown facts",
                            fix="the study's curation changed since it ran; rerun into a new --out")
    return store_dir, routed


def train_with_passages(study: Study, mixture: Sequence[QAExample]) -> Path:
    """Route ``known_passages``: D_Known_X trained with the ``filtered`` run's settings plus ``retrieval`` (a store
    of all of ``mixture``'s facts, ``retrieval_k`` = k, ``retrieval_oracle_share``); the finished model's directory."""
    from knowtune.data import load_examples
    from knowtune.retrieval import RetrievalStore, relation_specs
    from knowtune.study import workers

    config, compare = study.config.retrieval_route, study.config.compare_methods
    store_dir = study.out / PASSAGES_STORE
    if not (store_dir / "store.json").is_file():
        RetrievalStore.build(mixture, relation_specs(study.config.data), settings={"route": "known_passages"},
                             source={"data": str(study.config.data), "variant": f"D_{compare.mixture}"}).save_complete(store_dir)
    plan = compare.plans(study.config.train)["filtered"]
    known = load_examples(study.out / "variants" / study.variant_index()[plan.variant]["train"])
    train_config = type(plan.config).model_validate({**plan.config.model_dump(mode="json"), "retrieval": str(store_dir),
                                                     "retrieval_k": config.k, "retrieval_oracle_share": config.oracle_share})
    run_dir = study.out / PASSAGES_RUN
    job = workers.TrainJob("known_passages", train_config, study.config.model, study.eval_splits().with_train(known), study.categories(), run_dir)
    workers.train([job], 1, study.log, lambda name: study.log(f"[retrieval] {name} finished"))
    return run_dir / "model"


def run_stage(study: Study) -> str:
    """Build the store and measure every route into ``OUT/retrieval/comparison.json``; ``ran`` or ``skipped``."""
    from knowtune.data import load_examples
    from knowtune.io import atomic_write_json
    from knowtune.provenance import config_hash
    from knowtune.retrieval import RetrievalStore
    from knowtune.train.callbacks import eval_subset, read_metrics
    from knowtune.train.sft import training_task

    config, compare, train = study.config.retrieval_route, study.config.compare_methods, study.config.train
    key = config_hash({"retrieval": config.model_dump(mode="json"), "compare": study.state.stages["compare"].key,
                       "annotate": study.state.stages["annotate"].key})

    def work() -> dict[str, Any]:
        store_dir, _ = route_store(study)
        sft = read_metrics(study.out / study.state.methods["sft"].dir / "metrics.jsonl")
        mixture = load_examples(study.out / "variants" / study.variant_index()[f"D_{compare.mixture}"]["train"])
        categories = study.categories()
        audit_task = study.config.annotate.task_spec()
        base_task = audit_task if config.base_shots is None else audit_task.updated(k=config.base_shots)
        pool = [e for e in load_examples(study.data_path) if e.split == audit_task.fewshot.exemplars_from]
        setup = RouteSetup(
            store=RetrievalStore.load(store_dir), categories=categories, k=config.k, min_relevance=config.min_relevance,
            held_out=compare.held_out, seed=study.config.study_seed,
            unknown=tuple(e for e in eval_subset(mixture, train.max_eval_examples, train.seed) if categories.get(e.id) == "Unknown"),
            test=tuple(eval_subset(study.eval_splits().test, train.max_eval_examples, train.seed)),
            train_task=training_task(compare.train_config("filtered", train)), base_task=base_task, exemplar_pool=tuple(pool),
            batch_size=train.eval_batch_size, device=train.device)
        passages_model = train_with_passages(study, mixture) if config.finetune_with_passages else None
        result = measure_route(setup, sft, study.out / study.state.methods["filtered"].dir / "model", study.config.model, passages_model)
        atomic_write_json(study.out / ROUTE_FILE, {**result, "store": str(store_dir.relative_to(study.out))})
        return {"unknown_facts": result["unknown_facts"]}

    return study._stage(STAGE, key, (study.out / ROUTE_FILE).is_file(), work)


def analysis_part(study: Study) -> dict[str, Any] | None:
    """``analysis.json``'s ``retrieval`` entry for a study with a ``retrieval_route:`` section, else None."""
    if study.config.retrieval_route is None:
        return None
    return json.loads((study.out / ROUTE_FILE).read_text(encoding="utf-8"))
