"""Progress inside each training epoch: a rich bar with the epoch's ETA on a terminal, plain lines otherwise.

The Trainer's own tqdm bar is off (``disable_tqdm``); :class:`TrainProgress` replaces it.
On a terminal (a rich ``Console`` that is one) it draws one bar per epoch, with steps done,
time elapsed and time remaining, below the per-epoch metric lines (which must be printed
on the same console). Elsewhere (a log file, CI, a study's worker processes) it writes one
plain line at most every ``KNOWTUNE_PROGRESS_SECONDS`` seconds (default 10):

    train: epoch 3/30, step 12/40 (30%), 2.1 steps/s, epoch ETA 13 s
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from transformers import TrainerCallback

INTERVAL_ENV = "KNOWTUNE_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 10.0


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$KNOWTUNE_PROGRESS_SECONDS``, else 10."""
    from knowtune.errors import ConfigError

    value = os.environ.get(INTERVAL_ENV)
    if value is None:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{INTERVAL_ENV}={value!r} is not a number of seconds", fix=f"set {INTERVAL_ENV} to 0 or more, or unset it")
    return seconds


def progress_line(epoch: int, epochs: int, done: int, total: int, elapsed_s: float) -> str:
    """One plain progress line: where the epoch is, the step rate and the epoch's ETA."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "?"
    return f"train: epoch {epoch}/{epochs}, step {done}/{total} ({100 * done / total:.0f}%), {rate:.1f} steps/s, epoch ETA {eta}"


class TrainProgress(TrainerCallback):
    """Optimizer steps of each epoch as they happen: a bar on ``console`` when it is a terminal, else lines to ``log``."""

    def __init__(self, log: Callable[[str], None] = print, console=None, interval_s: float | None = None):
        self.log = log
        self.console = console
        self.interval_s = progress_interval() if interval_s is None else interval_s
        self.bar = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.epochs = max(1, math.ceil(args.num_train_epochs))
        self.steps_per_epoch = max(1, math.ceil(state.max_steps / self.epochs))
        self.last_line = time.monotonic()
        if self.console is not None and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = math.floor(state.epoch + 1e-9) + 1
        self.epoch_start_step, self.epoch_start = state.global_step, time.monotonic()
        self.total = min(self.steps_per_epoch, state.max_steps - state.global_step)
        if self.bar is not None:
            self.task = self.bar.add_task(f"epoch {self.epoch}/{self.epochs}", total=self.total)

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self.epoch_start_step
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval_s:
            self.last_line = now
            self.log(progress_line(self.epoch, self.epochs, done, self.total, now - self.epoch_start))

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Take the bar off the terminal (also when training stopped with an error)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
