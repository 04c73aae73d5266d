"""Trainer checkpoints that a kill cannot leave half-written: a manifest written last, checked before resuming.

The ``Trainer`` writes ``checkpoint-N/`` one file at a time (model, tokenizer, training
arguments, optimizer, scheduler, RNG state, ``trainer_state.json``); a ``kill -9`` or a full
disk in between leaves a directory that ``resume_from_checkpoint`` cannot load. After each
save, :class:`CheckpointManifest` makes the files durable (fsync), writes
``knowtune-checkpoint.json`` (every file and its size) atomically, and only then deletes the
older checkpoints: the Trainer's own rotation (``save_total_limit``) is off, because it
deletes them before the new checkpoint is whole. On resume, :func:`resume_checkpoint` picks
the newest checkpoint whose files match its manifest and removes every one that does not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from knowtune.io import atomic_write_json

MANIFEST = "knowtune-checkpoint.json"
#: Set by the kill tests (:func:`knowtune.testing.kill_in_checkpoint`): ``EPOCH:POSITION``.
KILL_ENV = "KNOWTUNE_TEST_KILL_IN_CHECKPOINT"
_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_files(checkpoint: Path) -> dict[str, int]:
    """Every file under ``checkpoint`` but the manifest (path relative to it, ``/``-separated) and its size in bytes."""
    files = {}
    for path in sorted(Path(checkpoint).rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.endswith(".tmp"):
            files[path.relative_to(checkpoint).as_posix()] = path.stat().st_size
    return files


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(checkpoint: Path) -> None:
    """Flush the checkpoint's files to disk, then record them in ``MANIFEST``: the checkpoint is complete."""
    checkpoint = Path(checkpoint)
    files = checkpoint_files(checkpoint)
    for name in files:
        _fsync(checkpoint / name)
    atomic_write_json(checkpoint / MANIFEST, {"files": files})
    _fsync(checkpoint)


def incomplete_reason(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (no manifest, a missing or truncated file), or None when it is complete."""
    try:
        listed = json.loads((Path(checkpoint) / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return "its write did not finish (no manifest)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for name, size in listed.items():
        path = Path(checkpoint) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not {size}"
    return None


def checkpoint_dirs(root: Path) -> list[Path]:
    """The ``checkpoint-N`` directories in ``root``, oldest (smallest N) first."""
    if not Path(root).is_dir():
        return []
    found = [(int(m.group(1)), path) for path in Path(root).iterdir() if path.is_dir() and (m := _NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def _remove(checkpoint: Path) -> None:
    (checkpoint / MANIFEST).unlink(missing_ok=True)  # first: a half-deleted checkpoint is never taken as complete
    shutil.rmtree(checkpoint, ignore_errors=True)


def resume_checkpoint(root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint in ``root`` (None: start from the beginning).

    Incomplete checkpoints (a killed or failed write) are removed, each with one line to ``log``.
    """
    complete = None
    for checkpoint in reversed(checkpoint_dirs(root)):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            complete = complete or checkpoint
            continue
        _remove(checkpoint)
        log(f"removed the incomplete checkpoint {checkpoint.name}: {reason}")
    return complete


class CheckpointManifest(TrainerCallback):
    """After each checkpoint save: :func:`write_manifest`, then delete the older checkpoints unless ``keep_all``."""

    def __init__(self, keep_all: bool = False):
        self.keep_all = keep_all

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its files (rng_state_<rank>.pth) before they are listed
        if not args.should_save:  # only the process that writes the model writes the manifest
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        write_manifest(checkpoint)
        if not self.keep_all:
            for older in checkpoint_dirs(checkpoint.parent):
                if older != checkpoint:
                    _remove(older)


def checkpoint_callbacks(keep_all: bool) -> list[TrainerCallback]:
    """The callbacks of a saving ``Trainer``: :class:`CheckpointManifest`, after the kill hook of the
    kill tests when ``$KNOWTUNE_TEST_KILL_IN_CHECKPOINT`` is set."""
    callbacks: list[TrainerCallback] = [CheckpointManifest(keep_all)]
    if os.environ.get(KILL_ENV):
        from knowtune.testing import kill_in_checkpoint_from_env

        callbacks.insert(0, kill_in_checkpoint_from_env())
    return callbacks
