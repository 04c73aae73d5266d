"""``knowtune annotate``: the SliCK audit, end to end (plan, generate, score, store, export).

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 3. For each audited example,
N_ex few-shot prompts (k exemplars each, drawn per relation by
:mod:`knowtune.slick.exemplars`) give N_ex greedy answers and N_ex * n_samples samples;
P0 = correct greedy / N_ex, Ps = correct samples / (N_ex * n_samples), and the category
follows :mod:`knowtune.slick.categories`.

Modes:

* ``exact``: all 1 + n_samples generations of every prompt (exact P0 and Ps);
* ``lazy`` (default): the N_ex greedy answers, then, only when P0 = 0, samples prompt by
  prompt until the first correct one. Categories equal exact mode's because samples are
  keyed by (seed, example, prompt, sample) and so identical in both modes.

Work goes in batches of ``chunk_size`` examples (of any relations), each committed to the
SQLite store in one transaction, so a rerun resumes where a killed run stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowtune.config import save_config
from knowtune.data.schema import QAExample
from knowtune.errors import KnowtuneError
from knowtune.io import atomic_write_json
from knowtune.judge import open_judge
from knowtune.matching import correct_many, extract_answer, long_answer_warning, matches_normalized, normalize_answer
from knowtune.provenance import config_hash, model_fingerprint
from knowtune.slick.categories import CATEGORIES, verdict
from knowtune.slick.exemplars import ExemplarSet, draw_exemplar_sets
from knowtune.slick.generation import GREEDY, HFBackend, Request, compact_prefills
from knowtune.slick.protocol import AnnotateConfig, build_protocol, in_shard, parse_shard, protocol_hash, stable_hash
from knowtune.slick.pruning import pruner
from knowtune.slick.results import check_out_dir, write_outputs
from knowtune.slick.sampling import sample_keys
from knowtune.slick.served import ServedAudit, load_tokenizer
from knowtune.slick.store import AnnotationStore, StoredRow
from knowtune.slick.tokens import decode_batch
from knowtune.task import Prompts, TaskSpec, save_task

ProgressHook = Callable[[dict[str, Any]], None]


@dataclass
class AuditPlan:
    """What one run audits: its examples (with dataset positions), exemplar sets and protocol."""

    examples: list[tuple[int, QAExample]]
    total: int
    sets: dict[str, list[ExemplarSet]]
    protocol: dict[str, Any]
    protocol_hash: str
    task: TaskSpec


def example_hash(example: QAExample) -> str:
    """A content hash of what the audit reads from an example (a changed example is redone)."""
    return config_hash([example.relation, example.question, list(example.answers)])


def load_audit_data(config: AnnotateConfig, exemplars_from: str) -> tuple[list[QAExample], list[QAExample]]:
    """(audited examples in dataset order, exemplar pool of split ``exemplars_from``) from ``config.data``."""
    from knowtune.data import load_examples
    from knowtune.world.embedded import resolve_data_path

    if not config.data:
        raise KnowtuneError("no dataset given", fix="pass --data PATH (a .jsonl/.json/.parquet file, an EntityQuestions directory, or `embedded`)")
    examples = load_examples(resolve_data_path(config.data), fields=config.data_fields)
    if not examples:
        raise KnowtuneError(f"{config.data}: the dataset is empty", fix="point --data at a file or directory that holds QA examples")
    audited = [
        e for e in examples
        if (config.splits is None or e.split in config.splits) and (config.relations is None or e.relation in config.relations)
    ]
    if not audited:
        present = sorted({e.split for e in examples}), sorted({e.relation for e in examples})
        raise KnowtuneError(
            f"{config.data}: no example matches splits={config.splits} relations={config.relations} "
            f"(the data has splits {present[0]} and relations {present[1][:20]})",
            fix="change --split / --relations, or leave them out to audit everything",
        )
    if config.limit is not None:
        audited = audited[: config.limit]
    pool = [e for e in examples if e.split == exemplars_from]
    if not pool:
        splits = sorted({e.split for e in examples})
        raise KnowtuneError(
            f"{config.data}: no {exemplars_from!r} split to draw few-shot exemplars from (splits present: {splits})",
            fix="pass --exemplars-from train (the audited example is never its own exemplar), or add a dev split",
        )
    return audited, pool


def plan_audit(config: AnnotateConfig, dtype: str) -> AuditPlan:
    """Load the data, draw exemplar sets and fix the protocol (no model needed)."""
    task = config.task_spec()
    fewshot = task.fewshot
    audited, pool = load_audit_data(config, fewshot.exemplars_from)
    relations = sorted({e.relation for e in audited})
    sets = draw_exemplar_sets(pool, relations, n_ex=config.n_ex, k=fewshot.k, seed=config.seed, source=fewshot.exemplars_from)
    protocol = build_protocol(config, task, {r: [s.to_record() for s in sets[r]] for r in relations}, dtype)
    shard = parse_shard(config.shard) if config.shard else None
    mine = [(i, e) for i, e in enumerate(audited) if in_shard(e.id, shard)]
    return AuditPlan(examples=mine, total=len(audited), sets=sets, protocol=protocol, protocol_hash=protocol_hash(protocol), task=task)


def run_annotate(config: AnnotateConfig, *, on_batch: ProgressHook | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the audit described by ``config``; returns the summary written to ``summary.json``.
    ``log`` receives one line naming the decoding path (engine) and why it was chosen."""
    from knowtune.models import load, resolve_device, resolve_dtype, resolve_model_dir

    if not config.out:
        raise KnowtuneError("no output directory given", fix="pass --out DIR")
    config.check_served()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    plan = plan_audit(config, dtype)
    config = config.resolved()
    model_dir = resolve_model_dir(config.model)
    served = ServedAudit.connect(config, model_dir) if config.served() else None  # results keyed by the servers' model and protocol
    plan = served.plan(plan) if served else plan
    fingerprint = served.fingerprint if served else model_fingerprint(model_dir)
    out = Path(config.out)
    check_out_dir(out, plan.protocol_hash, fingerprint, plan.protocol, overwrite=config.overwrite)
    def load_model():
        return (None, load_tokenizer(model_dir)) if served else load(model_dir, device, dtype)

    store_path = out / "annotations.sqlite"
    # A first run loads the model before creating its store: a model that fails to load leaves no empty store.
    preloaded = None if store_path.exists() else load_model()
    with AnnotationStore(store_path) as store:
        done = store.done(fingerprint, plan.protocol_hash)
        pending = [(i, e) for i, e in plan.examples if done.get(e.id) != example_hash(e)]
        model_and_tokenizer = (preloaded or load_model()) if pending else None  # fails before anything is written
        atomic_write_json(out / "protocol.json", {"protocol_hash": plan.protocol_hash, "model_fingerprint": fingerprint, "protocol": plan.protocol})
        save_config(config, out / "config.yaml")
        save_task(plan.task, out)
        store.set_meta({"shard": config.shard, "expected": len(plan.examples), "total": plan.total, "model": config.model})
        started, engine = time.perf_counter(), None
        if model_and_tokenizer is not None:
            model, tokenizer = model_and_tokenizer
            decoding = dict(stop=plan.task.generation.stop, max_new_tokens=plan.task.generation.max_new_tokens, temperature=config.temperature,
                            top_k=config.top_k, log=log)
            backend = (served.backend(tokenizer, **decoding) if served else
                       HFBackend(model, tokenizer, **decoding, batch_size=config.batch_size, engine=config.engine))
            builder = plan.task.prompts(tokenizer)
            warning = long_answer_warning(tokenizer, [e for _, e in pending], plan.task.generation.max_new_tokens)
            if warning and log is not None:
                log(warning)
            judge = open_judge(config.match, out / "annotations.sqlite")  # verdicts cached beside the results
            try:
                _process(config, plan, pending, backend, builder, store, fingerprint, on_batch, judge)
            finally:
                if judge is not None:
                    judge.close()
            if judge is not None and log is not None:
                log(f"judge: {judge.calls} answers judged ({judge.unclear} replies neither yes nor no, counted wrong); the rest exact or cached")
            engine = backend.engine_note
        wanted = {e.id: (example_hash(e), i) for i, e in plan.examples}
        rows = [r for r in store.rows(fingerprint, plan.protocol_hash) if wanted.get(r.example_id, (None,))[0] == r.example_hash]
        rows.sort(key=lambda r: wanted[r.example_id][1])  # today's dataset order
    run_info = {"model": config.model, "model_dir": str(model_dir), "device": device, "shard": config.shard, "expected": len(plan.examples),
                "examples_this_run": len(pending), "seconds_this_run": round(time.perf_counter() - started, 3), "engine": engine}
    return write_outputs(out, rows, plan.protocol_hash, fingerprint, config.model_dump(mode="json"), config.seed, run_info)


