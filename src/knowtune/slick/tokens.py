"""Token-level helpers of the SliCK backend: stop tokens, EOS ids and detokenisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stop_token_mask(tokenizer, vocab_size: int, stop: str | Sequence[str], eos_ids: list[int]) -> torch.Tensor:
    """A bool vector over the model's vocabulary: tokens whose text contains ``stop`` (or any of several
    stop strings), and EOS. A stop string spread over several tokens is cut from the text afterwards."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i, text in enumerate(texts):
        if any(s in text for s in stops):
            mask[i] = True
    for eos in eos_ids:
        if 0 <= eos < vocab_size:
            mask[eos] = True
    return mask


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every EOS id the model's generation config or the tokenizer declares."""
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.extend([value] if isinstance(value, int) else list(value))
    return sorted(set(ids))


def decode_batch(tokenizer, rows: list[list[int]]) -> list[str]:
    """Texts of token rows (special tokens skipped, no clean-up of spaces: a prefix of the
    tokens decodes to a prefix of the text); one Rust call for fast tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(rows, skip_special_tokens=True)
    return tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
