"""``TrainConfig``: every setting of ``knowtune train``, validated before any heavy work.

Defaults follow knowtune's miniature of Gekhman et al. (EMNLP 2024) on the tiny base model
(docs FEASIBILITY, "fine-tuning sweep": AdamW lr 3e-4, batch 16, 30 epochs, evaluation every
epoch); the paper itself used 50 epochs, lr 1e-5, batch 128, dropout 0.05 on PaLM 2-M.
Self-distillation follows Kaplan, Gekhman et al. (arXiv 2604.15574, 2026). Every key is
documented in docs/train.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from knowtune.config import StageConfig
from knowtune.drift import DEFAULT_LAYER
from knowtune.evaluate import DEFAULT_IDK, DEFAULT_TEMPLATE, GROUPS
from knowtune.task import FinetuneTemplate, IdkPhrase
from knowtune.train.selfdistill import SelfDistillationConfig

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"]


class LoraSettings(StageConfig):
    """PEFT LoRA adapters (Hu et al. 2021); ``target_modules`` is a list of module names or ``all-linear``."""

    r: int = Field(8, ge=1)
    """LoRA rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or all-linear (every linear layer but the output head)."""


class SelfDistillSettings(SelfDistillationConfig):
    """The self-distillation loss (:class:`SelfDistillationConfig`) plus where the teacher comes from.

    ``teacher``: ``format_stage`` (the model after ``format_stage_epochs`` of SFT on the Known
    training examples; needs categories), ``base`` (the untouched base model; with LoRA the
    adapter-disabled student) or a path to a saved model. ``student_from_format_stage``: the
    student starts from the format-stage model (True) or from the base model (False).
    """

    teacher: str = "format_stage"
    """The teacher: format_stage (SFT on the Known training examples first; needs categories), base (the untouched base model) or a path to a saved model."""
    format_stage_epochs: int = Field(1, ge=1)
    """Epochs of the format stage that makes the format_stage teacher."""
    student_from_format_stage: bool = True
    """Start the student from the format-stage model (else from the base model)."""
    cache_teacher: bool = False
    """Compute the teacher's top-k log-probs once, store them in OUT/teacher_topk.safetensors and train without a live teacher (needs top_k)."""

    @model_validator(mode="after")
    def _cache_needs_top_k(self) -> "SelfDistillSettings":
        if self.cache_teacher and self.top_k is None:
            raise ValueError("cache_teacher stores the teacher's top-k log-probs: set top_k too (e.g. top_k: 32)")
        return self

    def loss_config(self) -> SelfDistillationConfig:
        """The loss settings alone, as :class:`SelfDistillationTrainer` takes them."""
        return SelfDistillationConfig(**self.model_dump(exclude={"teacher", "format_stage_epochs", "student_from_format_stage", "cache_teacher"}))


