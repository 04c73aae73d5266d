"""Training with several processes (``accelerate launch`` or ``torchrun``): who does what.

transformers' ``Trainer`` runs data-parallel training by itself when the launcher sets
``WORLD_SIZE`` (DDP, DeepSpeed ZeRO-1/2 or FSDP from an accelerate config). What knowtune
adds around it is decided here:

- the output directory is locked, and its files (``config.yaml``, ``run.json``, the
  format-stage teacher, the teacher cache, ``metrics.jsonl``, ``best/``, ``model/``,
  ``provenance.json``) are written, by the main process only; the other ranks wait at a
  barrier and read what it wrote;
- with replicated weights (DDP, ZeRO-1/2) the per-epoch evaluation runs once, on the main
  process; with FSDP, where every rank holds a shard and a forward pass needs all of them,
  every rank generates for its share of the questions in lockstep (:func:`shard`,
  ``generate(synced_gpus=True)``), the main process gathers and scores the answers, and
  the whole weights are gathered (:func:`full_state_dict`) for ``best/`` and ``model/``;
- the main process's early-stopping decision is broadcast (:class:`SyncStop`) so that
  every rank stops at the same epoch.

On CPU processes accelerate runs an FSDP config as DDP; knowtune then shards the model
itself (:func:`knowtune.compat.enable_fsdp_on_cpu`), so the same code runs on CPU (gloo) as
on GPUs. DeepSpeed ZeRO-3 is refused on GPUs (:func:`check_sharding`).
With one process (no launcher) every function here is a no-op and nothing is initialised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
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
    if cpu:
        # accelerate names rank r's device cpu:r, and transformers 4.x resumes the optimizer
        # with torch.load(map_location=cpu:r), which torch cannot restore to: plain cpu.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    if not dist.is_initialized():
        PartialState(cpu=cpu, timeout=timeout)  # the first init sets it (knowtune study waits longer: study/launch.py)


FSDP = "FSDP (distributed_type: FSDP)"
ZERO3 = "DeepSpeed ZeRO-3 (zero_stage: 3)"


def sharded_parameters() -> str | None:
    """The accelerate setting that shards the model's parameters over the ranks (:data:`FSDP`, :data:`ZERO3`),
    as ``accelerate launch`` exports it to the processes; None for DDP and ZeRO-1/2."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return FSDP
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file and os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            stage = str(json.load(handle).get("zero_optimization", {}).get("stage", stage))
    return ZERO3 if stage == "3" else None


def shards_parameters() -> bool:
    """Whether this run shards the model over its processes with FSDP (every rank takes part in each forward pass)."""
    return world_size() > 1 and sharded_parameters() == FSDP


def check_sharding(config, cpu: bool) -> None:
    """Refuse the sharded settings knowtune cannot run: DeepSpeed ZeRO-3 on GPUs (on CPU accelerate runs it
    as DDP); FSDP version 1; sharded FSDP2 checkpoints that the installed accelerate resumes wrongly; and, with
    FSDP, a LoRA adapter or the format-stage teacher (both need the whole model on one rank)."""
    if world_size() == 1:
        return
    setting = sharded_parameters()
    if setting == ZERO3 and not cpu:
        raise ConfigError(f"the accelerate config shards the model's parameters with {setting}, which knowtune does not support "
                          "(its per-epoch evaluation and saves gather FSDP shards only)",
                          fix="use FSDP (distributed_type: FSDP, fsdp_version: 2), DeepSpeed ZeRO-2 (zero_stage: 2) or DDP "
                              "(distributed_type: MULTI_GPU) (docs/train.md, Multi-GPU)")
    if setting != FSDP:
        return
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("FSDP version 1 (fsdp_version: 1, accelerate's default): knowtune's sharded evaluation and saves "
                          "are written for FSDP2 (accelerate's FSDP1 plugin also needs a GPU)",
                          fix="set fsdp_version: 2 in the accelerate config (accelerate launch --use_fsdp --fsdp_version 2)")
    check_fsdp_resume()
    if config.lora is not None:
        raise ConfigError(f"lora with {setting}: knowtune merges and saves the adapter on one process, which needs the whole model",
                          fix="unset lora (FSDP shards full fine-tuning), or keep lora and launch with DDP (distributed_type: MULTI_GPU)")
    if config.method == "selfdistill" and config.selfdistill.teacher == "format_stage":
        raise ConfigError(f"selfdistill.teacher format_stage with {setting}: the format stage is trained and saved as a whole model",
                          fix="set selfdistill.teacher: base, or pass a teacher trained beforehand (selfdistill.teacher: DIR)")


