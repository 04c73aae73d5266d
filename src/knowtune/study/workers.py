"""Running the study's heavy stages on several CPU cores: one single-threaded process per worker.

Tiny models run fastest single-threaded, and torch's own threads slow down badly when other
processes share the cores; so with ``workers: N`` the audit runs as N shards
(``AnnotateConfig.shard = i/N``, joined by :func:`knowtune.slick.results.merge_shards`) and the
variants train N at a time, each in its own ``spawn``-ed process with one torch thread. With
``workers: 1`` everything runs in the calling process. Results do not depend on N: shards
draw the same samples as one run (docs/annotate.md), and each training run is seeded.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowtune.errors import KnowtuneError

if TYPE_CHECKING:
    from knowtune.data.splits import Splits
    from knowtune.train.config import TrainConfig

Log = Callable[[str], None]


def stderr_log(prefix: str = "") -> Log:
    """A log that prints each line (after ``prefix``) to stderr: worker processes' progress."""
    def log(line: str) -> None:
        print(f"{prefix} {line}" if prefix else line, file=sys.stderr, flush=True)

    return log


def single_thread() -> None:
    """One torch thread in this process (tiny models run fastest so, and workers do not contend)."""
    import torch

    torch.set_num_threads(1)


#: Seconds between a worker's checks that its parent still lives (where the kernel cannot tell it).
WATCHDOG_S = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this process when ``parent`` (the knowtune command) ends, by any signal.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere, and as a fallback, a daemon thread exits when the parent pid changes (the
    orphan is re-parented). SIGINT is ignored: a Ctrl-C reaches the whole process group,
    and the parent stops its workers itself (:func:`process_pool`).
    """
    import os
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        os._exit(1)

    threading.Thread(target=watch, name="knowtune-parent-watchdog", daemon=True).start()


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` processes started with ``spawn`` (no forked torch state) that die with this process.

    When the body raises (a failed job, SIGINT or SIGTERM turned into an exception by the
    CLI), pending jobs are cancelled and running workers killed at once: the jobs in flight
    are dropped (each resumes from what it stored when the command is rerun), not awaited.
    """
    import os

    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_processes([p for p in multiprocessing.active_children() if p not in before])
        raise
    pool.shutdown(wait=True)


def stop_processes(processes: Sequence[multiprocessing.process.BaseProcess], grace_s: float = 3.0) -> None:
    """Terminate ``processes`` (SIGTERM), then kill those still alive after ``grace_s`` seconds."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def annotate_progress(log: Log, tag: str) -> Callable[[dict[str, Any]], None]:
    """An ``on_batch`` hook of ``run_annotate`` that logs done/total, speed and ETA."""
    def progress(info: dict[str, Any]) -> None:
        eta = f", ETA {info['eta_s']:.0f} s" if info.get("eta_s") is not None else ""
        log(f"[{tag}] {info['done']}/{info['total']} examples ({info['examples_per_s']:.1f}/s{eta})")

    return progress


def _annotate_shard(settings: dict[str, Any]) -> dict[str, Any]:
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.protocol import AnnotateConfig

    single_thread()
    config = AnnotateConfig.model_validate(settings)
    return run_annotate(config, on_batch=annotate_progress(stderr_log(), f"annotate {config.shard}"))


def shard_dirs_of(out: Path, shards: int) -> list[Path]:
    """The output directories of an audit into ``out`` run as ``shards`` shards."""
    return [out.parent / f"{out.name}-shards" / f"{i}-of-{shards}" for i in range(shards)]


def annotate(config, out: Path, workers: int, log: Log) -> dict[str, Any]:
    """Run the audit ``config`` into ``out``: in this process, or as ``workers`` shards merged into ``out``."""
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.results import merge_shards
    from knowtune.study import launch

    if launch.launched():  # accelerate launch / torchrun: one shard per rank
        return launch.annotate_ranks(config, out, log)
    if workers == 1:
        return run_annotate(config.model_copy(update={"out": str(out)}), on_batch=annotate_progress(log, "annotate"))
    shard_dirs = shard_dirs_of(out, workers)
    settings = [config.model_copy(update={"shard": f"{i}/{workers}", "out": str(d)}).model_dump(mode="json") for i, d in enumerate(shard_dirs)]
    log(f"[annotate] {workers} shards in parallel processes ({shard_dirs[0].parent})")
    with process_pool(workers) as pool:
        summaries = list(pool.map(_annotate_shard, settings))
    incomplete = [str(d) for d, s in zip(shard_dirs, summaries) if not s.get("complete")]
    if incomplete:
        raise KnowtuneError(f"audit shards incomplete: {', '.join(incomplete)}", fix="rerun the same study command: it resumes")
    return merge_shards(shard_dirs, out)


@dataclass(frozen=True)
class TrainJob:
    """One fine-tuning run of the study: a curated variant (or a compared method) trained from ``model``
    on ``splits.train`` and evaluated on every split each epoch, into ``run_dir`` (it resumes by itself)."""

    name: str
    config: TrainConfig
    model: str
    splits: Splits
    categories: Mapping[str, str]
    run_dir: Path

    def run(self, log: Log):
        """Train (or resume, or return the finished run); the :class:`~knowtune.train.sft.TrainResult`."""
        from knowtune.train.sft import train_model

        return train_model(self.config, self.model, self.splits, self.categories, self.run_dir, log=log)


def _train_job(job: TrainJob) -> str:
    single_thread()
    job.run(stderr_log(f"[train] {job.name}:"))
    return job.name


def train(jobs: Sequence[TrainJob], workers: int, log: Log, on_done: Callable[[str], None]) -> None:
    """Run training ``jobs``, ``workers`` at a time; ``on_done(name)`` after each."""
    if workers == 1:
        for job in jobs:
            job.run(lambda line, n=job.name: log(f"[train] {n}: {line}"))
            on_done(job.name)
        return
    log(f"[train] {len(jobs)} runs, {workers} at a time in parallel processes")
    with process_pool(workers) as pool:
        for name in pool.map(_train_job, jobs):
            on_done(name)
