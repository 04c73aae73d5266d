"""The exact path of the SliCK backend: what ``model.generate`` does for one prompt.

A batch holds prompts of one length only, so there is no padding: the prompt is
prefilled with an all-ones attention mask and the model's own default cache, positions
and masks (sliding windows, ALiBi, learned positions and any other attention variant
are the model's business). The cache is then repeated for the prompt's rows (1 greedy +
n sampled), which decode together; finished rows leave the batch. Rows choose their tokens
exactly as on the fast paths (``HFBackend._choose``), so they give the same samples.
It is slower than the fast paths (the whole prompt, few-shot prefix included, is fed per
prompt) and correct for any Hugging Face causal LM whose cache can select batch rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from knowtune.compat import output_cache
from knowtune.errors import KnowtuneError


def exact_prefill(model, prompts: list[tuple[int, ...]], device, keep: dict) -> tuple[torch.Tensor, object]:
    """Float32 logits of the last position (B, V) and the model's own cache after feeding
    ``prompts`` (all of one length) with no padding."""
    ids = torch.tensor(prompts, dtype=torch.long, device=device)  # (B, L)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **keep)
    cache = output_cache(out)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        raise KnowtuneError(f"{type(model).__name__} returned a cache ({type(cache).__name__}) whose batch rows cannot be selected",
                            fix="report the model to knowtune; its cache needs a batch_select_indices method")
    return out.logits[:, -1, :].float(), cache


@dataclass
class ExactRows:
    """The rows in flight on the exact path: the model's own cache, its length (no padding)
    and, like the fast paths' state, sampling keys, output rows and the pending expansion
    of one cache row per prompt into the prompt's rows."""

    model: object
    cache: object
    cache_arg: str  # the keyword model.forward takes the cache under
    keep: dict  # logits_to_keep=1 where the model has it
    length: int  # positions in the cache
    pending: torch.Tensor | None  # (A,) prompt row of each row, until the cache is expanded
    keys: torch.Tensor  # (A,)
    active: torch.Tensor  # (A,) row index in the output

    def select(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (finished rows leave the batch)."""
        if self.pending is not None:
            self.pending = self.pending[idx]
        else:
            self.cache.batch_select_indices(idx)
        self.keys, self.active = self.keys[idx], self.active[idx]

    def materialize(self) -> None:
        """Repeat each prompt's cache row for its rows still running."""
        if self.pending is not None:
            self.cache.batch_select_indices(self.pending)
            self.pending = None

    def advance(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (A,); float32 logits of the next position (A, V)."""
        self.materialize()
        self.length += 1
        mask = torch.ones((token.shape[0], self.length), dtype=torch.long, device=token.device)
        out = self.model(input_ids=token.unsqueeze(1), attention_mask=mask, use_cache=True, **{self.cache_arg: self.cache}, **self.keep)
        self.cache = output_cache(out)
        return out.logits[:, -1, :].float()