def _process(config, plan, pending, backend, builder, store, fingerprint, on_batch, judge=None) -> None:
    """Annotate ``pending`` in dataset order, in committed batches of ``chunk_size`` examples
    (of any relations: one decoding batch may mix prompts of several prefixes), reporting progress."""
    counts: Counter[str] = Counter()
    finished, started = 0, time.perf_counter()
    for start in range(0, len(pending), config.chunk_size):
        chunk = pending[start:start + config.chunk_size]
        rows = annotate_batch(config, backend, builder, plan.sets, chunk, judge)
        store.put(fingerprint, plan.protocol_hash, rows)
        counts.update(r.category for r in rows)
        finished += len(rows)
        if on_batch is not None:
            elapsed = time.perf_counter() - started
            rate = finished / elapsed if elapsed > 0 else 0.0
            on_batch({"done": finished, "total": len(pending), "examples_per_s": rate,
                      "eta_s": (len(pending) - finished) / rate if rate > 0 else None,
                      "counts": {c: counts[c] for c in CATEGORIES}})


@dataclass
class _Prompts:
    """The prompts of a batch: token ids[example][prompt], their prefix indices, sampling
    keys[example][prompt] and each example's early-rejection check."""

    ids: list[list[tuple[int, ...]]]
    prefix: list[list[int]]
    keys: list[list[tuple[int, ...]]]
    alive: list

    def request(self, j: int, s: int, keys: tuple[int, ...], prefill=None) -> Request:
        return Request(self.prefix[j][s], self.ids[j][s], keys, prefill, self.alive[j])


