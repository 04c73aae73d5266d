"""Method comparison: learning new facts without forgetting known ones (Kaplan, Gekhman et al. 2026).

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It"
(arXiv 2604.15574, 2026) compare, on one mixture of Known and Unknown facts, plain SFT with
remedies that keep what the model knew. ``knowtune study`` runs the comparison when its
config has a ``compare_methods:`` section, on the curated variant D_X (X = ``mixture``,
50% Unknown by default). Each method is a variant plus changes to the study's ``train:``
settings:

============== ======================= ===================================================
method         trained on              train settings
============== ======================= ===================================================
sft            D_X                     as ``train:``
sft_es         (the sft run)           read at EARLY_STOP (best dev epoch), not CONVERGENCE
filtered       D_Known_X               as ``train:`` (Unknown examples dropped)
idk            D_IDK_X                 as ``train:`` (Unknown answers = "I don't know")
selfdistill    D_X                     ``method: selfdistill`` (CE + lambda KL to a teacher)
attention_only D_X                     ``train_only: [attention]`` (MLP/FFN, embeddings frozen)
lora           D_X                     ``lora:`` adapters, ``lora_learning_rate``
============== ======================= ===================================================

Measures, per method and epoch (all from ``metrics.jsonl``, in percent):

* new-fact learning: the fitted share of D_X's Unknown training facts (their greedy answer is
  the gold answer); none for ``filtered`` (no Unknown example) and ``idk`` (relabelled);
* held-out Known accuracy: exact match on the test facts of category ``held_out``
  (HighlyKnown by default, as in the paper's set-up): test facts are never trained on;
* forgetting: the drop of held-out Known accuracy from the base model. For HighlyKnown facts the
  base model's greedy few-shot answer is correct under every exemplar set (that is the
  category's definition), so the base accuracy is 100% and forgetting = 100 - accuracy;
* test exact match, answer rate, and representation drift when ``train.drift`` is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from knowtune.config import StageConfig
from knowtune.study.analysis import pct, select_epochs
from knowtune.train.config import LoraSettings, TrainConfig

Method = Literal["sft", "sft_es", "filtered", "idk", "selfdistill", "attention_only", "lora"]
METHODS: tuple[str, ...] = ("sft", "sft_es", "filtered", "idk", "selfdistill", "attention_only", "lora")
LABELS = {"sft": "SFT", "sft_es": "SFT + early stop", "filtered": "Unknown filtered", "idk": "\"I don't know\"",
          "selfdistill": "self-distillation", "attention_only": "attention only", "lora": "LoRA"}


class CompareMethodsConfig(StageConfig):
    """The ``compare_methods:`` section of a study config (docs/study.md, "Method comparison")."""

    mixture: int = Field(50, gt=0, lt=100)
    """The variant D_X compared on: X percent Unknown."""
    methods: list[Method] = Field(default_factory=lambda: list(METHODS))
    """Methods compared: sft, sft_es, filtered, idk, selfdistill, attention_only, lora."""
    held_out: Literal["HighlyKnown"] = "HighlyKnown"
    """SliCK category of the held-out test facts whose forgetting is measured."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """LoRA settings of the lora method."""
    lora_learning_rate: float | None = Field(3e-3, gt=0)
    """Learning rate of the lora method (unset: the train: one)."""
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per method, train: keys changed for it, e.g. {selfdistill: {selfdistill: {lambda_kl: 2}}}."""
    baselines: bool = False
    """Also compare SliCK with P(True), and "I don't know" fine-tuning with answer-time verification (needs sft and idk)."""
    baseline_questions: int = Field(300, ge=1)
    """Test questions (a seeded sample) the baselines are measured on."""

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        return distinct_choices(value, "compares nothing; leave methods unset to compare all of " + ", ".join(METHODS), "a method")

    @model_validator(mode="after")
    def _baselines_need_sft_and_idk(self) -> "CompareMethodsConfig":
        if self.baselines and not {"sft", "idk"} <= set(self.methods):
            raise ValueError("baselines compares with the sft and idk runs: add sft and idk to methods, or set baselines: false")
        return self

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(value) - set(METHODS) - {"sft_es"})
        if unknown:
            raise ValueError(f"overrides names {', '.join(unknown)}, not a method (methods: {', '.join(METHODS)})")
        if "sft_es" in value:
            raise ValueError("sft_es reads the sft run at its best dev epoch; put its settings under overrides.sft")
        return value

    def variants(self) -> dict[str, str]:
        """Method -> the curated variant it trains on (``sft_es`` reads the ``sft`` run)."""
        x = self.mixture
        names = {"sft": f"D_{x}", "sft_es": f"D_{x}", "filtered": f"D_Known_{x}", "idk": f"D_IDK_{x}",
                 "selfdistill": f"D_{x}", "attention_only": f"D_{x}", "lora": f"D_{x}"}
        return {m: names[m] for m in self.methods}

    def train_config(self, method: str, base: TrainConfig) -> TrainConfig:
        """The study's ``train:`` settings changed as ``method`` needs, then ``overrides[method]``; validated."""
        method = "sft" if method == "sft_es" else method
        settings = base.model_dump(mode="json")
        if method == "selfdistill":
            settings["method"] = "selfdistill"
        elif method == "attention_only":
            settings["train_only"] = ["attention"]
        elif method == "lora":
            settings["lora"] = self.lora.model_dump(mode="json")
            if self.lora_learning_rate is not None:
                settings["learning_rate"] = self.lora_learning_rate
        merge_settings(settings, self.overrides.get(method, {}))
        return TrainConfig.model_validate(settings)

    def trained_methods(self) -> list[str]:
        """The methods that need a training run (``sft_es`` needs the ``sft`` one)."""
        wanted = [("sft" if m == "sft_es" else m) for m in self.methods]
        return list(dict.fromkeys(wanted))

    def plans(self, base: TrainConfig) -> dict[str, MethodPlan]:
        """Method -> its variant and training settings, for every method that needs a run."""
        variants = self.variants()
        return {m: MethodPlan(variants[m], self.train_config(m, base)) for m in self.trained_methods()}