#: The first accelerate that restores FSDP2's sharded optimizer state on resume (1.10 to 1.12 load it into the
#: empty ``optimizer.state_dict()`` of a fresh optimizer: the Adam moments start from zero again).
SHARDED_RESUME_ACCELERATE = "1.13.0"


def check_fsdp_resume() -> None:
    """Refuse FSDP2 checkpoints that the installed accelerate would resume wrongly (:data:`SHARDED_RESUME_ACCELERATE`)."""
    from importlib.metadata import version

    from packaging.version import Version

    fsdp2 = os.environ.get("FSDP_VERSION", "1") == "2"
    sharded = os.environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT" if fsdp2 else "FULL_STATE_DICT").upper() == "SHARDED_STATE_DICT"
    installed = version("accelerate")
    if fsdp2 and sharded and Version(installed) < Version(SHARDED_RESUME_ACCELERATE):
        raise ConfigError(f"accelerate {installed} resumes FSDP2 checkpoints of fsdp_state_dict_type SHARDED_STATE_DICT without "
                          "their optimizer state, so a resumed run would not continue the interrupted one",
                          fix=f"set fsdp_state_dict_type: FULL_STATE_DICT (accelerate launch --fsdp_state_dict_type FULL_STATE_DICT), "
                              f"or upgrade accelerate to >= {SHARDED_RESUME_ACCELERATE}")


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (every ``world_size``-th, from its rank), padded with the first item
    so that every rank gets the same number (each takes the same number of synced generation steps)."""
    size = world_size()
    if size == 1 or not items:
        return list(items)
    share = list(items[rank()::size])
    return share + [items[0]] * (-(-len(items) // size) - len(share))


def gather_shards(share: Sequence[T], total: int) -> list[T]:
    """The ``total`` results of every rank's :func:`shard`, in the order of the original items, on every rank."""
    size = world_size()
    if size == 1:
        return list(share)
    import torch.distributed as dist

    shares: list[Any] = [None] * size
    dist.all_gather_object(shares, list(share))
    return [shares[i % size][i // size] for i in range(total)]


def full_state_dict(model) -> dict[str, Any] | None:
    """The whole weights of an FSDP ``model`` on the main process (None elsewhere), tied weights once; every
    rank must call it (it gathers the shards). torch's ``get_model_state_dict`` with ``full_state_dict`` and ``cpu_offload``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    tied = _names(model.named_parameters(remove_duplicate=False)) - _names(model.named_parameters())
    return {name: tensor for name, tensor in state.items() if name not in tied}  # saved once, as save_pretrained does


def _names(named: Iterator[tuple[str, Any]]) -> set[str]:
    """Parameter names without the wrappers' prefixes (FSDP1's ``_fsdp_wrapped_module.``)."""
    return {name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "") for name, _ in named}


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
    only (on every rank with FSDP, which evaluates sharded), and with several processes a
    :class:`SyncStop` after it on every rank."""
    mine = [evaluator, *callbacks] if is_main() or shards_parameters() else list(callbacks)
    return [*mine, SyncStop()] if world_size() > 1 else mine


class SyncStop(TrainerCallback):
    """Make every rank follow the main process's early-stopping decision at each epoch end.

    Placed after :class:`~knowtune.train.callbacks.EpochEvalCallback` (whose scores and
    decision are the main process's): a rank that kept training alone would wait forever at the next
    gradient all-reduce.
    """

    def on_epoch_end(self, args, state, control, **kwargs: Any):
        control.should_training_stop = bool(broadcast(control.should_training_stop))
        return control
