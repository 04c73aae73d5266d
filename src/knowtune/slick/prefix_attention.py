"""Shared-prefix ("cascade") attention: every row of a batch attends to one few-shot prefix
whose keys and values are stored once, not once per row.

For a query q of row a, with the shared prefix keys/values (K_p, V_p) and the row's own
keys/values (K_a, V_a) (its question line and generated tokens):

    s = [q K_p^T, q K_a^T] * scale + mask,   attn(q) = softmax(s)[:Lp] V_p + softmax(s)[Lp:] V_a

which equals attention over the concatenation [K_p; K_a] (exact: the two parts are
merged by their log-sum-exp, as in flash attention). The prefix part is one batched GEMM per head group, (rows x Lp), reading K_p and
V_p once; a per-row cache that repeated the prefix would read and copy it for every row
at every step (cf. Hydragen, Juravsky et al. 2024, arXiv 2402.05099).

It plugs into transformers through its public attention registry
(``AttentionInterface.register``): models with ``_supports_attention_backend`` call it in
place of SDPA. Calls without a shared prefix fall through to transformers' SDPA.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "knowtune_shared_prefix"


@dataclass
class SharedPrefix:
    """Per-layer prefix keys and values, each (kv_heads, Lp, head_dim), and an additive bias
    (rows, Lp), 0 or -inf, for rows that see only part of the prefix (None: all see all of it)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    row_bias: torch.Tensor | None


def _grouped(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(A, H, Q, X) -> (Hkv, A * g * Q, X): queries grouped by the key/value head they use."""
    rows, heads, q_len, width = x.shape
    group = heads // kv_heads
    return x.reshape(rows, kv_heads, group, q_len, width).transpose(0, 1).reshape(kv_heads, rows * group * q_len, width)


def _ungrouped(x: torch.Tensor, rows: int, heads: int, q_len: int) -> torch.Tensor:
    """(Hkv, A * g * Q, X) -> (A, H, Q, X), the inverse of :func:`_grouped`."""
    kv_heads, _, width = x.shape
    return x.reshape(kv_heads, rows, heads // kv_heads, q_len, width).transpose(0, 1).reshape(rows, heads, q_len, width)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, knowtune_prefix=None, **kwargs):
    """Attention over [shared prefix; row keys], merged by log-sum-exp; ``attention_mask`` is an
    additive (A, 1, Q, Lr) bias over the row part.

    With s_p = q K_p^T * scale (+ row bias), s_r = q K_a^T * scale + mask and m = max(s_p, s_r):
    out = (exp(s_p - m) V_p + exp(s_r - m) V_a) / (sum exp(s_p - m) + sum exp(s_r - m)).
    query (A, H, Q, D); key/value (A, Hkv, Lr, D). Returns ((A, Q, H, D), None) like transformers' SDPA.
    """
    if knowtune_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    rows, heads, q_len, dim = query.shape
    prefix_k = knowtune_prefix.keys[module.layer_idx]  # (Hkv, Lp, D)
    prefix_v = knowtune_prefix.values[module.layer_idx]
    kv_heads = prefix_k.shape[0]
    scale = scaling if scaling is not None else dim ** -0.5
    prefix_scores = torch.bmm(_grouped(query, kv_heads), prefix_k.transpose(1, 2)).float() * scale  # (Hkv, A*g*Q, Lp)
    prefix_scores = _ungrouped(prefix_scores, rows, heads, q_len)  # (A, H, Q, Lp)
    if knowtune_prefix.row_bias is not None:
        prefix_scores = prefix_scores + knowtune_prefix.row_bias[:, None, None, :]
    row_scores = torch.matmul(query, repeat_kv(key, heads // kv_heads).transpose(2, 3)).float() * scale  # (A, H, Q, Lr)
    if attention_mask is not None:
        row_scores = row_scores + attention_mask
    top = torch.maximum(prefix_scores.amax(-1, keepdim=True), row_scores.amax(-1, keepdim=True))  # (A, H, Q, 1)
    prefix_w = (prefix_scores - top).exp_()
    row_w = (row_scores - top).exp_()
    total = prefix_w.sum(-1, keepdim=True) + row_w.sum(-1, keepdim=True)
    out = _ungrouped(torch.bmm(_grouped(prefix_w.to(query.dtype), kv_heads), prefix_v), rows, heads, q_len)  # (A, H, Q, D)
    out = out + torch.matmul(row_w.to(query.dtype), repeat_kv(value, heads // kv_heads))
    out = out / total.to(out.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, shared_prefix_attention)


def supports_shared_prefix(model) -> bool:
    """Whether ``model`` routes attention through transformers' registry with plain causal
    attention (no sliding window, no logit soft-capping), so the shared-prefix kernel is exact."""
    config = model.config
    if not getattr(model, "_supports_attention_backend", False) or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "attn_logit_softcapping", None):
        return False
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return False
    return getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", True) is False


@contextmanager
def shared_prefix_attention_enabled(model):
    """Route ``model``'s attention through :func:`shared_prefix_attention` for the duration."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = previous
