"""Every private or version-dependent transformers internal knowtune relies on, in one place.

knowtune supports transformers 4.56 through 5.x. Where no public API serves, the internal
is wrapped here, and ``tests/test_compat.py`` checks each one against the installed
version, so an upgrade that changes it fails there, loudly, rather than giving wrong
results somewhere else.

SliCK engine (:mod:`knowtune.slick.generation`, :mod:`knowtune.slick.prefix_attention`,
:mod:`knowtune.slick.kvcache`):

* the attention registry: :func:`register_attention`, :func:`uses_attention_registry`,
  :func:`attention_implementation` (sets the private ``config._attn_implementation``);
* transformers' SDPA attention function and ``repeat_kv``;
* the per-layer cache: ``DynamicLayer`` (subclassed), :func:`cache_layers`,
  :func:`cache_from_layers` (a ``DynamicCache`` whose ``layers`` are set directly);
* the name of the cache argument and output (``past_key_values`` in 4.x, ``cache`` in 5.x):
  :func:`cache_argument`, :func:`output_cache`.

Training (:func:`knowtune.train.sft.build_trainer`): ``TrainingArguments`` keys that 5.x
removed: :func:`warmup_arguments` (``warmup_ratio``), :func:`reporter_logging_dir` (``logging_dir``);
FSDP on CPU processes, which accelerate runs as DDP: :func:`enable_fsdp_on_cpu` (sets accelerate's state).
"""

from __future__ import annotations

import inspect
import math
import os
from contextlib import contextmanager

import torch
import transformers
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from knowtune.errors import KnowtuneError

__all__ = [
    "DynamicLayer", "repeat_kv", "sdpa_attention_forward", "register_attention", "uses_attention_registry",
    "attention_implementation", "cache_layers", "cache_from_layers", "cache_argument", "output_cache",
    "require_layered_cache",
]


# --- attention registry ---------------------------------------------------------------

def register_attention(name: str, function) -> None:
    """Make ``function`` selectable as attention implementation ``name`` (``AttentionInterface``)."""
    AttentionInterface.register(name, function)


def uses_attention_registry(model) -> bool:
    """Whether ``model``'s attention layers look their function up in the registry
    (``_supports_attention_backend``, a private class flag)."""
    return bool(getattr(model, "_supports_attention_backend", False))


@contextmanager
def attention_implementation(model, name: str):
    """Route ``model``'s attention through the registered implementation ``name`` for the
    duration. Attention modules read the private ``config._attn_implementation`` at every
    call; the public ``set_attn_implementation`` also re-validates and rebuilds, too slow
    to toggle around each forward."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


# --- caches ---------------------------------------------------------------------------

def require_layered_cache() -> None:
    """The per-layer ``Cache`` API (``cache.layers``) arrived in transformers 4.56; fail clearly before it."""
    if not hasattr(DynamicCache(), "layers"):
        raise KnowtuneError(f"knowtune annotate needs transformers >= 4.56 (this is {transformers.__version__})",
                            fix="pip install -U 'transformers>=4.56'")


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each (B, heads, T, head_dim), of a per-layer ``Cache``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from_layers(layers: list) -> DynamicCache:
    """A ``DynamicCache`` made of the given layer objects (``DynamicLayer`` subclasses)."""
    cache = DynamicCache()
    cache.layers = list(layers)
    cache.layer_class_to_replicate = None  # no layer is added lazily
    return cache


def cache_argument(model) -> str:
    """The keyword ``model.forward`` takes its cache under: ``cache`` (5.x) or ``past_key_values`` (4.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The cache of a model output (``output.cache`` in 5.x, ``output.past_key_values`` in 4.x)."""
    keys = output.keys()
    if "cache" in keys:
        return output["cache"]
    return output.get("past_key_values")


# --- training (knowtune.train) ---------------------------------------------------------
# Owned by the training code; TrainingArguments keys that differ between 4.x and 5.x.

def _training_argument(name: str) -> bool:
    import dataclasses

    from transformers import TrainingArguments

    return name in {field.name for field in dataclasses.fields(TrainingArguments)}


def warmup_arguments(ratio: float) -> dict[str, float]:
    """``TrainingArguments`` keywords for a linear warmup over ``ratio`` (0..1) of the steps.

    4.x: ``warmup_ratio``. 5.x removed it; a float ``warmup_steps`` below 1 is a ratio there
    (``ceil(steps * ratio)`` warmup steps in both), and 1.0 would mean one step, so a ratio
    of 1 is passed as the largest float below 1 (the same ``ceil``: all the steps).
    """
    if _training_argument("warmup_ratio"):
        return {"warmup_ratio": ratio}
    return {"warmup_steps": min(ratio, math.nextafter(1.0, 0.0))}


@contextmanager
def reporter_logging_dir(path):
    """Within the block, have reporters (TensorBoard) log to ``path``; yields the
    ``TrainingArguments`` keywords for it. 4.x: ``logging_dir``. 5.x removed that argument;
    its ``TensorBoardCallback`` reads the ``TENSORBOARD_LOGGING_DIR`` environment variable
    when it is made, i.e. when the ``Trainer`` is constructed inside the block."""
    if _training_argument("logging_dir"):
        yield {"logging_dir": str(path)}
        return
    previous = os.environ.get(TENSORBOARD_LOGGING_DIR)
    os.environ[TENSORBOARD_LOGGING_DIR] = str(path)
    try:
        yield {}
    finally:
        if previous is None:
            os.environ.pop(TENSORBOARD_LOGGING_DIR, None)
        else:
            os.environ[TENSORBOARD_LOGGING_DIR] = previous


TENSORBOARD_LOGGING_DIR = "TENSORBOARD_LOGGING_DIR"


def enable_fsdp_on_cpu(trainer) -> None:
    """Have ``trainer`` shard its model with FSDP on CPU processes (gloo), as accelerate does on GPUs.

    accelerate (1.10 to 1.15) sets ``distributed_type = FSDP`` and the FSDP plugin in
    ``AcceleratorState.__init__`` only for accelerator devices (the ``MULTI_GPU``/``MULTI_XPU``/...
    branch; a CPU launch stays ``MULTI_CPU``), so an FSDP config runs as DDP on CPU, while
    torch's FSDP itself runs there over gloo. This sets what accelerate sets on GPUs: the
    plugin (read from the ``FSDP_*`` variables ``accelerate launch`` exported) and the
    distributed type, on the shared ``PartialState`` too (every ``AcceleratorState()`` copies
    it), and the ``Trainer``'s ``is_fsdp_enabled`` flag; ``Trainer.train`` then prepares the
    model with accelerate's own FSDP code. Called right after the ``Trainer`` is made.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise KnowtuneError(f"FSDP on CPU expects accelerate's MULTI_CPU state, found {state.distributed_type}",
                            fix="report this with your accelerate version; launch with DDP (distributed_type: MULTI_GPU) meanwhile")
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
