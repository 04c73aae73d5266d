"""P(True): the probability a model gives "True" to its own proposed answer (``knowtune annotate --method ptrue``).

Kadavath et al., "Language Models (Mostly) Know What They Know" (arXiv 2207.05221),
section 3: the model first proposes an answer, then is asked

    Question: <question>
    Proposed Answer: <proposed answer>
    Is the proposed answer:
     (A) True
     (B) False
    The proposed answer is:

and P(True) is the probability of `` (A)``. Gekhman et al. (EMNLP 2024, arXiv 2405.05904,
section 6 and appendix) use it as the baseline the SliCK categories are judged against.

Here, for each example:

* the proposed answer is the greedy answer to the audit's first few-shot prompt (exemplar
  set 0 of ``knowtune annotate``'s draw with the same seed and k), decoded by the SliCK
  backend (:class:`knowtune.slick.generation.HFBackend`: batched, prefix-cached);
* with p(x) = prod_t p(x_t | prompt, x_<t) the probability of the continuation x,
  ``p_true_raw`` = p(true_text) and ``p_true`` = p(true_text) / (p(true_text) + p(false_text)),
  the probability of "True" among the two options (batched teacher-forced forward passes);
* ``shots`` > 0 puts that many answered examples of the same prompt first (Kadavath et al.'s
  few-shot P(True)): exemplars of the question's relation from the exemplar split, shown
  alternately with their gold answer (answered true_text) and with another example's
  answer (answered false_text).

Results are stored per example like the audit's (:class:`knowtune.slick.store.AnnotationStore`
in ``ptrue.sqlite``, one committed batch at a time, keyed by model fingerprint and protocol
hash), so a rerun resumes; the store's category column holds the model's verdict
(``True`` when ``p_true >= 0.5``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from knowtune import __version__
from knowtune.config import StageConfig
from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.matching import DEFAULT_MATCH, is_correct, normalize_answer
from knowtune.task import DEFAULT_TASK, TaskSpec, check_template

if TYPE_CHECKING:
    from knowtune.slick.protocol import AnnotateConfig

PTRUE_VERSION = 1
STORE_FILE, RECORDS_FILE = "ptrue.sqlite", "ptrue.jsonl"
KADAVATH_TEMPLATE = "Question: {question}\nProposed Answer: {answer}\nIs the proposed answer:\n (A) True\n (B) False\nThe proposed answer is:"


class PTrueSettings(StageConfig):
    """The P(True) prompt (``annotate --method ptrue``; keys ``ptrue.*``, flags ``--ptrue-*``)."""

    template: str = KADAVATH_TEMPLATE
    """P(True) prompt with {question} and {answer} (Kadavath et al. 2022)."""
    true_text: str = Field(" (A)", min_length=1)
    """The continuation that means True."""
    false_text: str = Field(" (B)", min_length=1)
    """The continuation that means False."""
    shots: int = Field(0, ge=0)
    """Answered P(True) examples of the question's relation before it (0: the paper's zero-shot prompt)."""
    separator: str = "\n\n"
    """Text after each answered example."""

    @field_validator("template")
    @classmethod
    def _slots(cls, value: str) -> str:
        return check_template(value, "ptrue.template", ("{question}", "{answer}"))


@dataclass(frozen=True)
class PTrueResult:
    """One example's P(True) record (as stored and exported)."""

    id: str
    relation: str
    split: str
    question: str
    answers: list[str]
    proposed_answer: str
    proposed_correct: bool
    p_true: float
    p_true_raw: float
    verdict: str


@dataclass(frozen=True)
class Shot:
    """One answered P(True) example: a question, an answer shown for it, and whether it is the gold one."""

    question: str
    answer: str
    true: bool


