"""Self-distillation SFT as a transformers ``Trainer`` that overrides only ``compute_loss``.

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It"
(arXiv 2604.15574, 2026): stage 1 fine-tunes one epoch on Known-only examples and freezes
that snapshot as the teacher; stage 2 trains on the mixed data with
``CE(targets) + lambda * KL(teacher || student)`` at temperature tau (see
:class:`~knowtune.train.losses.SelfDistillationLoss` for the formula and the options).

The teacher is one of:

- a separate module (``teacher=`` the stage-1 snapshot), run in eval mode under ``no_grad``
  on the student's inputs;
- ``teacher=None`` with a PEFT student: the student with its adapters disabled
  (``model.disable_adapter()``), i.e. the frozen base model, at no extra memory;
- cached top-k log-probs in the batch (``teacher_topk_logprobs`` / ``teacher_topk_indices``,
  made by :func:`precompute_teacher_topk`), which take precedence over the other two.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from transformers import Trainer, TrainerCallback

from knowtune.config import StageConfig
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.io import atomic_write_bytes
from knowtune.train.losses import SelfDistillationLoss, SelfDistillationOutput

TEACHER_TOPK_LOGPROBS = "teacher_topk_logprobs"
TEACHER_TOPK_INDICES = "teacher_topk_indices"
CACHE_FILE = "teacher_topk.safetensors"
CACHE_FORMAT = "knowtune-teacher-topk/1"


class SelfDistillationConfig(StageConfig):
    """The self-distillation term of stage 2 (paper: lambda = 1, tau = 0.5, the rest unstated)."""

    lambda_kl: float = Field(1.0, ge=0, description="weight of the KL term; 0 is plain SFT")
    temperature: float = Field(0.5, gt=0, description="softmax temperature tau of both distributions")
    direction: Literal["forward", "reverse"] = Field("forward", description="forward KL(T||S) or reverse KL(S||T)")
    scale_by_t2: bool = Field(True, description="multiply the KL term by tau^2 (Hinton et al. 2015)")
    top_k: int | None = Field(None, ge=1, description="teacher top-k tokens + one tail bucket; None = full vocab")
    kl_tokens: Literal["answer", "sequence"] = Field("answer", description="KL on answer tokens, or on every real position")

    def make_loss(self, ignore_index: int = -100) -> SelfDistillationLoss:
        return SelfDistillationLoss(**self.model_dump(), ignore_index=ignore_index)


class SelfDistillationTrainer(Trainer):
    """``Trainer`` whose loss is :class:`SelfDistillationLoss`; logs ``ce`` and ``kl`` beside ``loss``.

    ``ce`` and ``kl`` are token-weighted means over the logging window (``eval_ce`` and
    ``eval_kl`` for evaluation); ``kl`` is the plain per-token KL, without lambda or tau^2.
    Batches need ``labels`` (-100 outside the answer). The loss divides by the target-token
    count of the whole accumulated batch (``num_items_in_batch``), so batch 8 x accumulation 1
    and batch 4 x accumulation 2 take the same step. With several processes the logged ``ce``/``kl``
    are summed over all of them (the same means as one process with the same global batch).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *,
        teacher: nn.Module | None = None,
        distill_config: SelfDistillationConfig | None = None,
        **kwargs: Any,
    ):
        super().__init__(model=model, args=args, **kwargs)
        self.distill_config = distill_config or SelfDistillationConfig()
        self.distill_loss = self.distill_config.make_loss()
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False).to(self.args.device)
        # The loss divides by num_items_in_batch itself: have Trainer count the targets of the
        # accumulated batch and not divide by gradient_accumulation_steps a second time.
        self.model_accepts_loss_kwargs = True
        # Keep the cached-teacher columns when Trainer drops inputs the model's forward() lacks.
        self._set_signature_columns_if_needed()
        self._signature_columns += [TEACHER_TOPK_LOGPROBS, TEACHER_TOPK_INDICES]
        self.distill_metrics = _DistillationMetrics()
        self.callback_handler.callbacks.insert(0, self.distill_metrics)  # first, so reporters see ce/kl

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of one micro-batch. Student and teacher logits are computed at the target
        positions only (see :func:`logits_at`), except when ``return_outputs`` asks for the
        student's full logits (evaluation with predictions)."""
        inputs = dict(inputs)
        if "labels" not in inputs:
            raise KnowtuneError("SelfDistillationTrainer needs 'labels' in every batch (-100 outside the answer)")
        labels = inputs.pop("labels")
        topk_logprobs = inputs.pop(TEACHER_TOPK_LOGPROBS, None)
        topk_indices = inputs.pop(TEACHER_TOPK_INDICES, None)
        mask, targets, kl_rows = self.distill_loss.positions(labels, inputs.get("attention_mask"))  # (B, T), (M,), (M,) or None
        if return_outputs:
            outputs = model(**inputs)
            student = outputs.logits[mask]  # (N, V)
        else:
            with logits_at(self.accelerator.unwrap_model(model), mask) as select:
                student = select(model(**inputs).logits)  # (N, V)
        if topk_logprobs is not None:
            teacher = {"teacher_topk_logprobs": topk_logprobs[mask], "teacher_topk_indices": topk_indices[mask]}  # (N, K)
        else:
            teacher = {"teacher_logits": self._teacher_logits(model, inputs, mask)}  # (N, V)
        out = self.distill_loss.token_loss(student, targets, num_items_in_batch=num_items_in_batch, kl_rows=kl_rows, **teacher)
        self.distill_metrics.record(out, num_items_in_batch, "train" if model.training else "eval")
        loss = out.total
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _teacher_logits(self, model: nn.Module, inputs: dict[str, Any], mask: Tensor) -> Tensor:
        """The teacher's logits (N, V) at the ``mask`` positions."""
        inputs = {**inputs, "use_cache": False}
        if self.teacher is not None:
            with logits_at(self.teacher, mask) as select:
                return select(self.teacher(**inputs).logits)
        student = self.accelerator.unwrap_model(model)
        if not hasattr(student, "disable_adapter"):
            raise ConfigError(
                f"teacher=None needs a PEFT model (its adapter-disabled self is the teacher), got "
                f"{type(student).__name__} and no {TEACHER_TOPK_LOGPROBS!r} in the batch",
                fix="pass teacher=<the stage-1 model>, wrap the student with peft, or add cached teacher top-k "
                "to the dataset with with_teacher_topk",
            )
        was_training = student.training
        student.eval()
        try:
            with student.disable_adapter(), logits_at(student, mask) as select:
                return select(student(**inputs).logits)
        finally:
            student.train(was_training)