def annotate_batch(config: AnnotateConfig, backend: HFBackend, builder: Prompts, sets: dict[str, list[ExemplarSet]],
                   chunk: Sequence[tuple[int, QAExample]], judge=None) -> list[StoredRow]:
    """Audit one batch of examples: the prefixes of their relations go to the backend, then
    exact or lazy generation, then scoring (``judge``: a :class:`knowtune.judge.Judge` for ``match.method: judge``)."""
    examples = [e for _, e in chunk]
    relations = sorted({e.relation for e in examples})
    offset = {r: i * config.n_ex for i, r in enumerate(relations)}  # prefix index of (relation, set s): offset + s
    backend.set_prefixes(builder.encode([builder.prefix(s.exemplars) for r in relations for s in sets[r]]))
    n_ex = config.n_ex
    encoded = builder.encode([builder.fewshot(s.for_example(e.id), e.question) for e in examples for s in sets[e.relation]])
    prompts = _Prompts(
        ids=[[tuple(ids) for ids in encoded[j * n_ex:(j + 1) * n_ex]] for j in range(len(examples))],
        prefix=[[offset[e.relation] + s for s in range(n_ex)] for e in examples],
        keys=sample_keys(config.seed, [stable_hash(e.id) for e in examples], n_ex, config.n_samples),
        alive=[pruner(e.answers, config.match, config.stop) if config.prune_samples else None for e in examples],
    )
    score = _Scorer(backend.tokenizer, config, examples, judge)
    if config.mode == "exact":
        pairs = [(j, s) for j in range(len(examples)) for s in range(n_ex)]
        outputs = backend.generate([prompts.request(j, s, (GREEDY, *prompts.keys[j][s])) for j, s in pairs])
        score.greedy([(j, s, rows[0]) for (j, s), rows in zip(pairs, outputs)])
        score.samples([(j, rows[1:]) for (j, _), rows in zip(pairs, outputs)])
    else:
        _lazy(config, backend, score, prompts)
    return [score.row(j, position) for j, (position, _) in enumerate(chunk)]