def draw_shots(pool: Sequence[QAExample], relations: Sequence[str], shots: int, seed: int, match=DEFAULT_MATCH) -> dict[str, list[Shot]]:
    """Per relation, ``shots`` answered examples (seeded, ``random.Random(f"{seed}:ptrue:{relation}")``
    over the pool sorted by id): even positions show the gold answer (true), odd ones the answer
    of another example of the relation whose normalised form differs (false)."""
    out: dict[str, list[Shot]] = {}
    for relation in sorted(set(relations)):
        candidates = sorted((e for e in pool if e.relation == relation), key=lambda e: e.id)
        if shots and len(candidates) < shots + 1:
            raise KnowtuneError(f"relation {relation!r} has {len(candidates)} exemplar candidate(s); --ptrue-shots {shots} needs {shots + 1}",
                                fix="lower --ptrue-shots, add exemplar examples of the relation, or leave it out with --relations")
        rng = random.Random(f"{seed}:ptrue:{relation}")
        chosen = rng.sample(candidates, shots) if shots else []
        drawn = []
        for i, example in enumerate(chosen):
            if i % 2 == 0:
                drawn.append(Shot(example.question, example.answers[0], True))
                continue
            gold = {normalize_answer(a, match) for a in example.answers}
            others = [e.answers[0] for e in candidates if normalize_answer(e.answers[0], match) not in gold]
            drawn.append(Shot(example.question, rng.choice(others), False) if others else Shot(example.question, example.answers[0], True))
        out[relation] = drawn
    return out


def ptrue_prompt(settings: PTrueSettings, shots: Sequence[Shot], question: str, answer: str) -> str:
    """The shots (each followed by its option text and the separator), then the question's prompt."""
    lines = [settings.template.format(question=s.question, answer=s.answer) + (settings.true_text if s.true else settings.false_text)
             + settings.separator for s in shots]
    return "".join(lines) + settings.template.format(question=question, answer=answer)


def continuation_logprobs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *, pad_id: int,
                          batch_size: int = 64) -> list[float]:
    """log p(c | prompt) = sum_t log softmax(logits at the position before c_t)[c_t] for each
    (prompt, continuation) pair of token ids: batched teacher-forced forward passes, rows
    left-padded with explicit positions, logits kept only for the continuation positions."""
    import inspect

    import torch

    from knowtune.recall import left_padded

    device = next(model.parameters()).device
    keep_arg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in inspect.signature(model.forward).parameters), None)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
    out = [0.0] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, mask = left_padded([list(prompts[i]) + list(continuations[i]) for i in batch], pad_id)  # (B, T)
            width = max(len(continuations[i]) for i in batch)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            extra = {keep_arg: width + 1} if keep_arg else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **extra).logits
            logp = torch.log_softmax(logits[:, -(width + 1):-1].float(), dim=-1)  # (B, W, V): predicts the last W tokens
            token_logp = logp.gather(-1, ids[:, -width:].to(device).unsqueeze(-1)).squeeze(-1)  # (B, W)
            for row, i in enumerate(batch):
                out[i] = float(token_logp[row, width - len(continuations[i]):].sum())
    return out


def ptrue_probabilities(model, tokenizer, prompts: Sequence[str], settings: PTrueSettings, *, task: TaskSpec = DEFAULT_TASK,
                        batch_size: int = 64) -> list[tuple[float, float]]:
    """(p_true, p_true_raw) of each P(True) prompt text (definitions in the module docstring)."""
    import math

    from knowtune.models import pad_token_id

    builder = task.prompts(tokenizer)
    encoded = builder.encode(list(prompts))
    options = builder.encode_answers([settings.true_text, settings.false_text])
    if not all(options):
        raise ConfigError("ptrue.true_text / ptrue.false_text encode to no tokens", fix="use visible option texts such as ' (A)' and ' (B)'")
    pairs = [(ids, option) for ids in encoded for option in options]
    logps = continuation_logprobs(model, [p for p, _ in pairs], [c for _, c in pairs], pad_id=pad_token_id(tokenizer), batch_size=batch_size)
    results = []
    for j in range(len(encoded)):
        true, false = logps[2 * j], logps[2 * j + 1]
        top = max(true, false)
        results.append((math.exp(true - top) / (math.exp(true - top) + math.exp(false - top)), math.exp(true)))
    return results


