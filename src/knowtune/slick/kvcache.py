"""A transformers ``DynamicCache`` whose layers write in place into preallocated storage.

``DynamicLayer.update`` appends with ``torch.cat``, copying the whole cache (B x heads x
T x head_dim per layer) at every decoding step; with a long few-shot prefix repeated
over hundreds of rows that copy costs as much as the model itself. The total length of
a SliCK batch is known in advance (prefix + longest suffix + ``max_new_tokens``), so
:class:`PreallocatedLayer` reserves it once and ``update`` writes the new positions into
it; ``keys``/``values`` are views of the filled part. Everything else (masking,
``batch_select_indices``, ``get_seq_length``) is transformers' own ``Cache`` machinery.
"""

from __future__ import annotations

import torch

from knowtune.compat import DynamicLayer, cache_from_layers


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values, (B, heads, capacity, head_dim), filled up to ``length``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_empty((batch, heads, max(capacity, length), dim))
        self._values = values.new_empty((batch, values.shape[1], max(capacity, length), values.shape[3]))
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self.length = length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._refresh()

    def _refresh(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new positions after the filled part (growing the storage if ever needed)."""
        new = key_states.shape[-2]
        if self.length + new > self._keys.shape[2]:
            grow = max(self.length + new, 2 * self._keys.shape[2]) - self._keys.shape[2]  # amortised doubling
            self._keys = torch.cat([self._keys, self._keys.new_zeros((*self._keys.shape[:2], grow, self._keys.shape[3]))], dim=2)
            self._values = torch.cat([self._values, self._values.new_zeros((*self._values.shape[:2], grow, self._values.shape[3]))], dim=2)
        self._keys[:, :, self.length:self.length + new] = key_states
        self._values[:, :, self.length:self.length + new] = value_states
        self.length += new
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) rows ``indices`` of the batch."""
        self._keys = self._keys.index_select(0, indices)
        self._values = self._values.index_select(0, indices)
        self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._refresh()

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.length - abs(max_length)
        self.length = min(self.length, max_length)
        self._refresh()


def preallocated_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], capacity: int):
    """A ``DynamicCache`` holding ``layers`` [(keys, values) of (B, H, T, D)] with room for ``capacity`` positions."""
    return cache_from_layers([PreallocatedLayer(k, v, capacity) for k, v in layers])