@contextmanager
def logits_at(model: nn.Module, mask: Tensor) -> Iterator[Callable[[Tensor], Tensor]]:
    """Have ``model``'s output layer compute logits at the ``mask`` (B, T) positions only.

    Within the block a forward pre-hook on ``model.get_output_embeddings()`` hands it the
    hidden states at those positions, (N, H) instead of (B, T, H): the logits come out as
    (N, V), and what the model does after the output layer (a scale, a soft cap) still
    applies. For self-distillation the N answer tokens are a fraction of the B * T
    positions, and the output layer is the largest matrix product of a small model. The
    yielded function returns the (N, V) logits from the model's output, and picks them out
    of (B, T, V) logits when the model did not go through its output layer that way.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def select_hidden(module, args):
        hidden = args[0]
        if hidden.dim() == 3 and hidden.shape[:2] == mask.shape:
            return (hidden[mask], *args[1:])  # (N, H)
        return None

    handle = head.register_forward_pre_hook(select_hidden) if head is not None else None
    try:
        yield lambda logits: logits[mask] if logits.dim() == 3 else logits  # (N, V)
    finally:
        if handle is not None:
            handle.remove()


class _DistillationMetrics(TrainerCallback):
    """Sums ce and kl per target token between logs; adds their means to the next log."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}

    def record(self, out: SelfDistillationOutput, num_items_in_batch: Any, split: str) -> None:
        count = out.num_tokens if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        denominator = count.to(out.ce.device, out.ce.dtype).clamp(min=1)
        sums = torch.stack([out.ce.detach() * denominator, out.kl.detach() * denominator, out.num_tokens.to(out.ce)])
        self._sums[split] = self._sums[split] + sums if split in self._sums else sums

    def on_log(self, args, state, control, logs=None, **kwargs):
        for split, prefix in (("train", ""), ("eval", "eval_")):
            if logs is None or f"{prefix}loss" not in logs or split not in self._sums:
                continue
            sums = self._sums.pop(split)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(sums)  # every rank logs together (Trainer.log runs on all)
            ce_sum, kl_sum, tokens = sums.tolist()
            means = {f"{prefix}ce": ce_sum / max(tokens, 1.0), f"{prefix}kl": kl_sum / max(tokens, 1.0)}
            logs.update(means)
            if state.log_history:  # Trainer.log stored a copy of logs just before on_log
                state.log_history[-1].update(means)


