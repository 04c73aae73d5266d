"""Few-shot recall of a world's facts, bucketed by pretraining exposure (ground truth).

The quality check of the embedded base model: each fact is asked with a 4-shot
``Q: ...`` / ``A: ...`` prompt (exemplars: a seeded draw from the same relation's dev
split), answered greedily, cut at the first newline and scored by exact match
(:mod:`knowtune.matching`). Accuracy per exposure bucket shows a graded range, from
never-seen facts (near 0) to the most exposed (near 1).
"""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass

import torch

from knowtune.data.schema import QAExample
from knowtune.matching import extract_answer, is_correct
from knowtune.models import pad_token_id

#: Upper bounds (inclusive) of the exposure buckets, by corpus occurrences of the gold object.
DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 40), (41, 10**9))


def few_shot_prompt(exemplars: list[QAExample], question: str) -> str:
    """The SliCK prompt format (Gekhman et al. 2024, section 2): ``Q: q\\nA: a`` lines, then ``Q: q\\nA:``."""
    shots = "".join(f"Q: {ex.question}\nA: {ex.answers[0]}\n" for ex in exemplars)
    return f"{shots}Q: {question}\nA:"


_STOP_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def newline_token_ids(tokenizer) -> list[int]:
    """Ids of every token whose text contains a newline, plus EOS: the answer stops at any of them.

    The same rule as the SliCK backend (:func:`knowtune.slick.tokens.stop_token_mask`),
    computed once per tokenizer: evaluation calls this every epoch.
    """
    if tokenizer not in _STOP_IDS:
        from knowtune.slick.tokens import eos_token_ids, stop_token_mask

        mask = stop_token_mask(tokenizer, len(tokenizer), "\n", eos_token_ids(None, tokenizer))
        _STOP_IDS[tokenizer] = mask.nonzero().flatten().tolist()
    return _STOP_IDS[tokenizer]


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], *, batch_size: int = 64, max_new_tokens: int = 24) -> list[str]:
    """Greedy answers to ``prompts`` with batched, left-padded ``model.generate``.

    Only ``input_ids`` and ``attention_mask`` reach ``generate`` (a tokenizer that also
    returns ``token_type_ids``, as knowtune's own does, would make Llama's ``generate``
    refuse them); the tokenizer's ``padding_side`` is restored afterwards.
    """
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = pad_token_id(tokenizer)
    stop_ids = newline_token_ids(tokenizer)
    answers = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False).to(model.device)
            output = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id)
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            answers.extend(extract_answer(text) for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers


def exemplar_sets(dev: list[QAExample], k: int, seed: int) -> dict[str, list[QAExample]]:
    """One seeded draw of ``k`` dev exemplars per relation (``k + 1`` drawn, to skip the question itself)."""
    rng = random.Random(seed)
    by_relation: dict[str, list[QAExample]] = {}
    for ex in sorted(dev, key=lambda e: e.id):
        by_relation.setdefault(ex.relation, []).append(ex)
    return {relation: rng.sample(pool, min(k + 1, len(pool))) for relation, pool in by_relation.items()}


@dataclass(frozen=True)
class RecallResult:
    id: str
    relation: str
    answer: str
    correct: bool


def few_shot_recall(model, tokenizer, facts: list[QAExample], exemplar_pool: list[QAExample], *, k: int = 4, seed: int = 0, batch_size: int = 64) -> list[RecallResult]:
    """Greedy 4-shot answer of every fact; exemplars from ``exemplar_pool`` of the same relation."""
    sets = exemplar_sets(exemplar_pool, k, seed)
    prompts = []
    for fact in facts:
        shots = [ex for ex in sets.get(fact.relation, []) if ex.id != fact.id][:k]
        prompts.append(few_shot_prompt(shots, fact.question))
    answers = greedy_answers(model, tokenizer, prompts, batch_size=batch_size)
    return [RecallResult(f.id, f.relation, a, is_correct(a, f.answers)) for f, a in zip(facts, answers)]


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
