"""Reproducible sampling for SliCK: counter-based keys and Gumbel noise.

SliCK (Gekhman et al., EMNLP 2024, arXiv 2405.05904, section 3) samples 16 answers per
prompt at T = 0.5 with top-k 40. Here a sample is drawn by the Gumbel-max trick,
``argmax_j (l_j / T + G_j)`` over the top-k tokens j with ``G_j = -log(-log U_j)``, which
draws j with probability softmax(top-k(l) / T)_j. ``U_j`` is a hash of
(row key, step, token id), and a row key is a hash of (seed, example id, prompt index,
sample index): every sample is the same whatever batch it is decoded in, so resumed,
sharded, lazy and exact runs draw the very same samples.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mul32(x, constant: int):
    """(x * constant) mod 2^32 for 0 <= x < 2^32 without int64 overflow (16-bit halves)."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _M32


def mix32(x):
    """MurmurHash3's 32-bit finaliser (fmix32); works on Python ints and int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def row_key(seed: int, example_key: int, prompt_index: int, sample_index: int) -> int:
    """The 32-bit sampling key of one sampled row (independent of batching)."""
    h = mix32((seed & _M32) ^ 0x9E3779B9)
    for part in (example_key & _M32, (example_key >> 32) & _M32, prompt_index, sample_index):
        h = mix32(h ^ mix32((part + 0x7F4A7C15) & _M32))
    return h


def sample_keys(seed: int, example_keys: list[int], n_prompts: int, n_samples: int) -> list[list[tuple[int, ...]]]:
    """:func:`row_key` for every (example, prompt, sample), computed as one tensor: keys[e][p]."""
    h = torch.full((len(example_keys), 1, 1), mix32((seed & _M32) ^ 0x9E3779B9), dtype=torch.int64)
    parts = [
        torch.tensor([k & _M32 for k in example_keys], dtype=torch.int64).view(-1, 1, 1),
        torch.tensor([(k >> 32) & _M32 for k in example_keys], dtype=torch.int64).view(-1, 1, 1),
        torch.arange(n_prompts, dtype=torch.int64).view(1, -1, 1),
        torch.arange(n_samples, dtype=torch.int64).view(1, 1, -1),
    ]
    for part in parts:
        h = mix32(h ^ mix32((part + 0x7F4A7C15) & _M32))  # broadcasts to (E, P, S)
    return [[tuple(row) for row in prompts] for prompts in h.expand(len(example_keys), n_prompts, n_samples).tolist()]


def gumbel_noise(keys: torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """G[r, j] = -log(-log U) with U = (hash(keys[r], step, tokens[r, j]) + 0.5) / 2^32; shape of ``tokens``.

    The noise of a token depends on its id, not on its rank, so the draw does not depend on
    the order in which top-k returns the candidates.
    """
    step_salt = mix32((step * 0x9E3779B9 + 0x632BE5AB) & _M32)
    row = mix32(keys ^ step_salt).unsqueeze(1)  # (R, 1)
    h = mix32(row ^ mix32((tokens + 0x5BD1E995) & _M32))  # (R, k)
    u = (h.to(torch.float64) + 0.5) / 4294967296.0
    return (-torch.log(-torch.log(u))).to(torch.float32)