@torch.no_grad()
def precompute_teacher_topk(
    teacher: nn.Module,
    dataset: Sequence[Mapping[str, Any]],
    k: int,
    batch_size: int,
    *,
    temperature: float,
    pad_token_id: int = 0,
) -> dict[str, Any]:
    """Cache the teacher's top-k log-probs of ``softmax(logits / temperature)`` at every position.

    ``dataset`` rows need ``input_ids`` (``attention_mask`` optional); batches are right-padded.
    Returns ``logprobs`` (N, k) float32 and ``indices`` (N, k) int64 for the N tokens of all
    rows concatenated, ``offsets`` (rows + 1,) so row i is ``offsets[i]:offsets[i+1]``, and the
    ``k``, ``temperature`` and ``vocab_size`` they were made with. The temperature must be
    the distillation temperature: the tail mass at another tau cannot be recovered from top-k.
    """
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    logprobs, indices, lengths, vocab_size = [], [], [], 0
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            ids = [torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows]
            masks = [torch.as_tensor(row.get("attention_mask", [1] * len(i))).long() for row, i in zip(rows, ids)]
            input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_token_id).to(device)  # (B, T)
            attention_mask = pad_sequence(masks, batch_first=True, padding_value=0).to(device)  # (B, T)
            logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (B, T, V)
            vocab_size = logits.shape[-1]
            if not 1 <= k <= vocab_size:
                raise ConfigError(f"teacher top-k k={k} must be between 1 and the vocabulary size {vocab_size}")
            top = F.log_softmax(logits / temperature, dim=-1).topk(k, dim=-1)  # (B, T, k)
            for row, row_ids in enumerate(ids):
                logprobs.append(top.values[row, : len(row_ids)].cpu())
                indices.append(top.indices[row, : len(row_ids)].cpu())
                lengths.append(len(row_ids))
    finally:
        teacher.train(was_training)
    offsets = torch.tensor([0] + lengths, dtype=torch.long).cumsum(0)  # (rows + 1,)
    return {
        "logprobs": torch.cat(logprobs) if logprobs else torch.zeros(0, k),  # (N, k)
        "indices": torch.cat(indices) if indices else torch.zeros(0, k, dtype=torch.long),  # (N, k)
        "offsets": offsets,
        "k": k,
        "temperature": float(temperature),
        "vocab_size": vocab_size,
    }


def save_teacher_topk(cache: Mapping[str, Any], directory: str | Path) -> Path:
    """Write a :func:`precompute_teacher_topk` cache to ``directory/teacher_topk.safetensors``."""
    path = Path(directory) / CACHE_FILE
    tensors = {name: cache[name].contiguous() for name in ("logprobs", "indices", "offsets")}
    metadata = {"format": CACHE_FORMAT, **{key: str(cache[key]) for key in ("k", "temperature", "vocab_size")}}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
    return path


