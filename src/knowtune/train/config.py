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
from knowtune.train.selfdistill import SelfDistillationConfig

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"]


class LoraSettings(StageConfig):
    """PEFT LoRA adapters (Hu et al. 2021); ``target_modules`` is a list of module names or ``all-linear``."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class SelfDistillSettings(SelfDistillationConfig):
    """The self-distillation loss (:class:`SelfDistillationConfig`) plus where the teacher comes from.

    ``teacher``: ``format_stage`` (the model after ``format_stage_epochs`` of SFT on the Known
    training examples; needs categories), ``base`` (the untouched base model; with LoRA the
    adapter-disabled student) or a path to a saved model. ``student_from_format_stage``: the
    student starts from the format-stage model (True) or from the base model (False).
    """

    teacher: str = "format_stage"
    format_stage_epochs: int = Field(1, ge=1)
    student_from_format_stage: bool = True
    cache_teacher: bool = False

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
    split: Literal["train", "dev", "test", "ood"] = "test"
    categories: list[str] | None = None
    max_examples: int | None = Field(1000, ge=1)

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


class TrainConfig(StageConfig):
    """Settings of one fine-tuning run (see docs/train.md for each key)."""

    method: Literal["sft", "selfdistill"] = "sft"
    epochs: int = Field(30, ge=1)
    learning_rate: float = Field(3e-4, ge=0)
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    seed: int = 0
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    lr_scheduler: Scheduler = "linear"
    dropout: float | None = Field(None, ge=0, lt=1)
    lora: LoraSettings | None = None
    train_only: list[str] | None = None
    early_stopping_patience: int | None = Field(None, ge=1)
    save_every_epoch: bool = False
    save_best: bool = False
    report_to: list[str] = Field(default_factory=list)
    eval_every_epoch: bool = True
    max_eval_examples: int | None = Field(1000, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    idk_phrase: str = DEFAULT_IDK
    task: str | None = None  # a task YAML (docs/task.md); prompt_template, answer_prefix, idk_phrase, max_new_tokens override it
    prompt_template: str = DEFAULT_TEMPLATE
    answer_prefix: str = ""
    answer_terminator: Literal["newline", "eos"] = "newline"
    padding_side: Literal["right", "left"] = "right"
    max_new_tokens: int = Field(24, ge=1)
    selfdistill: SelfDistillSettings = Field(default_factory=SelfDistillSettings)
    drift: DriftSettings | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("prompt_template")
    @classmethod
    def _has_question_slot(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("must contain {question}, e.g. 'Answer the following question. {question}\\n'")
        return value

    @field_validator("idk_phrase")
    @classmethod
    def _idk_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be non-blank text, e.g. \"I don't know\"")
        return value

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
    def _needs_evaluation(self) -> "TrainConfig":
        if not self.eval_every_epoch and (self.early_stopping_patience is not None or self.save_best):
            raise ValueError("early_stopping_patience and save_best need the dev set evaluated every epoch: set eval_every_epoch: true")
        return self
