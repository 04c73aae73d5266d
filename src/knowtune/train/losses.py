"""The self-distillation SFT loss: cross-entropy on the targets plus a token-level KL to a teacher.

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It",
arXiv 2604.15574 (2026): stage 2 of self-distillation SFT trains on the mixed data with

    L = CE(targets) + lambda * KL(teacher || student)

at temperature tau (reported lambda = 1, tau = 0.5). The paper leaves the KL direction,
the tau^2 factor, the vocabulary (full or top-k) and the token mask open, so each is an
option here. The tau^2 factor follows Hinton, Vinyals & Dean, "Distilling the Knowledge in
a Neural Network" (2015, arXiv 1503.02531): the gradients of the softened term shrink as
1 / tau^2, so multiplying by tau^2 keeps its weight comparable across temperatures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Direction = Literal["forward", "reverse"]
DIRECTIONS = ("forward", "reverse")
KLTokens = Literal["answer", "sequence"]
KL_TOKENS = ("answer", "sequence")


@dataclass(frozen=True)
class SelfDistillationOutput:
    """The loss and its parts, each already divided by the target-token count.

    ``total = ce + lambda_kl * c * kl`` with ``c = tau^2`` when ``scale_by_t2``, else 1;
    ``kl`` is the plain KL per target token (no lambda, no tau^2), so a logged value of 0
    means the student matches the teacher. ``num_tokens`` counts this batch's target tokens.
    """

    total: Tensor
    ce: Tensor
    kl: Tensor
    num_tokens: Tensor


class SelfDistillationLoss(nn.Module):
    r"""Cross-entropy plus a temperature-softened KL to a teacher, over answer tokens only.

    For causal-LM logits ``z`` and labels ``y``, position ``t - 1`` predicts ``y_t``: the
    logits are shifted against the labels *before* masking, and the target set is
    ``A = {t : y_t != ignore_index}``. With ``p^tau = softmax(z / tau)``::

        L = (1/N) sum_{t in A} -log softmax(z_S[t-1])[y_t]
            + lambda * c * (1/N) sum_{t in A} KL_t
        forward:  KL_t = sum_v p_T^tau(v) (log p_T^tau(v) - log p_S^tau(v))   = KL(T || S)
        reverse:  KL_t = sum_v p_S^tau(v) (log p_S^tau(v) - log p_T^tau(v))   = KL(S || T)

    ``c = tau^2`` when ``scale_by_t2`` (Hinton et al. 2015), else 1; ``N = |A|``, or
    ``num_items_in_batch`` when given: transformers' ``Trainer`` passes the target count of
    the whole accumulated batch, so the sum of the micro-batch losses equals the loss of one
    big batch. (Trainer counts ``labels != -100`` before the shift, which includes position 0;
    SFT labels mask the prompt, so position 0 is never a target and the counts agree.)

    ``top_k``: the KL is taken over ``k + 1`` buckets, the teacher's ``k`` most likely tokens
    and one tail bucket holding the rest of the mass, for both distributions; the tail is a
    log-sum-exp over the excluded tokens (no ``1 - sum`` cancellation). Precomputed teacher
    top-k log-probs of ``softmax(z_T / tau)`` may replace the teacher logits; their tail is
    ``log(1 - sum exp)`` computed with ``expm1``/``log1p`` and floored at float epsilon.
    ``kl_tokens``: ``answer`` (above) or ``sequence``: the KL also covers every prompt
    position that predicts a real token (``attention_mask`` on both sides), so the student is
    held to the teacher on how it reads the question, not only on the answer it gives; the
    CE stays on answer tokens, and the KL sum is still divided by N (the target count), so
    gradient accumulation stays exact. Kaplan, Gekhman et al., arXiv 2604.15574 (2026).
    """

    def __init__(
        self,
        lambda_kl: float = 1.0,
        temperature: float = 0.5,
        direction: Direction = "forward",
        scale_by_t2: bool = True,
        top_k: int | None = None,
        kl_tokens: KLTokens = "answer",
        ignore_index: int = -100,
    ):
        super().__init__()
        if lambda_kl < 0:
            raise ValueError(f"lambda_kl must be >= 0, got {lambda_kl}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (full vocabulary), got {top_k}")
        self.lambda_kl = lambda_kl
        self.temperature = temperature
        self.direction = direction
        self.scale_by_t2 = scale_by_t2
        if kl_tokens not in KL_TOKENS:
            raise ValueError(f"kl_tokens must be one of {KL_TOKENS}, got {kl_tokens!r}")
        self.top_k = top_k
        self.kl_tokens = kl_tokens
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None = None,
        *,
        teacher_topk_logprobs: Tensor | None = None,
        teacher_topk_indices: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> SelfDistillationOutput:
        """Loss of ``student_logits`` (B, T, V) against ``labels`` (B, T).

        Give the teacher either as ``teacher_logits`` (B, T, V) or as precomputed
        ``teacher_topk_logprobs`` / ``teacher_topk_indices`` (B, T, K): log-probs of the
        teacher's ``softmax(z / temperature)`` at its K most likely tokens, aligned with the
        logits (position t predicts label t + 1), as
        :func:`knowtune.train.selfdistill.precompute_teacher_topk` writes them.
        """
        cached = teacher_topk_logprobs is not None or teacher_topk_indices is not None
        if cached == (teacher_logits is not None):
            raise ValueError("pass either teacher_logits or teacher_topk_logprobs + teacher_topk_indices")
        if cached and (teacher_topk_logprobs is None or teacher_topk_indices is None):
            raise ValueError("teacher_topk_logprobs and teacher_topk_indices go together")
        if not cached and teacher_logits.shape != student_logits.shape:
            shapes = f"{tuple(teacher_logits.shape)} vs {tuple(student_logits.shape)}"
            raise ValueError(f"teacher and student logits differ in shape: {shapes}")
        mask, targets, kl_rows = self.positions(labels, attention_mask)  # (B, T), (M,), (M,) or None
        teacher = {"teacher_logits": teacher_logits[mask]} if not cached else {  # (M, V) or (M, K)
            "teacher_topk_logprobs": teacher_topk_logprobs[mask], "teacher_topk_indices": teacher_topk_indices[mask]}
        return self.token_loss(student_logits[mask], targets, num_items_in_batch=num_items_in_batch, kl_rows=kl_rows, **teacher)

    def positions(self, labels: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The logits positions the loss needs: ``(mask (B, T), targets (M,), kl_rows (M,) or None)``.

        ``mask`` marks the M positions whose logits are used; ``targets`` is the label each
        predicts (``ignore_index`` at KL-only positions); ``kl_rows`` marks which of the M
        take the KL (None: the target rows, as with ``kl_tokens: answer``).
        """
        targets_at = target_mask(labels, self.ignore_index)  # (B, T)
        if self.kl_tokens == "answer":
            return targets_at, labels[:, 1:][targets_at[:, :-1]], None
        real = torch.ones_like(labels, dtype=torch.bool) if attention_mask is None else attention_mask.bool()  # (B, T)
        kl_at = torch.zeros_like(targets_at)
        kl_at[:, :-1] = real[:, :-1] & real[:, 1:]
        mask = targets_at | kl_at  # (B, T)
        shifted = torch.full_like(labels, self.ignore_index)
        shifted[:, :-1] = labels[:, 1:]
        return mask, shifted[mask], kl_at[mask]

    def token_loss(
        self,
        student_logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
        *,
        teacher_topk_logprobs: Tensor | None = None,
        teacher_topk_indices: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        kl_rows: Tensor | None = None,
    ) -> SelfDistillationOutput:
        """The loss over target tokens already picked out: ``student_logits`` (N, V) at the
        positions of :func:`target_mask`, ``targets`` (N,) the labels they predict, the teacher
        as (N, V) logits or (N, K) cached top-k. Same value as :meth:`forward` on the whole
        batch; lets a caller compute logits at the N target positions only (the output layer
        over B * T positions is the largest matrix product of a small model). With
        ``kl_tokens: sequence`` the rows are those of :meth:`positions`: ``targets`` holds
        ``ignore_index`` at KL-only rows and ``kl_rows`` (M,) marks the KL rows."""
        cached = teacher_topk_logprobs is not None
        if cached == (teacher_logits is not None) or cached != (teacher_topk_indices is not None):
            raise ValueError("pass either teacher_logits or teacher_topk_logprobs + teacher_topk_indices")
        student = student_logits.float()  # (M, V)
        is_target = targets != self.ignore_index  # (M,)
        num_tokens = is_target.sum()
        log_probs = F.log_softmax(student, dim=-1)  # (M, V)
        ce_sum = -log_probs.gather(-1, targets.clamp(min=0)[:, None].long()).squeeze(-1)[is_target].sum()
        student_lp = log_probs if self.temperature == 1 else F.log_softmax(student / self.temperature, dim=-1)  # (N, V)
        if cached:
            teacher_lp, student_lp = self._cached_buckets(teacher_topk_logprobs.float(), teacher_topk_indices.long(), student_lp)
        else:
            teacher_lp = F.log_softmax(teacher_logits.float() / self.temperature, dim=-1)  # (N, V)
            if self.top_k is not None and self.top_k < teacher_lp.shape[-1]:
                top = teacher_lp.topk(self.top_k, dim=-1).indices  # (N, k)
                teacher_lp, student_lp = _with_tail(teacher_lp, top), _with_tail(student_lp, top)  # (N, k+1)
        per_token = _kl(teacher_lp, student_lp) if self.direction == "forward" else _kl(student_lp, teacher_lp)  # (M,)
        kl_sum = per_token[is_target if kl_rows is None else kl_rows].sum()

        denominator = num_tokens if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        denominator = denominator.to(device=ce_sum.device, dtype=ce_sum.dtype).clamp(min=1)
        ce, kl = ce_sum / denominator, kl_sum / denominator
        scale = self.temperature**2 if self.scale_by_t2 else 1.0
        return SelfDistillationOutput(total=ce + self.lambda_kl * scale * kl, ce=ce, kl=kl, num_tokens=num_tokens)

    def _cached_buckets(self, teacher_top: Tensor, indices: Tensor, student_lp: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher and student log-probs over the cached top-k buckets (+ tail when k < V)."""
        vocab, k = student_lp.shape[-1], teacher_top.shape[-1]
        if k > vocab:
            raise ValueError(f"cached teacher top-k has {k} entries per token, more than the vocabulary ({vocab})")
        if self.top_k is not None and self.top_k < k:
            teacher_top, order = teacher_top.topk(self.top_k, dim=-1)  # (N, top_k)
            indices, k = indices.gather(-1, order), self.top_k
        if k == vocab:  # every token has its own bucket: the full-vocabulary KL
            return teacher_top, student_lp.gather(-1, indices)
        teacher_tail = _log1mexp(torch.logsumexp(teacher_top, dim=-1, keepdim=True))  # (N, 1)
        return torch.cat([teacher_top, teacher_tail], dim=-1), _with_tail(student_lp, indices)

    def extra_repr(self) -> str:
        return (
            f"lambda_kl={self.lambda_kl}, temperature={self.temperature}, direction={self.direction!r}, "
            f"scale_by_t2={self.scale_by_t2}, top_k={self.top_k}, kl_tokens={self.kl_tokens!r}, ignore_index={self.ignore_index}"
        )


def target_mask(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """(B, T) labels -> (B, T) bool, True where the logits predict a target: ``labels[t + 1]``
    is not ``ignore_index`` (the shift before masking; the last position predicts nothing)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)  # (B, T)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def _with_tail(log_probs: Tensor, indices: Tensor) -> Tensor:
    """(N, V) log-probs -> (N, k+1): the k chosen tokens, then log of the remaining mass."""
    top = log_probs.gather(-1, indices)  # (N, k)
    tail = torch.logsumexp(log_probs.scatter(-1, indices, -math.inf), dim=-1, keepdim=True)  # (N, 1)
    return torch.cat([top, tail], dim=-1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2 (Maechler 2012)."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row, (N, M) -> (N,); terms with p = 0 count 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)