class DriftSettings(StageConfig):
    """Representation drift of held-out entities per epoch (Kaplan, Gekhman et al., arXiv 2604.15574, 2026).

    ``layer`` indexes ``hidden_states`` (0 = embeddings, -1 = last; :mod:`knowtune.drift`).
    ``split``: the examples measured (``test``: held-out facts, never trained on).
    ``categories``: SliCK groups kept (``HighlyKnown``, ``MaybeKnown``, ``WeaklyKnown``,
    ``Unknown``, ``Known``); ``None`` = the Known ones when the run has categories (the paper
    measures held-out *known* entities), all examples when it has none. ``max_examples``
    caps the set (a sample seeded with the run's seed).
    """

    layer: int = DEFAULT_LAYER
    """hidden_states index of the drift: 0 = embeddings, -1 = last layer."""
    split: Literal["train", "dev", "test", "ood"] = "test"
    """The examples whose drift is measured (test: held-out facts, never trained on)."""
    categories: list[str] | None = None
    """SliCK groups kept (HighlyKnown, MaybeKnown, WeaklyKnown, Unknown, Known); default: Known with categories, else all."""
    max_examples: int | None = Field(1000, ge=1)
    """Cap of the drift examples (a seeded sample)."""

    @field_validator("categories")
    @classmethod
    def _known_groups(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty list keeps no example; leave categories unset for the default (Known)")
            unknown = [name for name in value if name not in GROUPS]
            if unknown:
                raise ValueError(f"unknown groups {unknown}; use {', '.join(GROUPS)}")
        return value


#: Fields added after version 1, left out of a dump at these defaults so saved run configs stay as they were.
_ADDED_DEFAULTS = {"retrieval": None, "retrieval_k": 2, "retrieval_oracle_share": None}


class TrainConfig(StageConfig):
    """Settings of one fine-tuning run (see docs/train.md for each key)."""

    ADDED_DEFAULTS = _ADDED_DEFAULTS

    method: Literal["sft", "selfdistill"] = "sft"
    """sft (plain fine-tuning) or selfdistill (cross-entropy plus a KL term to a teacher)."""
    epochs: int = Field(30, ge=1)
    """Training epochs."""
    learning_rate: float = Field(3e-4, ge=0)
    """Peak AdamW learning rate (0 allowed: a control run)."""
    batch_size: int = Field(16, ge=1)
    """Examples per device step."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Steps per optimizer update."""
    seed: int = 0
    """Seed of initialisation (LoRA), data order and evaluation subsets."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    """Share of the steps with a linear warmup."""
    lr_scheduler: Scheduler = "linear"
    """Learning-rate schedule (transformers' lr_scheduler_type)."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Attention dropout set on the model (the paper used 0.05); default: the model's own."""
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of every weight (Hu et al. 2021)."""
    train_only: list[str] | None = None
    """Train only parameters matching these presets (attention, mlp, embeddings, lm_head, norms, all) or regexes; repeatable."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many epochs without a better dev exact match."""
    save_every_epoch: bool = False
    """Keep a checkpoint of every epoch in OUT/checkpoints."""
    save_best: bool = False
    """Keep the best-dev model in OUT/best."""
    report_to: list[str] = Field(default_factory=list)
    """Trainer reporters, e.g. tensorboard (logs in OUT/runs); repeatable."""
    eval_every_epoch: bool = True
    """Evaluate every epoch (false: only before and after training)."""
    max_eval_examples: int | None = Field(1000, ge=1)
    """Cap of each per-epoch evaluation set (a seeded sample)."""
    eval_batch_size: int = Field(64, ge=1)
    """Questions decoded together in evaluation."""
    idk_phrase: IdkPhrase = DEFAULT_IDK
    """The abstention answer (the answer rate counts answers that are not it)."""
    task: str | None = None
    """A task YAML (docs/task.md); prompt_template, answer_prefix, idk_phrase and max_new_tokens set here override it."""
    prompt_template: FinetuneTemplate = DEFAULT_TEMPLATE
    """Fine-tuning prompt; {question} is replaced by the question."""
    answer_prefix: str = ""
    """Text before the answer in the target (e.g. a space)."""
    answer_terminator: Literal["newline", "eos"] = "newline"
    """What ends the target: a newline or the EOS token."""
    padding_side: Literal["right", "left"] = "right"
    """Side training batches are padded on."""
    max_new_tokens: int = Field(24, ge=1)
    """Answer length cap in tokens (evaluation)."""
    selfdistill: SelfDistillSettings = Field(default_factory=SelfDistillSettings)
    """Self-distillation settings (method: selfdistill)."""
    drift: DriftSettings | None = None
    """Track the representation drift of held-out entities every epoch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (CUDA when available), cpu or cuda."""
    retrieval: str | None = None
    """A retrieval store (knowtune.retrieval): every training and evaluation prompt gets its question's top passages first (docs/train.md)."""
    retrieval_k: int = Field(2, ge=1)
    """Passages retrieved per question with retrieval."""
    retrieval_oracle_share: float | None = Field(None, ge=0, le=1)
    """With retrieval, training questions whose own passage may be among theirs (a seeded draw per question); the others get the top k without it
    (RAFT, Zhang et al. 2024). Default: every question its top k, as at answer time. Needs the training facts in the store."""

    @field_validator("train_only")
    @classmethod
    def _train_only_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list would freeze every parameter; leave train_only unset to train everything")
        return value

    @field_validator("report_to")
    @classmethod
    def _reporters(cls, value: list[str]) -> list[str]:
        return [] if value in (["none"], ["None"]) else value

    @model_validator(mode="after")
    def _cache_settings(self) -> "TrainConfig":
        if self.method == "selfdistill" and self.selfdistill.cache_teacher:
            if self.selfdistill.teacher == "base" and self.lora is not None:
                raise ValueError("selfdistill.cache_teacher needs a teacher model; with LoRA and teacher: base the teacher is the "
                                 "adapter-disabled student, which costs no memory: leave cache_teacher off")
            if self.padding_side != "right":
                raise ValueError("selfdistill.cache_teacher pads batches on the right: set padding_side: right")
        return self

    @model_validator(mode="after")
    def _retrieval_method(self) -> "TrainConfig":
        if self.retrieval is not None and self.method == "selfdistill":
            raise ValueError("retrieval fine-tunes with passages before each prompt; the self-distillation teacher is made and asked "
                             "without them: use method: sft with retrieval")
        if self.retrieval_oracle_share is not None and self.retrieval is None:
            raise ValueError("retrieval_oracle_share shapes the passages of retrieval: set retrieval to a store too")
        return self


    @model_validator(mode="after")
    def _needs_evaluation(self) -> "TrainConfig":
        if not self.eval_every_epoch and (self.early_stopping_patience is not None or self.save_best):
            raise ValueError("early_stopping_patience and save_best need the dev set evaluated every epoch: set eval_every_epoch: true")
        return self
