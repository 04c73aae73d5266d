"""Shared-prefix ("cascade") attention: the rows of a batch attend to few-shot prefixes
whose keys and values are stored once each, not once per row.

For a query q of row a, with the shared prefix keys/values (K_p, V_p) and the row's own
keys/values (K_a, V_a) (its question line and generated tokens):

    s = [q K_p^T, q K_a^T] * scale + mask,   attn(q) = softmax(s)[:Lp] V_p + softmax(s)[Lp:] V_a

which equals attention over the concatenation [K_p; K_a] (exact: the two parts are
merged by their log-sum-exp, as in flash attention). The prefix part is one batched GEMM
per (prefix, key/value head), (rows of that prefix x Lp), reading K_p and V_p once; a
per-row cache that repeated the prefix would read and copy it for every row at every
step (cf. Hydragen, Juravsky et al. 2024, arXiv 2402.05099).

It plugs into transformers through its attention registry (``AttentionInterface``, via
:mod:`knowtune.compat`): models with ``_supports_attention_backend`` call it in place of
SDPA. Calls without a shared prefix fall through to transformers' SDPA. Whether a model
really passes the prefix down (GPT-2, for one, drops extra arguments) is not assumed: the
engine verifies the path on each model before using it (:mod:`knowtune.slick.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from knowtune.compat import attention_implementation, register_attention, repeat_kv, sdpa_attention_forward, uses_attention_registry

NAME = "knowtune_shared_prefix"


@dataclass
class SharedPrefix:
    """The few-shot prefixes of a batch, stored once each.

    ``keys``/``values``: per layer, (G, Hkv, Lp, D), the G prefixes the batch uses,
    right-aligned (the first positions of a shorter prefix are padding). ``slot`` (A,): the
    prefix of each row (None when G = 1). ``row_bias`` (A, Lp): 0 / -inf, masking padding
    and the prefix positions a row does not share (None when every row sees all of its
    prefix). ``pos`` (A,) and ``width``: each row's place among the rows of its prefix, and
    the most rows any prefix has (the layout of the batched products when G > 1).
    ``calls``: how many attention calls have read it (shared by its row selections), so a
    model that does not pass it down to its attention can be told apart.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    slot: torch.Tensor | None
    row_bias: torch.Tensor | None
    pos: torch.Tensor | None = None
    width: int = 0
    calls: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def build(cls, keys, values, slot: torch.Tensor | None, row_bias: torch.Tensor | None, calls: list[int] | None = None) -> "SharedPrefix":
        calls = [0] if calls is None else calls
        if slot is None or keys[0].shape[0] == 1:
            return cls(keys, values, None, row_bias, calls=calls)
        counts = torch.bincount(slot, minlength=keys[0].shape[0])  # rows per prefix
        order = torch.argsort(slot, stable=True)
        starts = counts.cumsum(0) - counts
        pos = torch.empty_like(slot)
        pos[order] = torch.arange(slot.shape[0], device=slot.device) - starts[slot[order]]
        return cls(keys, values, slot, row_bias, pos, int(counts.max()), calls)

    def select(self, idx: torch.Tensor) -> "SharedPrefix":
        """The prefix view of rows ``idx``."""
        return SharedPrefix.build(self.keys, self.values, None if self.slot is None else self.slot[idx],
                                  None if self.row_bias is None else self.row_bias.index_select(0, idx), self.calls)


