"""A prompt's decoding state right after its prefill, kept so that more rows of the same
prompt can be decoded later without feeding it again (lazy mode's samples,
:mod:`knowtune.slick.annotate`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prefill:
    """A prompt's state right after its prefill, kept to decode more rows later without
    feeding the prompt again: row ``row`` of a batch's keys and values
    (layers, 2, R, Hkv, S, D), right-aligned over its last ``length`` positions, the logits
    of its last position (V,), its next position and how many prefix tokens it shares."""

    batch_kv: torch.Tensor
    row: int
    length: int
    logits: torch.Tensor
    next_pos: int
    shared: int

    @property
    def kv(self) -> torch.Tensor:
        """This prompt's keys and values, (layers, 2, Hkv, length, D)."""
        return self.batch_kv[:, :, self.row, :, self.batch_kv.shape[4] - self.length:]


def compact_prefills(prefills: list[Prefill | None]) -> list[Prefill | None]:
    """Copies of ``prefills`` that hold only their own rows (one gather per source batch),
    so the batches they came from can be freed."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prefills):
        if p is not None:
            groups.setdefault(id(p.batch_kv), []).append(i)
    out: list[Prefill | None] = list(prefills)
    for members in groups.values():
        first = prefills[members[0]]
        rows = torch.tensor([prefills[i].row for i in members], device=first.batch_kv.device)
        kv = first.batch_kv.index_select(2, rows)
        logits = torch.stack([prefills[i].logits for i in members])
        for new_row, i in enumerate(members):
            p = prefills[i]
            out[i] = Prefill(kv, new_row, p.length, logits[new_row], p.next_pos, p.shared)
    return out