def _lazy(config: AnnotateConfig, backend: HFBackend, score: "_Scorer", prompts: _Prompts) -> None:
    """Lazy mode: greedy answers for all; then, only where P0 = 0, samples prompt by prompt
    until the first correct one. Sampling reuses the greedy pass's prefill of each prompt."""
    n_ex = config.n_ex
    pairs = [(j, s) for j in range(len(prompts.ids)) for s in range(n_ex)]
    outputs, prefills = backend.generate_keeping_prefills([prompts.request(j, s, (GREEDY,)) for j, s in pairs])
    score.greedy([(j, s, rows[0]) for (j, s), rows in zip(pairs, outputs)])
    undecided = [j for j in range(len(prompts.ids)) if score.greedy_correct[j] == 0]
    wanted = [i for i, (j, _) in enumerate(pairs) if score.greedy_correct[j] == 0]
    kept = dict(zip([pairs[i] for i in wanted], compact_prefills([prefills[i] for i in wanted])))
    del prefills
    for s in range(n_ex):
        if not undecided or config.n_samples == 0:
            break
        requests = [prompts.request(j, s, prompts.keys[j][s], kept.pop((j, s), None)) for j in undecided]
        score.samples(list(zip(undecided, backend.generate(requests))))
        undecided = [j for j in undecided if score.sample_correct[j] == 0]


class _Scorer:
    """Decodes generated tokens, extracts and matches answers, and accumulates counts."""

    def __init__(self, tokenizer, config: AnnotateConfig, examples: Sequence[QAExample], judge=None):
        self.tokenizer = tokenizer
        self.config = config
        self.examples = examples
        self.judge = judge
        self.golds = [{g for g in (normalize_answer(a, config.match) for a in e.answers) if g} for e in examples]
        self.greedy_answers: list[list[str]] = [[""] * config.n_ex for _ in examples]
        self.greedy_correct = [0] * len(examples)
        self.sample_correct = [0] * len(examples)
        self.drawn = [0] * len(examples)

    def _answers(self, rows: Sequence[Sequence[int]]) -> list[str]:
        texts = decode_batch(self.tokenizer, rows if isinstance(rows, list) else list(rows))
        return [extract_answer(t, self.config.stop) for t in texts]

    def _correct(self, pairs: Sequence[tuple[int, str]]) -> list[bool]:
        """Verdicts of (example, answer) pairs: ``matching.is_correct`` with the gold answers
        normalised once per example, or :func:`knowtune.matching.correct_many` (the judge's batch)."""
        match = self.config.match
        if match.method == "judge":
            return correct_many([(self.examples[j].question, self.examples[j].answers, a) for j, a in pairs], match, self.judge)
        verdicts = []
        for j, answer in pairs:
            predicted = normalize_answer(answer, match)
            verdicts.append(bool(predicted) and matches_normalized(predicted, self.golds[j], match))
        return verdicts

    def greedy(self, items: Sequence[tuple[int, int, Sequence[int]]]) -> None:
        """Record greedy answers: (example, prompt, tokens) triples."""
        answers = self._answers([tokens for _, _, tokens in items])
        for (j, prompt, _), answer, correct in zip(items, answers, self._correct([(j, a) for (j, _, _), a in zip(items, answers)])):
            self.greedy_answers[j][prompt] = answer
            self.greedy_correct[j] += correct

    def samples(self, items: Sequence[tuple[int, Sequence[Sequence[int]]]]) -> None:
        """Count correct samples: (example, rows of one prompt) pairs."""
        answers = self._answers([row for _, rows in items for row in rows])
        owners = [j for j, rows in items for _ in rows]
        verdicts = iter(self._correct(list(zip(owners, answers))))
        for j, rows in items:
            self.sample_correct[j] += sum(next(verdicts) for _ in rows)
            self.drawn[j] += len(rows)

    def row(self, j: int, position: int) -> StoredRow:
        example = self.examples[j]
        n_ex = self.config.n_ex
        v = verdict(self.greedy_correct[j], n_ex, self.sample_correct[j], self.drawn[j], n_ex * self.config.n_samples)
        record = {
            "id": example.id, "relation": example.relation, "split": example.split,
            "question": example.question, "answers": list(example.answers),
            "category": v.category, "p0": v.p0, "ps": v.p_s, "ps_computed": v.p_s is not None,
            "greedy_answers": self.greedy_answers[j], "greedy_correct": v.greedy_correct,
            "samples": v.samples, "sample_correct": v.sample_correct, "generations": v.generations,
            "mode": self.config.mode,
        }
        return StoredRow(example.id, example_hash(example), position, v.category, record)