def propose_answers(backend, builder, sets: dict[str, list], examples: Sequence[QAExample], stop) -> list[str]:
    """The greedy answer of each example to its relation's first few-shot prompt (exemplar set 0),
    through the SliCK backend (``backend``: :class:`knowtune.slick.generation.HFBackend`)."""
    from knowtune.matching import extract_answer
    from knowtune.slick.generation import GREEDY, Request
    from knowtune.slick.tokens import decode_batch

    relations = sorted({e.relation for e in examples})
    index = {r: i for i, r in enumerate(relations)}
    backend.set_prefixes(builder.encode([builder.prefix(sets[r][0].exemplars) for r in relations]))
    encoded = builder.encode([builder.fewshot(sets[e.relation][0].for_example(e.id), e.question) for e in examples])
    outputs = backend.generate([Request(index[e.relation], tuple(ids), (GREEDY,)) for e, ids in zip(examples, encoded)])
    return [extract_answer(text, stop) for text in decode_batch(backend.tokenizer, [rows[0] for rows in outputs])]


def score_batch(model, backend, builder, sets, shots: dict[str, list[Shot]], examples: Sequence[QAExample], settings: PTrueSettings,
                task: TaskSpec, batch_size: int) -> list[PTrueResult]:
    """Propose an answer for each example and score its P(True)."""
    proposed = propose_answers(backend, builder, sets, examples, task.generation.stop)
    prompts = [ptrue_prompt(settings, shots[e.relation], e.question, a) for e, a in zip(examples, proposed)]
    probs = ptrue_probabilities(model, backend.tokenizer, prompts, settings, task=task, batch_size=batch_size)
    return [PTrueResult(e.id, e.relation, e.split, e.question, list(e.answers), a, is_correct(a, e.answers, task.match), p, raw,
                        "True" if p >= 0.5 else "False")
            for e, a, (p, raw) in zip(examples, proposed, probs)]


def score_ptrue(model, tokenizer, examples: Sequence[QAExample], exemplar_pool: Sequence[QAExample], *,
                settings: PTrueSettings | None = None, task: TaskSpec = DEFAULT_TASK, seed: int = 0, batch_size: int = 64,
                engine: str = "auto") -> list[PTrueResult]:
    """P(True) of every example's own proposed answer (module docstring), without a store: the
    Python API. Exemplars (for the proposal and the shots) come from ``exemplar_pool``."""
    from knowtune.slick.exemplars import draw_exemplar_sets
    from knowtune.slick.generation import HFBackend

    settings = settings or PTrueSettings()
    relations = sorted({e.relation for e in examples})
    sets = draw_exemplar_sets(exemplar_pool, relations, n_ex=1, k=task.fewshot.k, seed=seed, source=task.fewshot.exemplars_from)
    shots = draw_shots(exemplar_pool, relations, settings.shots, seed, task.match)
    backend = HFBackend(model, tokenizer, stop=task.generation.stop, max_new_tokens=task.generation.max_new_tokens, temperature=1.0,
                        top_k=1, batch_size=batch_size, engine=engine)
    return score_batch(model, backend, task.prompts(tokenizer), sets, shots, list(examples), settings, task, batch_size)


def build_ptrue_protocol(config: "AnnotateConfig", task: TaskSpec, sets: dict[str, list], shots: dict[str, list[Shot]], dtype: str) -> dict[str, Any]:
    """Everything that decides a P(True) result except the model (its hash keys the store)."""
    fewshot = task.fewshot
    return {
        "method": "ptrue", "ptrue_version": PTRUE_VERSION, "knowtune_version": __version__, "seed": config.seed,
        "proposal": {"k": fewshot.k, "exemplars_from": fewshot.exemplars_from, "instruction": fewshot.instruction,
                     "exemplar": fewshot.exemplar_template, "query": fewshot.query_template, "chat_template": task.tokens.chat_template,
                     "add_special_tokens": task.tokens.add_special_tokens, "decoding": "greedy", "stop": task.generation.stop,
                     "max_new_tokens": task.generation.max_new_tokens, "dtype": dtype,
                     "exemplar_sets": {r: sets[r][0].to_record() for r in sorted(sets)}},
        "ptrue": settings_record(config.ptrue),
        "shots": {r: [asdict(s) for s in shots[r]] for r in sorted(shots)},
        "match": task.match.model_dump(mode="json"),
    }


