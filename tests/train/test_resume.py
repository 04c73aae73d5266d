"""Training killed while it writes a checkpoint resumes from the newest complete one, to the
weights of an uninterrupted run (the default model, 3 epochs of 2 steps)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from knowtune.data import save_examples
from knowtune.data.splits import Splits, load_splits
from knowtune.testing import SimulatedCrash, crash_in_checkpoint, cut_checkpoint, kill_train_in_checkpoint, run_cli
from knowtune.train.checkpoints import MANIFEST, checkpoint_dirs, incomplete_reason, write_manifest
from knowtune.train.config import TrainConfig
from knowtune.train.sft import train_model

FAST = dict(epochs=3, batch_size=4, learning_rate=1e-3, eval_every_epoch=False, max_eval_examples=4)
FLAGS = ["--epochs", 3, "--batch-size", 4, "--lr", "1e-3", "--no-eval-every-epoch", "--max-eval-examples", 4]
#: A cut position past every file: all of them written, the manifest not yet.
ALL_WRITTEN = 10**6


@pytest.fixture(scope="module")
def splits() -> Splits:
    return Splits(train=load_splits("embedded").train[:8])


def _train(splits, out, **kwargs):
    lines = []
    result = train_model(TrainConfig(**FAST), "default", splits, out_dir=out, log=lines.append, **kwargs)
    return result, lines


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def _assert_same_weights(out, reference):
    weights, expected = _weights(out), _weights(reference.out_dir)
    assert weights.keys() == expected.keys()
    assert all(weights[name].equal(expected[name]) for name in expected)


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    """The uninterrupted run."""
    return _train(splits, tmp_path_factory.mktemp("reference") / "run")[0]


@pytest.fixture(scope="module")
def crashed(splits, tmp_path_factory):
    """A run stopped after epoch 2's checkpoint was written but before its manifest."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(SimulatedCrash):
        _train(splits, out, callbacks=[crash_in_checkpoint(2, ALL_WRITTEN)])
    return out


def _copy(crashed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(crashed, out)
    return out


def test_old_checkpoint_is_deleted_only_once_the_new_one_is_complete(crashed):
    first, second = checkpoint_dirs(crashed / "checkpoints")
    assert (first.name, second.name) == ("checkpoint-2", "checkpoint-4")
    assert incomplete_reason(first) is None and (first / MANIFEST).is_file()
    assert incomplete_reason(second) == "its write did not finish (no manifest)"


def test_kill_at_each_file_of_the_checkpoint_resumes_to_the_same_weights(reference, crashed, splits, tmp_path):
    """Every position of the write this transformers makes (10 files on 5.x, 11 on 4.56), and all
    of them written without the manifest: each resumes from the older checkpoint to the same weights."""
    count = len(cut_checkpoint(_copy(crashed, tmp_path / "probe") / "checkpoints" / "checkpoint-4", ALL_WRITTEN))
    assert count >= 5, count  # model, optimizer, scheduler, trainer state, RNG state at least
    for position in range(count + 1):
        out = _copy(crashed, tmp_path / str(position))
        cut_checkpoint(out / "checkpoints" / "checkpoint-4", position)
        result, lines = _train(splits, out)
        assert any(line.startswith("removed the incomplete checkpoint checkpoint-4:") for line in lines), (position, lines)
        assert f"resuming from {out / 'checkpoints' / 'checkpoint-2'}" in lines, (position, lines)
        assert [r["epoch"] for r in result.metrics] == [0, 3], position
        _assert_same_weights(out, reference)


def test_complete_checkpoint_is_resumed_and_a_damaged_one_is_not(reference, crashed, splits, tmp_path):
    out = _copy(crashed, tmp_path)
    newest = out / "checkpoints" / "checkpoint-4"
    write_manifest(newest)  # killed after the manifest, before the older checkpoint was deleted
    result, lines = _train(splits, out)
    assert f"resuming from {newest}" in lines and not any(line.startswith("removed") for line in lines)
    _assert_same_weights(out, reference)

    out = _copy(crashed, tmp_path / "damaged")
    newest = out / "checkpoints" / "checkpoint-4"
    write_manifest(newest)
    with open(newest / "optimizer.pt", "r+b") as handle:  # cut after it was written (a disk that lost its end)
        handle.truncate(100)
    result, lines = _train(splits, out)
    assert any(line.startswith("removed the incomplete checkpoint checkpoint-4: optimizer.pt has 100 bytes, not") for line in lines), lines
    _assert_same_weights(out, reference)


def test_kill_in_the_first_checkpoint_starts_over(reference, splits, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        _train(splits, out, callbacks=[crash_in_checkpoint(1, 2)])
    assert [path.name for path in checkpoint_dirs(out / "checkpoints")] == ["checkpoint-2"]
    result, lines = _train(splits, out)
    assert any(line.startswith("removed the incomplete checkpoint checkpoint-2:") for line in lines), lines
    assert not any(line.startswith("resuming from") for line in lines)
    _assert_same_weights(out, reference)


def test_kill_9_of_knowtune_train_while_writing_a_checkpoint_then_rerun(reference, splits, capsys, tmp_path):
    data, out = tmp_path / "data.jsonl", tmp_path / "run"
    save_examples(splits.train, data)
    args = ["train", "--model", "default", "--data", data, "--out", out, *FLAGS]
    kill_train_in_checkpoint(args, epoch=2, position=2, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert [path.name for path in checkpoint_dirs(out / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    assert incomplete_reason(out / "checkpoints" / "checkpoint-4") is not None and not (out / "provenance.json").exists()

    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "removed the incomplete checkpoint checkpoint-4: " in err and "checkpoint-2" in err.split("resuming from")[1]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 3]
    _assert_same_weights(out, reference)
