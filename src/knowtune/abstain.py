"""Answer-time verification by self-agreement (``knowtune evaluate --abstain agreement``).

The model answers a question only when its sampled answers agree with its greedy one: a
sampling-consistency check in the spirit of self-consistency (Wang et al., ICLR 2023) and
SelfCheckGPT (Manakul et al., EMNLP 2023). For question q with greedy answer g (the one
``evaluate`` scores) and N answers s_1..s_N sampled from the same prompt (temperature,
top-k), with norm = :func:`knowtune.matching.normalize_answer`:

    agreement(q)         = #{i : norm(s_i) = norm(g)}                  (0..N)
    answered_T(q)        = answered(q) and agreement(q) >= T           (answered: g is not the abstention phrase)
    answer_rate(T)       = #answered_T / n
    accuracy_answered(T) = #(correct and answered_T) / #answered_T

The accuracy-coverage curve is (answer_rate(T), accuracy_answered(T)) for T = 0..N
(T = 0 answers every question evaluate answers), and its area is

    area = integral over coverage c in [0, 1] of accuracy(c) dc

with accuracy linear between the curve's points, constant below its lowest coverage and
above its highest (points with nothing answered are left out). A confidence that tells
right from wrong answers gives an area above the accuracy at full coverage; one that
does not gives about that accuracy.

The samples are decoded by the SliCK audit's backend (:class:`knowtune.slick.generation.HFBackend`:
batched, the prompts' common prefix cached once per relation, one prefill per question
for its N samples) with per-question sampling keys (:mod:`knowtune.slick.sampling`), so
they do not depend on batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from knowtune.config import StageConfig
from knowtune.data.schema import QAExample
from knowtune.matching import DEFAULT_MATCH, MatchConfig, normalize_answer


class AbstainSettings(StageConfig):
    """``evaluate``'s answer-time verification (keys ``abstain.*``; flags --abstain, --samples, --threshold)."""

    method: Literal["none", "agreement"] = "none"
    """none, or agreement: answer only when at least --threshold of --samples sampled answers agree with the greedy one."""
    samples: int = Field(10, ge=1)
    """Sampled answers per question."""
    threshold: int = Field(5, ge=0)
    """Answer when at least this many samples agree with the greedy answer (0..samples)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the samples."""
    top_k: int = Field(40, ge=1)
    """Sampling top-k of the samples."""
    seed: int = 0
    """Seed of the samples."""

    @model_validator(mode="after")
    def _threshold_within_samples(self) -> "AbstainSettings":
        if self.threshold > self.samples:
            raise ValueError(f"threshold {self.threshold} is more than samples {self.samples}: "
                             "--threshold counts agreeing samples, so it must be at most --samples")
        return self


class AnsweredRates:
    """Answer rate and accuracy on answered questions, for anything that counts ``n``, ``answered`` and ``correct_answered``."""

    n: int
    answered: int
    correct_answered: int

    @property
    def answer_rate(self) -> float | None:
        return self.answered / self.n if self.n else None

    @property
    def accuracy_answered(self) -> float | None:
        return self.correct_answered / self.answered if self.answered else None


@dataclass(frozen=True)
class CurvePoint(AnsweredRates):
    """The abstention rule at one threshold: counts over the n questions."""

    threshold: int
    n: int
    answered: int
    correct_answered: int

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "n": self.n, "answered": self.answered, "correct_answered": self.correct_answered,
                "answer_rate": self.answer_rate, "accuracy_answered": self.accuracy_answered}


def agreement_counts(greedy: Sequence[str], samples: Sequence[Sequence[str]], match: MatchConfig = DEFAULT_MATCH) -> list[int]:
    """agreement(q) = number of sampled answers equal to the greedy answer after normalisation."""
    counts = []
    for answer, drawn in zip(greedy, samples, strict=True):
        target = normalize_answer(answer, match)
        counts.append(sum(normalize_answer(s, match) == target for s in drawn))
    return counts


def curve(correct: Sequence[bool], answered: Sequence[bool], agreement: Sequence[int], samples: int) -> list[CurvePoint]:
    """The rule at every threshold T = 0..``samples`` (module docstring)."""
    points = []
    for t in range(samples + 1):
        kept = [a and g >= t for a, g in zip(answered, agreement, strict=True)]
        points.append(CurvePoint(t, len(kept), sum(kept), sum(k and c for k, c in zip(kept, correct))))
    return points


def curve_area(points: Sequence[CurvePoint]) -> float | None:
    """Area under accuracy over coverage in [0, 1]: linear between points, constant beyond the ends."""
    pairs = sorted({(p.answer_rate, p.accuracy_answered) for p in points if p.answered})
    if not pairs:
        return None
    area = pairs[0][0] * pairs[0][1] + (1.0 - pairs[-1][0]) * pairs[-1][1]
    for (c0, a0), (c1, a1) in zip(pairs, pairs[1:]):
        area += (c1 - c0) * (a0 + a1) / 2
    return area


