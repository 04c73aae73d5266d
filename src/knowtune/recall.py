"""Few-shot recall of a world's facts, bucketed by pretraining exposure (ground truth).

The quality check of the embedded base model: each fact is asked with the task's 4-shot
``Q: ...`` / ``A: ...`` prompt (:mod:`knowtune.task`; exemplars: a seeded draw from the same
relation's dev split), answered greedily, cut at the first newline and scored by exact match
(:mod:`knowtune.matching`). Accuracy per exposure bucket shows a graded range, from
never-seen facts (near 0) to the most exposed (near 1).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from knowtune.data.schema import QAExample
from knowtune.matching import extract_answer, is_correct
from knowtune.models import pad_token_id
from knowtune.slick.exemplars import draw_one_set_per_relation, shots_for
from knowtune.task import DEFAULT_TASK, TaskSpec

#: Upper bounds (inclusive) of the exposure buckets, by corpus occurrences of the gold object.
DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 40), (41, 10**9))

_STOP_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def stop_token_ids(tokenizer, stop: str | list[str] = "\n") -> list[int]:
    """Ids of every token whose text contains ``stop``, plus EOS: the answer stops at any of them.

    The same rule as the SliCK backend (:func:`knowtune.slick.tokens.stop_token_mask`),
    computed once per tokenizer and stop string: evaluation calls this every epoch.
    """
    cached = _STOP_IDS.setdefault(tokenizer, {})
    stop = stop if isinstance(stop, str) else tuple(stop)
    if stop not in cached:
        from knowtune.slick.tokens import eos_token_ids, stop_token_mask

        mask = stop_token_mask(tokenizer, len(tokenizer), stop, eos_token_ids(None, tokenizer))
        cached[stop] = mask.nonzero().flatten().tolist()
    return cached[stop]


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each (B, T), of token id rows padded on the left."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row)
            attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], *, task: TaskSpec = DEFAULT_TASK, batch_size: int = 64,
                   synced: bool = False) -> list[str]:
    """Greedy answers to the prompt texts ``prompts`` with batched, left-padded ``model.generate``.

    Prompts are encoded by the task (:meth:`knowtune.task.Prompts.encode`, as in every stage);
    generation stops at the task's stop string or EOS after at most its ``max_new_tokens``,
    and the answer is the text before the stop string. Only ``input_ids`` and
    ``attention_mask`` reach ``generate``. ``synced``: every process of an FSDP run calls this
    with as many prompts, and each keeps taking forward passes until all have finished.
    """
    pad_id = pad_token_id(tokenizer)
    stop = task.generation.stop
    stop_ids = stop_token_ids(tokenizer, stop)
    encoder = task.prompts(tokenizer)
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(prompts), batch_size):
        input_ids, attention_mask = left_padded(encoder.encode(prompts[start : start + batch_size]), pad_id)
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=False,
                                max_new_tokens=task.generation.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                                **({"synced_gpus": True} if synced else {}))
        new_tokens = output[:, input_ids.shape[1] :]
        answers.extend(extract_answer(text, stop) for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


@dataclass(frozen=True)
class RecallResult:
    id: str
    relation: str
    answer: str
    correct: bool


def few_shot_prompts(tokenizer, facts: list[QAExample], exemplar_pool: list[QAExample], *, task: TaskSpec = DEFAULT_TASK,
                     seed: int = 0) -> list[str]:
    """The task's k-shot prompt of every fact; exemplars: one seeded draw per relation of
    ``exemplar_pool`` (:func:`knowtune.slick.exemplars.draw_one_set_per_relation`)."""
    k = task.fewshot.k
    sets = draw_one_set_per_relation(exemplar_pool, k, seed)
    prompts = task.prompts(tokenizer)
    return [prompts.fewshot(shots_for(sets.get(fact.relation, []), fact.id, k), fact.question) for fact in facts]


def few_shot_recall(model, tokenizer, facts: list[QAExample], exemplar_pool: list[QAExample], *, task: TaskSpec = DEFAULT_TASK,
                    seed: int = 0, batch_size: int = 64) -> list[RecallResult]:
    """Greedy k-shot answer of every fact (k = ``task.fewshot.k``), scored with the task's match rule."""
    prompts = few_shot_prompts(tokenizer, facts, exemplar_pool, task=task, seed=seed)
    answers = greedy_answers(model, tokenizer, prompts, task=task, batch_size=batch_size)
    return [RecallResult(f.id, f.relation, a, is_correct(a, f.answers, task.match)) for f, a in zip(facts, answers)]


def accuracy_by_exposure(results: list[RecallResult], exposures: dict[str, dict], buckets=DEFAULT_BUCKETS) -> list[dict]:
    """Rows ``{bucket, facts, accuracy, clean_facts, clean_accuracy}``; *clean* excludes contested facts."""
    rows = []
    for low, high in buckets:
        inside = [r for r in results if low <= exposures[r.id]["exposures"] <= high]
        clean = [r for r in inside if not exposures[r.id].get("distractor_exposures")]
        label = f"{low}" if low == high else (f"{low}+" if high >= 10**9 else f"{low}-{high}")
        rows.append(
            {
                "bucket": label,
                "facts": len(inside),
                "accuracy": sum(r.correct for r in inside) / len(inside) if inside else None,
                "clean_facts": len(clean),
                "clean_accuracy": sum(r.correct for r in clean) / len(clean) if clean else None,
            }
        )
    return rows