def load_teacher_topk(directory: str | Path) -> dict[str, Any]:
    """Read a cache written by :func:`save_teacher_topk`."""
    path = Path(directory) / CACHE_FILE
    if not path.is_file():
        raise KnowtuneError(f"{path}: no teacher top-k cache", fix="run precompute_teacher_topk and save_teacher_topk")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT:
            raise KnowtuneError(f"{path}: not a knowtune teacher top-k cache (format {metadata.get('format')!r})")
        cache: dict[str, Any] = {name: handle.get_tensor(name) for name in ("logprobs", "indices", "offsets")}
    cache.update(k=int(metadata["k"]), temperature=float(metadata["temperature"]))
    cache["vocab_size"] = int(metadata["vocab_size"])
    return cache


def with_teacher_topk(
    dataset: Sequence[Mapping[str, Any]], cache: Mapping[str, Any], config: SelfDistillationConfig
) -> list[dict[str, Any]]:
    """Rows of ``dataset`` with their slices of ``cache`` added, after checking they fit ``config``."""
    if cache["temperature"] != config.temperature:
        raise ConfigError(
            f"the teacher cache was made at temperature {cache['temperature']}, the stage uses temperature "
            f"{config.temperature}",
            fix="recompute the cache with precompute_teacher_topk(..., temperature=<the stage's temperature>)",
        )
    if config.top_k is None and cache["k"] < cache["vocab_size"]:
        raise ConfigError(
            f"top_k is unset (full-vocabulary KL) but the teacher cache holds only k={cache['k']} of "
            f"{cache['vocab_size']} tokens",
            fix=f"set top_k: {cache['k']} or recompute the cache with k={cache['vocab_size']}",
        )
    if config.top_k is not None and config.top_k > cache["k"]:
        message = f"top_k={config.top_k} exceeds the teacher cache's k={cache['k']}"
        raise ConfigError(message, fix=f"set top_k <= {cache['k']} or recompute the cache with a larger k")
    offsets = cache["offsets"].tolist()
    if len(offsets) - 1 != len(dataset):
        message = f"the teacher cache has {len(offsets) - 1} rows, the dataset {len(dataset)}"
        raise KnowtuneError(message, fix="recompute the cache for this dataset")
    rows = []
    for i, row in enumerate(dataset):
        start, end = offsets[i], offsets[i + 1]
        if end - start != len(row["input_ids"]):
            message = f"row {i}: the teacher cache has {end - start} positions, input_ids {len(row['input_ids'])}"
            raise KnowtuneError(message, fix="recompute the cache for this dataset")
        logprobs, indices = cache["logprobs"][start:end], cache["indices"][start:end]  # (L, k)
        rows.append({**row, TEACHER_TOPK_LOGPROBS: logprobs, TEACHER_TOPK_INDICES: indices})
    return rows


@dataclass
class TeacherTopKCollator:
    """Right-pads ``input_ids``, ``attention_mask``, ``labels`` (with -100) and any cached
    teacher top-k to the longest row; the padded positions are never targets."""

    pad_token_id: int = 0
    label_pad_id: int = -100

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        pads = {
            "input_ids": self.pad_token_id,
            "attention_mask": 0,
            "labels": self.label_pad_id,
            TEACHER_TOPK_LOGPROBS: 0.0,
            TEACHER_TOPK_INDICES: 0,
        }
        if "attention_mask" not in rows[0]:
            rows = [{**row, "attention_mask": [1] * len(row["input_ids"])} for row in rows]
        batch = {}
        for key, pad in pads.items():
            if key in rows[0]:
                values = [torch.as_tensor(row[key]) for row in rows]
                batch[key] = pad_sequence(values, batch_first=True, padding_value=pad)  # (B, T) or (B, T, k)
        return batch
