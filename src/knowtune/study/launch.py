"""``knowtune study`` under ``accelerate launch`` or ``torchrun``: every rank runs the study, and who does what.

Every rank runs the same stages in the same order, and each stage's skip decision and the study's
state (``study.json``) are the main process's, broadcast to the others, so the ranks never disagree:

- **annotate**: one audit shard per rank (``AnnotateConfig.shard = r/N``), as ``workers: N`` shards
  it over CPU processes; the main process merges the shards (results do not depend on N).
- **train** and **compare**: each run is trained by all ranks together, one run after another,
  by the code path of ``accelerate launch -m knowtune train`` (:mod:`knowtune.train.distributed`):
  DDP over the ranks, the main process writes the run and evaluates each epoch.
- every other stage (curate, baselines, retrieval, shift, analyse) runs on the main process while
  the others wait; an error there stops every rank with the main process's message. Sections
  whose stages train on one process (``key_overlap:``, ``table2:``) are refused under a launcher.

Only the main process writes ``config.yaml``, the sample and ``study.json``, and it holds the
output lock for all ranks. The study's own process pool (``workers: N``) cannot run under a
launcher (the launcher's processes take its place). Because ranks wait at a collective while
the main process audits again or analyses, the process group's timeout is :data:`TIMEOUT`
instead of the 30 minutes of ``knowtune train``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from knowtune.errors import ConfigError, KnowtuneError
from knowtune.study.pipeline import Study
from knowtune.train import distributed

T = TypeVar("T")

#: How long a rank waits at a collective, e.g. while the main process re-audits the trained models (``reaudit``).
TIMEOUT = timedelta(hours=24)
#: Stages that every rank works in; the others run on the main process alone.
RANK_STAGES = frozenset({"annotate", "train", "compare"})
#: Study sections whose stages train models outside the per-run path that the ranks share (so on
#: the main process alone, where training would wait for the other ranks forever), and what runs them instead.
SINGLE_PROCESS_SECTIONS = {
    "key_overlap": "remove key_overlap: and run the experiment alone with `knowtune keys --config keys.yaml`, or run this study "
                   "without a launcher (workers: N on CPU)",
    "table2": "remove table2: from a study run under a launcher, or run this study without one (workers: N on CPU)",
}


def launched() -> bool:
    """Whether ``accelerate launch`` or ``torchrun`` started this process as one of several."""
    return distributed.world_size() > 1


def start(config) -> None:
    """Under a launcher: refuse ``workers`` > 1 and :data:`SINGLE_PROCESS_SECTIONS`, then initialise the process
    group (with :data:`TIMEOUT`)."""
    if not launched():
        return
    sections = [name for name in SINGLE_PROCESS_SECTIONS if getattr(config, name, None) is not None]
    if sections:
        raise ConfigError(f"the study's {sections[0]}: section trains models on one process only, and cannot run under accelerate "
                          "launch or torchrun", fix=SINGLE_PROCESS_SECTIONS[sections[0]])
    if config.workers > 1:
        raise ConfigError(f"workers: {config.workers} starts a pool of CPU processes, which cannot run under accelerate launch "
                          "or torchrun (their processes already share the study's work)",
                          fix="leave workers at 1 (--workers 1) under a launcher; use workers: N without a launcher on CPU")
    distributed.init(config.resolved().train.device, timeout=TIMEOUT)


def on_main(work: Callable[[], T], what: str) -> T:
    """``work()`` run by the main process while the others wait; its result on every rank.

    An error on the main process is raised there and, as a :class:`KnowtuneError` with the same
    message, on every other rank, so that no rank is left waiting at the next collective.
    """
    result, failure = None, None
    if distributed.is_main():
        try:
            result = work()
        except BaseException as error:
            failure = (str(error), error.fix) if isinstance(error, KnowtuneError) else (
                f"the main process failed in {what}: {type(error).__name__}: {error}", None)
            distributed.broadcast((None, failure))
            raise
    result, failure = distributed.broadcast((result, failure))
    if failure is not None:
        raise KnowtuneError(failure[0], fix=failure[1])
    return result


def all_ranks(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order, on every rank."""
    import torch.distributed as dist

    values: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(values, value)
    return values


def annotate_ranks(config, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The audit ``config`` as one shard per rank, merged into ``out`` by the main process; its summary on every rank."""
    from knowtune.slick.annotate import run_annotate
    from knowtune.slick.results import merge_shards
    from knowtune.study.workers import annotate_progress, shard_dirs_of

    size, rank = distributed.world_size(), distributed.rank()
    dirs = shard_dirs_of(out, size)
    log(f"[annotate] {size} shards, one per process ({dirs[0].parent})")
    mine = config.model_copy(update={"shard": f"{rank}/{size}", "out": str(dirs[rank])})
    summary = run_annotate(mine, on_batch=annotate_progress(log, f"annotate {rank}/{size}"))
    complete = all_ranks(bool(summary.get("complete")))

    def merge() -> dict[str, Any]:
        incomplete = [str(d) for d, done in zip(dirs, complete) if not done]
        if incomplete:
            raise KnowtuneError(f"audit shards incomplete: {', '.join(incomplete)}", fix="rerun the same study command: it resumes")
        return merge_shards(dirs, out)

    return on_main(merge, "annotate")


class LaunchedStudy(Study):
    """A :class:`Study` run by every rank of a launcher: the main process decides and writes, all ranks train."""

    def open(self) -> None:
        start(self.config)  # already done by the CLI; here for run_study called from Python under a launcher

        def work():
            super(LaunchedStudy, self).open()
            return self.state, self.model_fingerprint, self.data_path, self.data_fingerprint

        self.state, self.model_fingerprint, self.data_path, self.data_fingerprint = on_main(work, "opening the study")

    def _save_state(self) -> None:
        if distributed.is_main():
            super()._save_state()

    def _stage(self, name: str, key: str, done: bool, work: Callable[[], dict[str, Any] | None]) -> str:
        key, done = distributed.broadcast((key, done))  # the main process's key and outputs decide for every rank
        if name not in RANK_STAGES:
            main_work = work
            work = lambda: on_main(main_work, f"[{name}]")  # noqa: E731
        status = super()._stage(name, key, done, work)
        self.state = distributed.broadcast(self.state)
        return status