def _by_prefix(x: torch.Tensor, prefix: SharedPrefix, kv_heads: int) -> torch.Tensor:
    """(A, H, Q, X) -> (G * Hkv, Rmax * g * Q, X): rows laid out per prefix, heads grouped by
    the key/value head they read (zeros where a prefix has fewer rows)."""
    rows, heads, q_len, width = x.shape
    x = x.reshape(rows, kv_heads, heads // kv_heads * q_len, width)  # (A, Hkv, g*Q, X)
    if prefix.slot is None:
        return x.transpose(0, 1).reshape(kv_heads, -1, width)
    groups = prefix.keys[0].shape[0]
    padded = x.new_zeros((groups, prefix.width, *x.shape[1:]))  # (G, Rmax, Hkv, g*Q, X)
    padded[prefix.slot, prefix.pos] = x
    return padded.permute(0, 2, 1, 3, 4).reshape(groups * kv_heads, -1, width)


def _by_row(x: torch.Tensor, prefix: SharedPrefix, rows: int, heads: int, q_len: int) -> torch.Tensor:
    """(G * Hkv, Rmax * g * Q, X) -> (A, H, Q, X), the inverse of :func:`_by_prefix`."""
    kv_heads = prefix.keys[0].shape[1]
    width = x.shape[-1]
    if prefix.slot is None:
        return x.reshape(kv_heads, rows, -1, width).transpose(0, 1).reshape(rows, heads, q_len, width)
    x = x.reshape(-1, kv_heads, prefix.width, heads // kv_heads * q_len, width).permute(0, 2, 1, 3, 4)
    return x[prefix.slot, prefix.pos].reshape(rows, heads, q_len, width)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, knowtune_prefix=None, **kwargs):
    """Attention over [shared prefix; row keys], merged by log-sum-exp; ``attention_mask`` is an
    additive (A, 1, Q, Lr) bias over the row part.

    With s_p = q K_p^T * scale (+ row bias), s_r = q K_a^T * scale + mask and m = max(s_p, s_r):
    out = (exp(s_p - m) V_p + exp(s_r - m) V_a) / (sum exp(s_p - m) + sum exp(s_r - m)).
    query (A, H, Q, D); key/value (A, Hkv, Lr, D). Returns ((A, Q, H, D), None) like transformers' SDPA.
    """
    if knowtune_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    prefix = knowtune_prefix
    prefix.calls[0] += 1
    rows, heads, q_len, dim = query.shape
    prefix_k = prefix.keys[module.layer_idx]  # (G, Hkv, Lp, D)
    prefix_v = prefix.values[module.layer_idx]
    groups, kv_heads = prefix_k.shape[0], prefix_k.shape[1]
    scale = scaling if scaling is not None else dim ** -0.5
    keys_t = prefix_k.reshape(groups * kv_heads, *prefix_k.shape[2:]).transpose(1, 2)  # (G*Hkv, D, Lp)
    prefix_scores = _by_row(torch.bmm(_by_prefix(query, prefix, kv_heads), keys_t), prefix, rows, heads, q_len).float() * scale
    if prefix.row_bias is not None:
        prefix_scores = prefix_scores + prefix.row_bias[:, None, None, :]  # (A, H, Q, Lp)
    row_scores = torch.matmul(query, repeat_kv(key, heads // kv_heads).transpose(2, 3)).float() * scale  # (A, H, Q, Lr)
    if attention_mask is not None:
        row_scores = row_scores + attention_mask
    top = torch.maximum(prefix_scores.amax(-1, keepdim=True), row_scores.amax(-1, keepdim=True))  # (A, H, Q, 1)
    prefix_w = (prefix_scores - top).exp_()
    row_w = (row_scores - top).exp_()
    total = prefix_w.sum(-1, keepdim=True) + row_w.sum(-1, keepdim=True)
    values = prefix_v.reshape(groups * kv_heads, *prefix_v.shape[2:])  # (G*Hkv, Lp, D)
    out = _by_row(torch.bmm(_by_prefix(prefix_w.to(query.dtype), prefix, kv_heads), values), prefix, rows, heads, q_len)
    out = out + torch.matmul(row_w.to(query.dtype), repeat_kv(value, heads // kv_heads))
    out = out / total.to(out.dtype)
    return out.transpose(1, 2).contiguous(), None


register_attention(NAME, shared_prefix_attention)


def shared_prefix_obstacle(model) -> str | None:
    """Why the shared-prefix kernel cannot be exact for ``model`` as its config declares it
    (None: nothing known against it; verification still decides): attention outside
    transformers' registry, or soft-capped attention logits. (A sliding window is left to
    the backend: within the window the kernel is exact, and longer batches take the exact path.)"""
    config = model.config
    if not uses_attention_registry(model) or getattr(config, "is_encoder_decoder", False):
        return "its attention does not go through transformers' attention registry"
    if getattr(config, "attn_logit_softcapping", None):
        return "it soft-caps attention logits"
    return None


def supports_shared_prefix(model) -> bool:
    """Whether nothing in ``model``'s config rules the shared-prefix kernel out (:func:`shared_prefix_obstacle`)."""
    return shared_prefix_obstacle(model) is None


def shared_prefix_attention_enabled(model):
    """Route ``model``'s attention through :func:`shared_prefix_attention` for the duration."""
    return attention_implementation(model, NAME)
