"""Choose which parameters train: named presets or regular expressions, everything else frozen.

Kaplan, Gekhman et al. (arXiv 2604.15574, 2026) report that training attention only (MLP/FFN
frozen) keeps task performance and held-out knowledge but learns almost no new facts, while
training the FFN only behaves like training everything (Qwen2.5-1.5B).

Presets are found from the model's module structure, not from parameter names, so one
definition serves every causal-LM family (names differ: OPT's feed-forward is ``fc1``/``fc2``
directly in the block, BLOOM and Falcon call attention ``self_attention``, GPT-NeoX's head is
``embed_out`` in transformers 4.x and ``lm_head`` in 5.x):

- ``attention``: the outermost module of each kind that attends, i.e. whose class name ends
  in ``Attention`` (``LlamaAttention``, ``GPT2Attention``, ``BloomAttention``, ...) or that
  owns query/key/value projections (``q_proj``+``k_proj``+``v_proj``, ``qkv_proj``,
  ``query_key_value``, ``c_attn``, ``Wqkv``);
- ``mlp``: in each block (a module that holds an attention module), every other child with
  parameters that is neither a norm nor an embedding: ``mlp`` (Llama, GPT-2, GPT-NeoX, BLOOM,
  Falcon, Phi-3's ``gate_up_proj``), ``fc1``/``fc2`` (OPT), ``block_sparse_moe`` (Mixtral);
- ``embeddings``: the input embeddings (``get_input_embeddings()``) and every other
  ``nn.Embedding`` outside the blocks (learned positions: GPT-2 ``wpe``, OPT ``embed_positions``);
- ``lm_head``: the output embeddings (``get_output_embeddings()``);
- ``norms``: every normalisation module (``nn.LayerNorm``, ``nn.GroupNorm``, or a class name
  ending in ``Norm``, e.g. ``LlamaRMSNorm``), wherever it sits;
- ``all``: every parameter.

docs/train.md lists what each preset selects per verified family. A parameter may belong to
two presets: Qwen3's ``self_attn.q_norm`` is in both "attention" and "norms". Under PEFT the
adapters sit inside the wrapped modules, so "attention" also selects the ``lora_`` weights of
attention projections; to train only the adapters, pass the regular expression ``lora_``.

Tied embeddings: with ``tie_word_embeddings`` (GPT-2 always; Llama-family models when the
config says so), ``lm_head.weight`` *is* ``embed_tokens.weight`` (``wte.weight`` for GPT-2),
one tensor under two names. ``requires_grad`` belongs to the tensor, so training
"lm_head" also trains the input embeddings and training "embeddings" also trains the head.
Names are matched with ``remove_duplicate=False`` so either name selects the shared tensor,
the counts count it once, and the report lists it under ``tied``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from knowtune.errors import ConfigError

#: Preset name -> what it selects (the module structure it is found from).
PRESETS: dict[str, str] = {
    "attention": "attention modules (class *Attention, or owning q/k/v projections)",
    "mlp": "the other parametrised children of each attention block, norms and embeddings aside (mlp, fc1/fc2, experts)",
    "embeddings": "input embeddings and position-embedding tables outside the blocks",
    "lm_head": "output embeddings (get_output_embeddings)",
    "norms": "normalisation modules (LayerNorm, GroupNorm, *Norm)",
    "all": "every parameter",
}

_ATTENTION_CLASS = re.compile(r"Attention\d*$")
_QKV_SETS = ({"q_proj", "k_proj", "v_proj"}, {"qkv_proj"}, {"query_key_value"}, {"c_attn"}, {"Wqkv"})


def is_attention(module: nn.Module) -> bool:
    """An attention class (``...Attention``) or a module owning query/key/value projections."""
    if _ATTENTION_CLASS.search(type(module).__name__):
        return True
    children = {name for name, _ in module.named_children()}
    return any(names <= children for names in _QKV_SETS)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: ``nn.LayerNorm``, ``nn.GroupNorm`` or a class named ``...Norm`` (RMSNorm)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("Norm")


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost attention modules of ``model`` by qualified name (one per block)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name and is_attention(module) and not any(name.startswith(outer + ".") for outer in found):
            found[name] = module
    return found


def mlp_modules(model: nn.Module) -> dict[str, nn.Module]:
    """In each block holding an attention module, the children with parameters that are
    neither attention, norm nor embedding: the feed-forward network."""
    modules = dict(model.named_modules())
    attention = attention_modules(model)
    blocks = dict.fromkeys(name.rpartition(".")[0] for name in attention)
    found: dict[str, nn.Module] = {}
    for block in blocks:
        for child_name, child in modules[block].named_children():
            name = f"{block}.{child_name}" if block else child_name
            if name in attention or is_norm(child) or isinstance(child, nn.Embedding):
                continue
            if next(child.parameters(), None) is not None:
                found[name] = child
    return found


def preset_modules(model: nn.Module, preset: str) -> dict[str, nn.Module]:
    """The modules preset ``preset`` (a key of :data:`PRESETS`) trains, by qualified name."""
    if preset == "attention":
        return attention_modules(model)
    if preset == "mlp":
        return mlp_modules(model)
    if preset == "norms":
        return {name: module for name, module in model.named_modules() if is_norm(module)}
    if preset == "lm_head":
        head = _call(model, "get_output_embeddings")
        return {name: module for name, module in model.named_modules() if head is not None and module is head}
    if preset == "embeddings":
        blocks = tuple(name.rpartition(".")[0] + "." for name in attention_modules(model))
        inputs = _call(model, "get_input_embeddings")
        return {name: module for name, module in model.named_modules()
                if module is inputs or (isinstance(module, nn.Embedding) and not name.startswith(blocks))}
    if preset == "all":
        return {"": model}
    raise KeyError(preset)


def _call(model: nn.Module, method: str):
    try:
        return getattr(model, method)()
    except (AttributeError, NotImplementedError):
        return None


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
    """Train the parameters selected by any entry of ``train_only``; freeze all others.

    Each entry is a key of :data:`PRESETS` (found from the module structure, see the module
    docstring) or a regular expression searched (``re.search``) in parameter names. Raises
    :class:`~knowtune.errors.ConfigError` for an empty list, an invalid expression, or an
    entry that selects no parameter.
    """
    if not train_only:
        raise ConfigError("train_only is empty: every parameter would be frozen", fix=_fix())
    names_of: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
        params[id(param)] = param

    selected: set[int] = set()
    for entry in train_only:
        hits = set(_selected_ids(model, entry, names_of))
        if not hits:
            example = next(iter(names_of.values()))[0] if names_of else "(none)"
            what = f"preset {entry!r} ({PRESETS[entry]}) finds" if entry in PRESETS else f"entry {entry!r} matches"
            raise ConfigError(f"train_only {what} no parameter of {type(model).__name__} (names look like {example!r})", fix=_fix())
        selected |= hits
    for key, param in params.items():
        param.requires_grad_(key in selected)

    return TrainableReport(
        trainable=sum(params[key].numel() for key in selected),
        total=sum(param.numel() for param in params.values()),
        trainable_names=tuple(names_of[key][0] for key in names_of if key in selected),
        tied=tuple(tuple(names) for names in names_of.values() if len(names) > 1),
    )


def _selected_ids(model: nn.Module, entry: str, names_of: dict[int, list[str]]) -> Iterator[int]:
    """``id()`` of each parameter ``entry`` (a preset or a regular expression) selects."""
    if entry in PRESETS:
        for module in preset_modules(model, entry).values():
            yield from (id(param) for param in module.parameters())
        return
    try:
        pattern = re.compile(entry)
    except re.error as error:
        message = f"train_only entry {entry!r} is neither a preset nor a valid regular expression: {error}"
        raise ConfigError(message, fix=_fix()) from None
    yield from (key for key, names in names_of.items() if any(pattern.search(name) for name in names))


def _fix() -> str:
    return (
        f"use a preset ({', '.join(PRESETS)}) or a regular expression over parameter names, "
        r"e.g. 'layers\.0\.' or 'lora_'"
    )
