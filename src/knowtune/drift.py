"""Representation drift: how far fine-tuning moves a held-out entity's hidden state.

Kaplan, Gekhman et al., "Why Fine-Tuning Encourages Hallucinations and How to Fix It"
(arXiv 2604.15574, 2026), mechanism study: the hidden representation of held-out entities
drifts (cosine) about 5% during format learning for every key type and about 11% with
name-like keys; self-distillation keeps it near 5%. For n held-out examples with subject
states h_i (base model) and h'_i (fine-tuned model), read at the last token of the subject
in the fine-tuning prompt at one layer,

    drift = (1/n) sum_i (1 - cos(h_i, h'_i)),   cos(a, b) = a.b / (|a| |b|)

computed as ``0.5 * |a/|a| - b/|b||^2`` (the same quantity, exactly 0 for equal states and
free of the cancellation in ``1 - cos`` when the drift is small).

Layer (:data:`DEFAULT_LAYER`): an index into the model's ``hidden_states`` (0 = the
embeddings, i = the output of block i, negative counts from the end). The default, -1, is
the last one (for Llama/Qwen after the final norm): it means the same on every depth, from
the 4-layer default model to Qwen2.5-1.5B, and the paper's notes name no layer. Factual-
recall work locates subject enrichment at the last subject token in the middle layers
(Meng et al. 2022, arXiv 2202.05262; Geva et al. 2023, arXiv 2304.14767): pass
``layer = num_hidden_layers // 2`` to measure the drift there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.evaluate import DEFAULT_TEMPLATE, PromptFormat
from knowtune.models import pad_token_id

#: ``hidden_states`` index read by default: the last layer (see the module docstring).
DEFAULT_LAYER = -1


def _last_overlapping_token(offsets: Sequence[tuple[int, int]], start: int, end: int) -> int | None:
    """Index of the last token whose character span overlaps ``[start, end)`` (None if none does)."""
    found = None
    for index, (token_start, token_end) in enumerate(offsets):
        if token_end > token_start and token_start < end and token_end > start:
            found = index
    return found


def subject_token_positions(tokenizer, prompts: Sequence[str], subjects: Sequence[str]) -> list[int]:
    """Per prompt, the index (in its token ids, no special tokens) of the last token of the
    subject's last occurrence, from the fast tokenizer's offset mapping.

    A token that runs past the subject (``"Paris?"`` as one token) still counts: it is the
    token that holds the subject's last character.
    """
    if len(prompts) != len(subjects):
        raise ValueError(f"{len(prompts)} prompts but {len(subjects)} subjects")
    if not getattr(tokenizer, "is_fast", False):
        raise KnowtuneError(f"{type(tokenizer).__name__} gives no character offsets, which locating the subject token needs",
                            fix="load the model's fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))")
    if not prompts:
        return []
    encoded = tokenizer(list(prompts), add_special_tokens=False, return_offsets_mapping=True)
    positions = []
    for prompt, subject, offsets in zip(prompts, subjects, encoded["offset_mapping"]):
        start = prompt.rfind(subject) if subject else -1
        if start < 0:
            raise KnowtuneError(f"subject {subject!r} does not occur in the prompt {prompt!r}",
                                fix="give every example a subject spelled exactly as in its question")
        position = _last_overlapping_token(offsets, start, start + len(subject))
        if position is None:
            raise KnowtuneError(f"no token of the prompt {prompt!r} covers the subject {subject!r}",
                                fix="check that the tokenizer's offset mapping covers the prompt text")
        positions.append(position)
    return positions


def _check_subjects(examples: Sequence[QAExample]) -> None:
    """Every example needs a subject that occurs in its question."""
    for ex in examples:
        if not ex.subject:
            raise KnowtuneError(f"example {ex.id!r} has no subject; representation drift reads the hidden state at the subject's last token",
                                fix="give every drift example a 'subject' field, or pick a drift split/categories whose examples have one")
        if ex.subject not in ex.question:
            raise KnowtuneError(f"example {ex.id!r}: its subject {ex.subject!r} does not occur in its question {ex.question!r}",
                                fix="spell the subject exactly as in the question, or leave such examples out of the drift set")


def _resolve_layer(layer: int, count: int) -> int:
    if not -count <= layer < count:
        raise ConfigError(f"drift layer {layer} is out of range: the model has {count} hidden states (0 = embeddings, {count - 1} = last layer)",
                          fix=f"set the layer between {-count} and {count - 1} (negative counts from the end; `knowtune train`: drift.layer or --drift-layer)")
    return layer % count


def entity_states(model, tokenizer, examples: Sequence[QAExample], *, layer: int = DEFAULT_LAYER,
                  template: str = DEFAULT_TEMPLATE, batch_size: int = 64) -> torch.Tensor:
    """Hidden states (n, hidden), float32 on the CPU, at the last subject token of each
    example's fine-tuning prompt ``PromptFormat(template=template).render(question)``.

    ``layer`` indexes ``hidden_states`` (0 = embeddings, negative from the end). Batches are
    right-padded: the real tokens keep positions 0..len-1 and, under the causal mask, never
    see the padding. Runs without gradients in eval mode; the model's mode is restored.
    Works with PEFT-wrapped models.
    """
    _check_subjects(examples)
    prompt_format = PromptFormat(template=template)
    prompts = [prompt_format.render(ex.question) for ex in examples]
    positions = subject_token_positions(tokenizer, prompts, [ex.subject for ex in examples])
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for begin in range(0, len(prompts), batch_size):
                batch_ids = ids[begin : begin + batch_size]
                width = max(len(row) for row in batch_ids)
                input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)  # (B, T)
                attention_mask = torch.zeros_like(input_ids)  # (B, T)
                for row, tokens in enumerate(batch_ids):
                    input_ids[row, : len(tokens)] = torch.tensor(tokens)
                    attention_mask[row, : len(tokens)] = 1
                output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True)
                hidden = output.hidden_states[_resolve_layer(layer, len(output.hidden_states))]  # (B, T, H)
                where = torch.tensor(positions[begin : begin + batch_size], device=hidden.device)  # (B,)
                chunks.append(hidden[torch.arange(len(batch_ids), device=hidden.device), where].float().cpu())  # (B, H)
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, model.config.hidden_size, dtype=torch.float32)
    return torch.cat(chunks)  # (n, H)


def cosine_drift(reference: torch.Tensor, current: torch.Tensor) -> float:
    """Mean over rows of ``1 - cos(reference_i, current_i)`` (Kaplan, Gekhman et al. 2026).

    Computed in float64 as ``0.5 * |r/|r| - c/|c||^2`` per row: 0 exactly for equal rows,
    2 for opposite ones.
    """
    if reference.shape != current.shape or reference.dim() != 2:
        raise ValueError(f"cosine_drift needs two (n, hidden) tensors of one shape, got {tuple(reference.shape)} and {tuple(current.shape)}")
    if reference.shape[0] == 0:
        raise ValueError("cosine_drift of zero rows is undefined")
    a = F.normalize(reference.double(), dim=-1)  # (n, H)
    b = F.normalize(current.double().to(a.device), dim=-1)  # (n, H)
    return float((0.5 * (a - b).pow(2).sum(-1)).mean())