@dataclass
class AbstentionResult:
    """Agreement per question, the curve over every threshold, its area, and the chosen threshold's point."""

    settings: AbstainSettings
    agreement: list[int] = field(repr=False)
    samples: list[list[str]] = field(repr=False)
    points: list[CurvePoint]

    @property
    def area(self) -> float | None:
        return curve_area(self.points)

    @property
    def chosen(self) -> CurvePoint:
        return self.points[self.settings.threshold]

    def to_dict(self) -> dict[str, Any]:
        """The ``abstention`` block of ``metrics.json``."""
        return {"method": self.settings.method, "samples": self.settings.samples, "threshold": self.settings.threshold,
                "temperature": self.settings.temperature, "top_k": self.settings.top_k, "seed": self.settings.seed,
                **{k: v for k, v in self.chosen.to_dict().items() if k != "threshold"},
                "curve": [p.to_dict() for p in self.points], "area": self.area}

    def per_example(self, predictions: Sequence) -> list[dict[str, Any]]:
        """One record per question (``abstention.jsonl``): greedy answer, samples, agreement, whether answered."""
        t = self.settings.threshold
        return [{"id": p.id, "prediction": p.prediction, "correct": p.correct, "samples": s, "agreement": g,
                 "answered": p.answered and g >= t} for p, s, g in zip(predictions, self.samples, self.agreement)]

    def write(self, out, predictions: Sequence) -> None:
        """``abstention.jsonl`` in ``out``: :meth:`per_example` (written atomically)."""
        from pathlib import Path

        from knowtune.io import atomic_write_jsonl

        atomic_write_jsonl(Path(out) / "abstention.jsonl", self.per_example(predictions))

    def lines(self) -> list[str]:
        """The printed summary: the chosen threshold, then the curve."""
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        n = self.settings.samples
        head = (f"abstention (agreement, {n} samples at T={self.settings.temperature:g}): threshold {self.settings.threshold}/{n}: "
                f"answer rate {fmt(self.chosen.answer_rate)}, accuracy (answered) {fmt(self.chosen.accuracy_answered)}; "
                f"area under the accuracy-coverage curve {fmt(self.area)}")
        rows = [f"  >= {p.threshold:>2}/{n}: answer rate {fmt(p.answer_rate)}  accuracy (answered) {fmt(p.accuracy_answered)}" for p in self.points]
        return [head, *rows]


def sample_answers(model, tokenizer, examples: Sequence[QAExample], prompts: Sequence[str], settings: AbstainSettings, *, task,
                   batch_size: int = 64, engine: str = "auto", log: Callable[[str], None] | None = None) -> list[list[str]]:
    """``settings.samples`` sampled answers to each prompt text, through the audit backend: the
    prompts of a relation share their longest common token prefix, cached once."""
    from knowtune.matching import extract_answer
    from knowtune.slick.generation import HFBackend, Request
    from knowtune.slick.protocol import stable_hash
    from knowtune.slick.sampling import sample_keys
    from knowtune.slick.tokens import decode_batch

    if not examples:
        return []
    builder = task.prompts(tokenizer)
    encoded = [tuple(ids) for ids in builder.encode(list(prompts))]
    relations = sorted({e.relation for e in examples})
    prefixes = [_common_prefix([ids for e, ids in zip(examples, encoded) if e.relation == r]) for r in relations]
    index = {r: i for i, r in enumerate(relations)}
    backend = HFBackend(model, tokenizer, stop=task.generation.stop, max_new_tokens=task.generation.max_new_tokens,
                        temperature=settings.temperature, top_k=settings.top_k, batch_size=batch_size * settings.samples, engine=engine, log=log)
    backend.set_prefixes([list(p) for p in prefixes])
    keys = sample_keys(settings.seed, [stable_hash(e.id) for e in examples], 1, settings.samples)
    outputs = backend.generate([Request(index[e.relation], ids, keys[j][0]) for j, (e, ids) in enumerate(zip(examples, encoded))])
    texts = iter(decode_batch(tokenizer, [row for rows in outputs for row in rows]))
    return [[extract_answer(next(texts), task.generation.stop) for _ in rows] for rows in outputs]


def _common_prefix(rows: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return first[:n]


def agreement_abstention(model, tokenizer, examples: Sequence[QAExample], result, settings: AbstainSettings, *, task,
                         fewshot: bool = False, seed: int = 0, exemplar_pool: Sequence[QAExample] = (), batch_size: int = 64,
                         log: Callable[[str], None] | None = None) -> AbstentionResult:
    """The agreement rule on an :class:`~knowtune.evaluate.EvalResult` of ``examples``: samples from the
    same prompts ``evaluate`` used (``fewshot``, ``seed``, ``exemplar_pool`` as given to it)."""
    from knowtune.evaluate import evaluation_prompts

    prompts = evaluation_prompts(tokenizer, examples, task, fewshot=fewshot, seed=seed, exemplar_pool=exemplar_pool)
    was_training = model.training
    model.eval()
    try:
        samples = sample_answers(model, tokenizer, examples, prompts, settings, task=task, batch_size=batch_size, log=log)
    finally:
        model.train(was_training)
    predictions = result.predictions
    agreement = agreement_counts([p.prediction for p in predictions], samples, task.match)
    points = curve([p.correct for p in predictions], [p.answered for p in predictions], agreement, settings.samples)
    return AbstentionResult(settings, agreement, samples, points)