def settings_record(settings: PTrueSettings) -> dict[str, Any]:
    return {**settings.model_dump(mode="json"), "p_true": "p(true_text) / (p(true_text) + p(false_text))"}


def summarize_ptrue(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean P(True) overall, for correct and wrong proposed answers, per relation, and the AUROC of
    P(True) as a detector of correct proposed answers (probability that a random correct one
    scores above a random wrong one, ties counting half)."""
    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    right = [r["p_true"] for r in records if r["proposed_correct"]]
    wrong = [r["p_true"] for r in records if not r["proposed_correct"]]
    relations = sorted({r["relation"] for r in records})
    return {
        "examples": len(records), "proposed_correct": len(right), "mean_p_true": mean(r["p_true"] for r in records),
        "mean_p_true_correct": mean(right), "mean_p_true_wrong": mean(wrong), "auroc": auroc(right, wrong),
        "verdict_true": sum(r["verdict"] == "True" for r in records),
        "per_relation": {rel: {"examples": sum(r["relation"] == rel for r in records),
                               "mean_p_true": mean(r["p_true"] for r in records if r["relation"] == rel)} for rel in relations},
    }


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(score of a random positive > score of a random negative) + 0.5 P(equal); None if a side is empty."""
    if not positive or not negative:
        return None
    ranked = sorted([(s, 1) for s in positive] + [(s, 0) for s in negative])
    wins, i, seen_negative = 0.0, 0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        pos = sum(label for _, label in ranked[i:j])
        wins += pos * seen_negative + 0.5 * pos * ((j - i) - pos)
        seen_negative += (j - i) - pos
        i = j
    return wins / (len(positive) * len(negative))


def run_ptrue(config: "AnnotateConfig", *, on_batch: Callable[[dict[str, Any]], None] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) ``knowtune annotate --method ptrue``; returns the summary written to ``summary.json``."""
    from knowtune.config import save_config
    from knowtune.io import atomic_write_json, atomic_write_jsonl
    from knowtune.models import load, resolve_device, resolve_dtype, resolve_model_dir
    from knowtune.provenance import config_hash, model_fingerprint, provenance
    from knowtune.slick.annotate import example_hash, load_audit_data
    from knowtune.slick.exemplars import draw_exemplar_sets
    from knowtune.slick.generation import HFBackend
    from knowtune.slick.results import check_out_dir
    from knowtune.slick.store import AnnotationStore, StoredRow
    from knowtune.task import save_task

    if not config.out:
        raise KnowtuneError("no output directory given", fix="pass --out DIR")
    if config.shard or config.served():
        raise ConfigError("--method ptrue runs in-process on one machine", fix="leave out --shard and --backend openai with --method ptrue")
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    task = config.task_spec()
    if getattr(task.match, "method", "exact") == "judge":
        raise ConfigError("--method ptrue marks proposed answers correct by exact, contains or f1 match, not by a judge",
                          fix="pass --match exact (or contains, f1) with --method ptrue")
    audited, pool = load_audit_data(config, task.fewshot.exemplars_from)
    relations = sorted({e.relation for e in audited})
    sets = draw_exemplar_sets(pool, relations, n_ex=1, k=task.fewshot.k, seed=config.seed, source=task.fewshot.exemplars_from)
    shots = draw_shots(pool, relations, config.ptrue.shots, config.seed, task.match)
    protocol = build_ptrue_protocol(config, task, sets, shots, dtype)
    phash = config_hash(protocol)
    config = config.resolved()
    model_dir = resolve_model_dir(config.model)
    fingerprint = model_fingerprint(model_dir)
    out = Path(config.out)
    check_out_dir(out, phash, fingerprint, protocol, overwrite=config.overwrite)
    started = time.perf_counter()
    with AnnotationStore(out / STORE_FILE) as store:
        done = store.done(fingerprint, phash)
        pending = [(i, e) for i, e in enumerate(audited) if done.get(e.id) != example_hash(e)]
        loaded = load(model_dir, device, dtype) if pending else None  # fails before anything is written
        atomic_write_json(out / "protocol.json", {"protocol_hash": phash, "model_fingerprint": fingerprint, "protocol": protocol})
        save_config(config, out / "config.yaml")
        save_task(task, out)
        store.set_meta({"expected": len(audited), "model": config.model, "method": "ptrue"})
        engine = None
        if loaded is not None:
            model, tokenizer = loaded
            backend = HFBackend(model, tokenizer, stop=task.generation.stop, max_new_tokens=task.generation.max_new_tokens,
                                temperature=config.temperature, top_k=config.top_k, batch_size=config.batch_size, engine=config.engine, log=log)
            builder = task.prompts(tokenizer)
            for start in range(0, len(pending), config.chunk_size):
                chunk = pending[start:start + config.chunk_size]
                results = score_batch(model, backend, builder, sets, shots, [e for _, e in chunk], config.ptrue, task, config.batch_size)
                store.put(fingerprint, phash, [StoredRow(e.id, example_hash(e), i, r.verdict, asdict(r)) for (i, e), r in zip(chunk, results)])
                if on_batch is not None:
                    on_batch({"done": start + len(chunk), "total": len(pending), "elapsed_s": time.perf_counter() - started})
            engine = backend.engine_note
        wanted = {e.id: (example_hash(e), i) for i, e in enumerate(audited)}
        rows = [r for r in store.rows(fingerprint, phash) if wanted.get(r.example_id, (None,))[0] == r.example_hash]
        rows.sort(key=lambda r: wanted[r.example_id][1])
    records = [r.record for r in rows]
    atomic_write_jsonl(out / RECORDS_FILE, records)
    summary = summarize_ptrue(records)
    summary["complete"] = len(records) == len(audited)
    summary["protocol_hash"] = phash
    run = {"model": config.model, "model_dir": str(model_dir), "device": device, "expected": len(audited), "examples_this_run": len(pending),
           "seconds_this_run": round(time.perf_counter() - started, 3), "engine": engine}
    summary["provenance"] = provenance(config.model_dump(mode="json"), seed=config.seed, model_fingerprint=fingerprint, protocol_hash=phash, run=run)
    atomic_write_json(out / "summary.json", summary)
    return summary


def load_ptrue(path: str | Path) -> dict[str, float]:
    """Example id -> P(True) from a ``--method ptrue`` output directory (or its ``ptrue.jsonl``)."""
    import json

    from knowtune.errors import DataError

    path = Path(path)
    file = path / RECORDS_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(file, "no P(True) results", fix="pass the --out directory of a finished `knowtune annotate --method ptrue` run")
    return {r["id"]: r["p_true"] for r in (json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip())}


def print_ptrue_progress(state: dict[str, Any], console) -> None:
    """One progress line per committed batch (``knowtune annotate --method ptrue``)."""
    rate = state["done"] / state["elapsed_s"] if state["elapsed_s"] > 0 else 0.0
    eta = f"{(state['total'] - state['done']) / rate:.0f} s" if rate > 0 else "?"
    console.print(f"ptrue: {state['done']}/{state['total']} examples, {rate:.1f} ex/s, ETA {eta}", highlight=False, soft_wrap=True)


def print_ptrue_summary(summary: dict[str, Any], out: Path, console) -> None:
    """The summary table: mean P(True) overall, for correct and wrong proposed answers, per relation; the AUROC."""
    from rich.table import Table

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    table = Table(title=f"P(True) of the model's own answers ({out / 'summary.json'})")
    for column in ("relation", "examples", "mean P(True)"):
        table.add_column(column, justify="left" if column == "relation" else "right")
    table.add_row("all", str(summary["examples"]), fmt(summary["mean_p_true"]))
    for relation, block in summary["per_relation"].items():
        table.add_row(relation, str(block["examples"]), fmt(block["mean_p_true"]))
    console.print(table)
    console.print(f"proposed answers correct: {summary['proposed_correct']}/{summary['examples']}; mean P(True) correct "
                  f"{fmt(summary['mean_p_true_correct'])}, wrong {fmt(summary['mean_p_true_wrong'])}; AUROC {fmt(summary['auroc'])}",
                  highlight=False)
    if not summary.get("complete", True):
        console.print("warning: not every selected example is scored yet; rerun the same command to resume", highlight=False)