@dataclass(frozen=True)
class MethodPlan:
    """What one compared method trains: the curated ``variant`` with the settings ``config``."""

    variant: str
    config: TrainConfig


def distinct_choices(value: list[str], if_empty: str, item: str) -> list[str]:
    """``value`` when it names at least one choice, none twice; else the ValueError a section's list validator raises."""
    if not value:
        raise ValueError(f"an empty list {if_empty}")
    if len(set(value)) != len(value):
        raise ValueError(f"{item} is listed twice")
    return value


def merge_settings(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    """Update ``target`` with ``changes``, nested mappings key by key (``selfdistill: {lambda_kl: 2}`` keeps the other keys)."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge_settings(target[key], value)
        else:
            target[key] = value


@dataclass
class MethodRun:
    """One method's per-epoch records and which epoch it is judged at."""

    method: str
    variant: str
    metrics: list[dict[str, Any]]
    read: Literal["es", "conv"] = "conv"
    params: dict[str, Any] = field(default_factory=dict)


def measures(record: Mapping[str, Any], method: str, held_out: str = "HighlyKnown") -> dict[str, Any]:
    """The comparison's measures at one evaluation record (percent; None where they do not apply)."""
    held = record.get(f"test/exact_match/{held_out}")
    learns_facts = method not in ("filtered", "idk") and record.get("train/n/Unknown")
    return {
        "epoch": record["epoch"],
        "new_facts": pct(record.get("train/exact_match/Unknown")) if learns_facts else None,
        "held_out": pct(held),
        "forgetting": None if held is None else 100.0 - 100.0 * held,
        "test": pct(record.get("test/exact_match")),
        "answer_rate": pct(record.get("test/answer_rate")),
        "accuracy_answered": pct(record.get("test/accuracy_answered")),
        "drift": record.get("drift/cosine"),
    }


def judged_epoch(run: MethodRun) -> int:
    """CONVERGENCE (the last epoch), or EARLY_STOP (best dev exact match, epoch >= 1) for ``sft_es``."""
    es, conv = select_epochs(run.metrics)
    return es if run.read == "es" and es is not None else conv


def compare(runs: Sequence[MethodRun], held_out: str = "HighlyKnown") -> dict[str, Any]:
    """``{"table": [one row per method at its judged epoch], "curves": {method: [per-epoch measures]}}``."""
    table, curves = [], {}
    for run in runs:
        by_epoch = {r["epoch"]: r for r in run.metrics}
        epoch = judged_epoch(run)
        row = measures(by_epoch[epoch], run.method, held_out)
        row.update(method=run.method, label=LABELS[run.method], variant=run.variant, read="EARLY_STOP" if run.read == "es" else "CONVERGENCE")
        table.append(row)
        curves[run.method] = [measures(r, run.method, held_out) for r in sorted(run.metrics, key=lambda r: r["epoch"])]
    return {"held_out": held_out, "table": table, "curves": curves}


def _first_epoch_at(curve: Sequence[Mapping[str, Any]], level: float) -> Mapping[str, Any]:
    """The first evaluation after training (epoch >= 1) with new-fact learning >= ``level``, else the last."""
    trained = [p for p in curve if p["epoch"] >= 1]
    return next((p for p in trained if (p["new_facts"] or 0.0) >= level), trained[-1])


def known_only_floor(comparison: Mapping[str, Any]) -> float:
    """The forgetting of the Known-only run (``filtered``, at CONVERGENCE), else 0.

    Kaplan, Gekhman et al. read forgetting against their "Known-only data" row: held-out facts
    that format learning alone does not reach (here: the zero-shot format against the base
    model's few-shot answers) are not knowledge the new facts destroyed. The findings below
    measure forgetting beyond this floor when the comparison trained ``filtered``.
    """
    row = next((r for r in comparison.get("table", []) if r["method"] == "filtered"), None)
    return row["forgetting"] if row is not None and row["forgetting"] is not None else 0.0


def _floor_text(floor: float) -> str:
    return (f"; forgetting counted beyond the Known-only run (Unknown filtered), which forgets {floor:.1f} at CONVERGENCE"
            if floor else "; no Known-only run (filtered) to count forgetting beyond: raw forgetting")


def selfdistill_reduces_forgetting(comparison: Mapping[str, Any], factor: float = 3.0) -> dict[str, Any]:
    """Self-distillation forgets at least ``factor`` times less held-out Known than SFT at comparable new-fact learning.

    Comparable: both are read at the first epoch where they have fitted ``level`` % of the
    Unknown training facts, ``level`` = the lower of the two runs' best new-fact learning
    (so the run that learns less is read at its best, the other as soon as it gets there).
    Forgetting is counted beyond :func:`known_only_floor`. value = forgetting(SFT) /
    forgetting(self-distillation).
    """
    from knowtune.study.findings import finding

    name = "selfdistill_reduces_forgetting"
    curves = comparison.get("curves", {})
    if "sft" not in curves or "selfdistill" not in curves:
        return finding(name, None, None, "not tested: compare_methods needs both sft and selfdistill")
    best = {m: max((p["new_facts"] or 0.0) for p in curves[m] if p["epoch"] >= 1) for m in ("sft", "selfdistill")}
    level = min(best.values())
    floor = known_only_floor(comparison)
    sft, sd = _first_epoch_at(curves["sft"], level), _first_epoch_at(curves["selfdistill"], level)
    lost_sft, lost_sd = max(sft["forgetting"] - floor, 0.0), max(sd["forgetting"] - floor, 0.0)
    ratio = lost_sft / lost_sd if lost_sd > 0 else (float("inf") if lost_sft > 0 else 1.0)
    holds = lost_sft > 0 and lost_sft >= factor * lost_sd
    detail = (f"at {level:.0f}% of Unknown training facts fitted: SFT (epoch {sft['epoch']}) loses {lost_sft:.1f} points "
              f"of held-out {comparison.get('held_out', 'Known')} accuracy, self-distillation (epoch {sd['epoch']}) "
              f"{lost_sd:.1f} ({ratio:.1f}x less; {factor:g}x needed); raw forgetting {sft['forgetting']:.1f} vs "
              f"{sd['forgetting']:.1f}; best new-fact learning SFT {best['sft']:.0f}%, self-distillation "
              f"{best['selfdistill']:.0f}%" + _floor_text(floor))
    return finding(name, bool(holds), None if ratio == float("inf") else ratio, detail)


def attention_only_preserves(comparison: Mapping[str, Any], share: float = 0.5) -> dict[str, Any]:
    """Training attention only keeps held-out Known facts and learns few new ones (at CONVERGENCE).

    Holds when attention-only forgetting (beyond :func:`known_only_floor`) is at most
    ``share`` of SFT's and its new-fact learning is at most ``share`` of SFT's.
    value = attention-only new-fact learning (%).
    """
    from knowtune.study.findings import finding

    name = "attention_only_preserves"
    rows = {row["method"]: row for row in comparison.get("table", [])}
    if "sft" not in rows or "attention_only" not in rows:
        return finding(name, None, None, "not tested: compare_methods needs both sft and attention_only")
    sft, att = rows["sft"], rows["attention_only"]
    floor = known_only_floor(comparison)
    lost_sft, lost_att = max(sft["forgetting"] - floor, 0.0), max(att["forgetting"] - floor, 0.0)
    keeps = lost_att <= share * lost_sft
    learns_few = (att["new_facts"] or 0.0) <= share * (sft["new_facts"] or 0.0)
    detail = (f"at CONVERGENCE: attention only loses {lost_att:.1f} points of held-out {comparison.get('held_out', 'Known')} "
              f"accuracy (SFT {lost_sft:.1f}; raw forgetting {att['forgetting']:.1f} vs {sft['forgetting']:.1f}) and fits "
              f"{att['new_facts'] or 0.0:.0f}% of Unknown training facts (SFT {sft['new_facts'] or 0.0:.0f}%); holds when both are "
              f"at most {share:.0%} of SFT's" + _floor_text(floor))
    return finding(name, bool(keeps and learns_few), att["new_facts"], detail)


def method_findings(comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [selfdistill_reduces_forgetting(comparison), attention_only_preserves(comparison)]


# -- baselines (issue 12): P(True) against SliCK, answer-time verification against "I don't know" --------------

BASELINES_FILE = "baselines.json"


def measure_baselines(study_out, base_model: str, test: Sequence, pool: Sequence, categories: Mapping[str, str], *, audit_task,
                      train_task, seed: int, questions: int, sft_dir: str, idk_dir: str, device: str = "auto") -> dict[str, Any]:
    """On a seeded sample of ``questions`` categorised test questions: the base model's P(True) of its own
    answers (:func:`knowtune.ptrue.score_ptrue`, the audit's prompts), the sft run's final model's
    correctness and its sampled-answer agreement (:func:`knowtune.abstain.agreement_abstention`, 10
    samples), and the idk run's final model's answer rate and answered accuracy; written to ``baselines.json``."""
    import random
    from pathlib import Path

    from knowtune.abstain import AbstainSettings, agreement_abstention
    from knowtune.evaluate import evaluate_examples
    from knowtune.io import atomic_write_json
    from knowtune.models import load
    from knowtune.ptrue import score_ptrue

    chosen = sorted((e for e in test if e.id in categories), key=lambda e: e.id)
    chosen = sorted(random.Random(seed).sample(chosen, min(questions, len(chosen))), key=lambda e: e.id)
    model, tokenizer = load(base_model, device)
    p_true = {r.id: r.p_true for r in score_ptrue(model, tokenizer, chosen, pool, task=audit_task, seed=seed)}
    out = Path(study_out)
    model, tokenizer = load(out / sft_dir / "model", device)
    sft = evaluate_examples(model, tokenizer, chosen, task=train_task)
    abstention = agreement_abstention(model, tokenizer, chosen, sft, AbstainSettings(method="agreement", samples=10), task=train_task)
    model, tokenizer = load(out / idk_dir / "model", device)
    idk = evaluate_examples(model, tokenizer, chosen, task=train_task).overall
    record = {"questions": len(chosen), "p_true": p_true, "categories": {e.id: categories[e.id] for e in chosen},
              "sft_correct": {p.id: p.correct for p in sft.predictions}, "verification": abstention.to_dict(),
              "idk": {"answer_rate": idk.answer_rate, "accuracy_answered": idk.accuracy_answered}}
    atomic_write_json(out / BASELINES_FILE, record)
    return record


def slick_unknown_below_ptrue(baselines: Mapping[str, Any]) -> dict[str, Any]:
    """After fine-tuning (sft, CONVERGENCE), test accuracy on SliCK's Unknown questions is below that on as
    many lowest-P(True) questions (Gekhman et al. 2024, section 6: SliCK finds the facts fine-tuning cannot
    make the model answer better than P(True) does). value = accuracy(lowest P(True)) - accuracy(Unknown), points."""
    from knowtune.study.findings import finding

    correct, p_true, categories = baselines["sft_correct"], baselines["p_true"], baselines["categories"]
    unknown = [i for i in correct if categories[i] == "Unknown"]
    if not unknown:
        return finding("slick_unknown_below_ptrue", None, None, "not tested: no Unknown test question in the sample")
    lowest = sorted(correct, key=lambda i: (p_true[i], i))[:len(unknown)]
    acc_unknown = 100.0 * sum(correct[i] for i in unknown) / len(unknown)
    acc_lowest = 100.0 * sum(correct[i] for i in lowest) / len(lowest)
    shared = len(set(unknown) & set(lowest))
    detail = (f"fine-tuned (sft, CONVERGENCE) test accuracy on the {len(unknown)} SliCK Unknown questions {acc_unknown:.1f}%, on the "
              f"{len(lowest)} lowest-P(True) questions {acc_lowest:.1f}% ({shared} questions in both; {baselines['questions']} sampled)")
    return finding("slick_unknown_below_ptrue", acc_unknown < acc_lowest, acc_lowest - acc_unknown, detail)


def accuracy_at_rate(curve: Sequence[Mapping[str, Any]], rate: float) -> float | None:
    """Answered accuracy of the agreement rule at answer rate ``rate``: linear between the curve's points,
    constant beyond its ends (as :func:`knowtune.abstain.curve_area` reads the curve)."""
    pairs = sorted({(p["answer_rate"], p["accuracy_answered"]) for p in curve if p["answered"]})
    if not pairs:
        return None
    if rate <= pairs[0][0]:
        return pairs[0][1]
    for (c0, a0), (c1, a1) in zip(pairs, pairs[1:]):
        if rate <= c1:
            return a0 + (a1 - a0) * (rate - c0) / (c1 - c0)
    return pairs[-1][1]


def verification_raises_answered_accuracy(baselines: Mapping[str, Any]) -> dict[str, Any]:
    """Answer-time verification (agreement of sampled answers, on the sft model) answers more accurately than
    "I don't know" fine-tuning (idk, CONVERGENCE) at the same answer rate. value = the difference in points."""
    from knowtune.study.findings import finding

    idk, curve = baselines["idk"], baselines["verification"]["curve"]
    if idk["accuracy_answered"] is None:
        return finding("verification_raises_answered_accuracy", None, None, "not tested: the idk model answered nothing")
    verified = accuracy_at_rate(curve, idk["answer_rate"])
    diff = 100.0 * (verified - idk["accuracy_answered"])
    detail = (f"at the idk model's answer rate {100 * idk['answer_rate']:.1f}%: verification (sft model, agreement of "
              f"{baselines['verification']['samples']} samples) answers {100 * verified:.1f}% correctly, \"I don't know\" "
              f"fine-tuning {100 * idk['accuracy_answered']:.1f}%; full-coverage sft accuracy {100 * curve[0]['accuracy_answered']:.1f}%, "
              f"area under the accuracy-coverage curve {baselines['verification']['area']:.3f}")
    return finding("verification_raises_answered_accuracy", diff > 0, diff, detail)


def baseline_findings(baselines: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [slick_unknown_below_ptrue(baselines), verification_raises_answered_accuracy(baselines)]
