"""Progress within each training epoch: plain lines through the CLI when stderr is not a terminal,
a rich bar with ETA on a terminal (the default model, 2 epochs of 3 steps)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from knowtune.data import save_examples
from knowtune.data.splits import Splits, load_splits
from knowtune.testing import run_cli
from knowtune.train.config import TrainConfig
from knowtune.train.progress import INTERVAL_ENV, progress_line
from knowtune.train.sft import train_model

FLAGS = ["--epochs", 2, "--batch-size", 3, "--lr", "1e-3", "--no-eval-every-epoch", "--max-eval-examples", 4]
LINE = re.compile(r"^train: epoch (\d+)/2, step (\d+)/3 \(\d+%\), [\d.]+ steps/s, epoch ETA (\d+ s|\?)$")


@pytest.fixture(scope="module")
def examples():
    return load_splits("embedded").train[:8]  # 3 steps of batch 3 per epoch


def test_progress_line_gives_the_step_rate_and_the_epoch_eta():
    assert progress_line(3, 30, 12, 40, 6.0) == "train: epoch 3/30, step 12/40 (30%), 2.0 steps/s, epoch ETA 14 s"
    assert progress_line(1, 2, 0, 3, 0.0) == "train: epoch 1/2, step 0/3 (0%), 0.0 steps/s, epoch ETA ?"


def test_cli_prints_plain_progress_lines_when_not_a_terminal(examples, capsys, monkeypatch, tmp_path):
    save_examples(examples, tmp_path / "data.jsonl")
    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line after every step
    code, stdout, err = run_cli(capsys, "train", "--model", "default", "--data", tmp_path / "data.jsonl", "--out", tmp_path / "run", *FLAGS)
    assert code == 0, err
    steps = [(int(m[1]), int(m[2])) for line in err.splitlines() if (m := LINE.match(line))]
    assert steps == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)], err
    assert "\x1b[" not in err and "━" not in err  # no bar, no cursor movement in a log


def test_bad_progress_interval_exits_2_naming_the_variable(examples, capsys, monkeypatch, tmp_path):
    save_examples(examples, tmp_path / "data.jsonl")
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    code, _, err = run_cli(capsys, "train", "--model", "default", "--data", tmp_path / "data.jsonl", "--out", tmp_path / "run", *FLAGS)
    assert code == 2 and f"{INTERVAL_ENV}='soon'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_terminal_gets_a_bar_per_epoch_and_no_plain_lines(examples, monkeypatch, tmp_path):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    lines = []
    config = TrainConfig(epochs=2, batch_size=3, learning_rate=1e-3, eval_every_epoch=False, max_eval_examples=4)
    train_model(config, "default", Splits(train=examples), out_dir=tmp_path / "run", log=lines.append, console=console)
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without colours and cursor moves
    assert "epoch 1/2" in drawn and "epoch 2/2" in drawn and "0/3 steps" in drawn and "ETA" in drawn
    assert not any(line.startswith("train: epoch") for line in lines)
