"""Training with several processes (``accelerate launch`` or ``torchrun``): who does what.

transformers' ``Trainer`` runs data-parallel training by itself when the launcher sets
``WORLD_SIZE`` (DDP, or DeepSpeed ZeRO-1/2 from an accelerate config): every rank holds the
whole model, trains on its share of each global batch, and the gradients are averaged.
What knowtune adds around it is decided here:

- the output directory is locked, and its files (``config.yaml``, ``run.json``, the
  format-stage teacher, the teacher cache, ``metrics.jsonl``, ``best/``, ``model/``,
  ``provenance.json``) are written, by the main process only; the other ranks wait at a
  barrier and read what it wrote;
- the per-epoch evaluation runs once, on the main process, and its early-stopping decision
  is broadcast (:class:`SyncStop`) so that every rank stops at the same epoch; settings
  that shard the weights themselves (FSDP, ZeRO-3) are refused on GPUs, since a sharded
  forward pass needs every rank.

With one process (no launcher) every function here is a no-op and nothing is initialised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from transformers import TrainerCallback

from knowtune.errors import ConfigError, KnowtuneError

T = TypeVar("T")

#: How long a rank waits at a collective (e.g. for the main process's evaluation): Trainer's ddp_timeout default.
TIMEOUT = timedelta(seconds=1800)


def world_size() -> int:
    """Processes in this run, as the launcher (accelerate, torchrun) set ``WORLD_SIZE``; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 = the main process)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: str, timeout: timedelta = TIMEOUT) -> None:
    """Initialise the process group when launched with several processes: gloo on CPU (``device``
    ``cpu``, or ``auto`` without CUDA), NCCL on GPUs.

    ``accelerate.PartialState`` does it as ``Trainer`` would (accelerate's environment
    variables choose DeepSpeed where its config says so); ``Trainer`` later finds the group
    initialised and uses it.
    """
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    check_replicated_parameters(cpu)
    if cpu:
        # accelerate names rank r's device cpu:r, and transformers 4.x resumes the optimizer
        # with torch.load(map_location=cpu:r), which torch cannot restore to: plain cpu.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    if not dist.is_initialized():
        PartialState(cpu=cpu, timeout=timeout)  # the first init sets it (knowtune study waits longer: study/launch.py)


def sharded_parameters() -> str | None:
    """The accelerate setting that shards the model's parameters over the ranks (FSDP, DeepSpeed
    ZeRO-3), as ``accelerate launch`` exports it to the processes; None for DDP and ZeRO-1/2."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP (distributed_type: FSDP)"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file and os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            stage = str(json.load(handle).get("zero_optimization", {}).get("stage", stage))
    return "DeepSpeed ZeRO-3 (zero_stage: 3)" if stage == "3" else None


def check_replicated_parameters(cpu: bool) -> None:
    """Refuse a launch that shards the parameters (on GPUs; on CPU accelerate runs such a config as DDP).

    Every rank must hold the whole model: the per-epoch evaluation generates on the main
    process alone, and a sharded forward pass needs every rank at each step.
    """
    setting = sharded_parameters()
    if setting is not None and not cpu:
        raise ConfigError(f"the accelerate config shards the model's parameters ({setting}), but knowtune's per-epoch "
                          "evaluation generates on the main process alone and needs the whole model there",
                          fix="use DDP (distributed_type: MULTI_GPU) or DeepSpeed ZeRO-2 (zero_stage: 2), with lora: if the "
                              "model and its optimizer state do not fit on one GPU (docs/train.md, Multi-GPU)")


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every rank (any picklable object)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first() -> Iterator[bool]:
    """The main process runs the block first (yielding True) while the others wait; then they
    run it (yielding False), e.g. to read a file the main process wrote in it."""
    if is_main():
        yield True
        barrier()
    else:
        barrier()
        yield False


@contextmanager
def output_lock(directory: str | Path, command: str, *, device: str = "auto") -> Iterator[None]:
    """:class:`knowtune.io.OutputLock` on ``directory``, taken by the main process for all ranks.

    Without a launcher this is the lock itself. With several processes the group is
    initialised first; the main process takes the lock and tells every rank whether it got
    it, so a directory in use by another run stops all ranks with the same error (exit 2).
    """
    from knowtune.io import OutputLock

    if world_size() == 1:
        with OutputLock(directory, command):
            yield
        return
    init(device)
    with ExitStack() as stack:
        failure = None
        if is_main():
            try:
                stack.enter_context(OutputLock(directory, command))
            except KnowtuneError as error:
                failure = (str(error), error.fix)
        failure = broadcast(failure)
        if failure is not None:
            raise KnowtuneError(failure[0], fix=failure[1])
        yield


def rank_callbacks(evaluator: TrainerCallback, callbacks: list[TrainerCallback]) -> list[TrainerCallback]:
    """The ``Trainer`` callbacks of this rank: the evaluation callback on the main process
    only, and with several processes a :class:`SyncStop` after it on every rank."""
    mine = [evaluator, *callbacks] if is_main() else list(callbacks)
    return [*mine, SyncStop()] if world_size() > 1 else mine


class SyncStop(TrainerCallback):
    """Make every rank follow the main process's early-stopping decision at each epoch end.

    Placed after :class:`~knowtune.train.callbacks.EpochEvalCallback` (which evaluates on the
    main process only): a rank that kept training alone would wait forever at the next
    gradient all-reduce.
    """

    def on_epoch_end(self, args, state, control, **kwargs: Any):
        control.should_training_stop = bool(broadcast(control.should_training_stop))
        return control
