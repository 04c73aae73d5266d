"""Choose which parameters train: named presets or regular expressions, everything else frozen.

Kaplan, Gekhman et al. (arXiv 2604.15574, 2026) report that training attention only (MLP/FFN
frozen) keeps task performance and held-out knowledge but learns almost no new facts, while
training the FFN only behaves like training everything (Qwen2.5-1.5B).

Presets are regular expressions over ``model.named_parameters()`` names, searched with
``re.search``, for the common layouts:

- Llama, Qwen2/2.5/3, Mistral, Gemma: ``model.layers.N.self_attn.{q,k,v,o}_proj``,
  ``model.layers.N.mlp.{gate,up,down}_proj``, ``model.embed_tokens``, ``lm_head``,
  ``input_layernorm`` / ``post_attention_layernorm`` / ``model.norm``;
- GPT-2: ``transformer.h.N.attn.{c_attn,c_proj}``, ``transformer.h.N.mlp.{c_fc,c_proj}``,
  ``transformer.{wte,wpe}``, ``ln_1`` / ``ln_2`` / ``ln_f``;
- GPT-NeoX / Pythia: ``gpt_neox.layers.N.attention.{query_key_value,dense}``,
  ``gpt_neox.layers.N.mlp.*``, ``gpt_neox.embed_in``, ``embed_out`` (the LM head),
  ``input_layernorm`` / ``post_attention_layernorm`` / ``final_layer_norm``.

A parameter may belong to two presets: Qwen3's ``self_attn.q_norm`` is in both "attention"
and "norms". Under PEFT the names gain a ``base_model.model.`` prefix and the presets still
match the (frozen) base weights; to train only the adapters, pass ``lora_``.

Tied embeddings: with ``tie_word_embeddings`` (GPT-2 always; Llama-family models when the
config says so), ``lm_head.weight`` *is* ``embed_tokens.weight`` (``wte.weight`` for GPT-2),
one tensor under two names. ``requires_grad`` belongs to the tensor, so training
"lm_head" also trains the input embeddings and training "embeddings" also trains the head.
Names are matched with ``remove_duplicate=False`` so either name selects the shared tensor,
the counts count it once, and the report lists it under ``tied``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from knowtune.errors import ConfigError

PRESETS: dict[str, str] = {
    "attention": r"\.(self_attn|attn|attention|self_attention)\.",
    "mlp": r"\.(mlp|feed_forward|ffn|block_sparse_moe)\.",
    "embeddings": r"(^|\.)(embed_tokens|embed_in|wte|wpe|word_embeddings|embed_positions)\.",
    "lm_head": r"(^|\.)(lm_head|embed_out)\.",
    "norms": r"(^|\.)(\w*norm\w*|ln_\w+)\.",
    "all": r".",
}


@dataclass(frozen=True)
class TrainableReport:
    """What :func:`set_trainable` left trainable; counts see a tied tensor once."""

    trainable: int
    total: int
    trainable_names: tuple[str, ...]
    tied: tuple[tuple[str, ...], ...] = ()

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def describe(self) -> str:
        """E.g. ``trainable 123,456 / 1,000,000 parameters (12.3%)``, plus any trainable tie."""
        text = f"trainable {self.trainable:,} / {self.total:,} parameters ({100 * self.fraction:.1f}%)"
        for names in self.tied:
            if names[0] in self.trainable_names:
                text += f"; {' = '.join(names)} are one tied tensor and train together"
        return text


def set_trainable(model: nn.Module, train_only: list[str]) -> TrainableReport:
    """Train the parameters matching any entry of ``train_only``; freeze all others.

    Each entry is a key of :data:`PRESETS` or a regular expression searched (``re.search``)
    in parameter names. Raises :class:`~knowtune.errors.ConfigError` for an empty list, an
    invalid expression, or an entry that matches no parameter.
    """
    if not train_only:
        raise ConfigError("train_only is empty: every parameter would be frozen", fix=_fix())
    patterns = [(entry, _compile(entry)) for entry in train_only]
    names_of: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
        params[id(param)] = param

    selected: set[int] = set()
    for entry, pattern in patterns:
        hits = {key for key, names in names_of.items() if any(pattern.search(n) for n in names)}
        if not hits:
            example = next(iter(names_of.values()))[0] if names_of else "(none)"
            raise ConfigError(
                f"train_only entry {entry!r} matches no parameter of {type(model).__name__} "
                f"(names look like {example!r})",
                fix=_fix(),
            )
        selected |= hits
    for key, param in params.items():
        param.requires_grad_(key in selected)

    return TrainableReport(
        trainable=sum(params[key].numel() for key in selected),
        total=sum(param.numel() for param in params.values()),
        trainable_names=tuple(names_of[key][0] for key in names_of if key in selected),
        tied=tuple(tuple(names) for names in names_of.values() if len(names) > 1),
    )


def _compile(entry: str) -> re.Pattern[str]:
    if entry in PRESETS:
        return re.compile(PRESETS[entry])
    try:
        return re.compile(entry)
    except re.error as error:
        message = f"train_only entry {entry!r} is neither a preset nor a valid regular expression: {error}"
        raise ConfigError(message, fix=_fix()) from None


def _fix() -> str:
    return (
        f"use a preset ({', '.join(PRESETS)}) or a regular expression over parameter names, "
        r"e.g. 'layers\.0\.' or 'lora_'"
    )
