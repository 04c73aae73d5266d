"""`accelerate launch -m knowtune train` with 2 CPU processes (DDP, then FSDP, over gloo) against one process.

Two processes with per-device batch 4 take the same optimizer steps as one process with
batch 8 (the same global batch): the HF Trainer shards each global batch of the same seeded
order over the ranks and DDP averages the gradients. Measured on the default model (2 cores,
transformers 5.24 and 4.56.2, SFT and self-distillation from a cached teacher): every
exact-match metric of every set, every epoch's step, the best epoch and the early stop are
identical; ``train_loss``, ``grad_norm``, ``ce`` and ``kl`` differ by at most 1.3e-6
relative (the gradient all-reduce adds in another order), and the final weights by 0.7%
(SFT) and 1.1% (self-distillation) of the largest change training made to any weight (AdamW
divides small gradient differences by small second moments). The tests allow ``RTOL`` =
1e-4, ``WEIGHT_SHARE`` = 5% and no difference in exact match (docs/train.md, "Multi-GPU").

With FSDP (``accelerate launch --use_fsdp --fsdp_version 2``; knowtune shards the model on CPU
too, where accelerate alone would run DDP) each rank holds half of every weight, the
per-epoch evaluation is sharded over the ranks and gathered, and ``best/`` and ``model/``
are the gathered weights. Measured (transformers 5.24 with accelerate 1.15, 4.56.2 with
accelerate 1.15 and 1.10.1): exact match, steps, best epoch and early stop identical;
``grad_norm`` 1.7e-6 relative; ``model/`` 0.7% of the largest update, ``best/`` likewise;
a resumed run is bit-identical to an uninterrupted one. Same tolerances as DDP.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from knowtune.data import save_examples
from knowtune.data.splits import load_splits
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.io import LOCK_FILE, OutputLock
from knowtune.models import default_model_dir
from knowtune.testing import free_port, launch_knowtune
from knowtune.train import distributed
from knowtune.train.callbacks import EpochEvalCallback, read_metrics
from knowtune.train.config import TrainConfig
from knowtune.train.sft import train_model

RTOL = 1e-4
METRICS = "metrics.jsonl"
WEIGHT_SHARE = 0.05
FLOAT_KEYS = ("train_loss", "grad_norm", "learning_rate", "ce", "kl")
# 16 training examples: 2 steps of global batch 8 per epoch, no ragged last batch
# (a rank would pad it with repeated examples). Early stopping ends the run after epoch 2.
SETTINGS = ["--epochs", "3", "--lr", "1e-3", "--early-stopping-patience", "1", "--save-every-epoch", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    splits = load_splits("embedded")
    path = tmp_path_factory.mktemp("distributed-data") / "data.jsonl"
    save_examples(splits.train[:16] + splits.dev[:16] + splits.test[:16], path)
    return path


DDP = ("--multi_gpu",)
FSDP = ("--use_fsdp", "--fsdp_version", "2")


def fsdp_launch() -> tuple[tuple[str, ...], str]:
    """FSDP2 launch flags and the file or folder each checkpoint then has: sharded checkpoints (the default)
    where this accelerate resumes them (>= 1.13), full ones before (what knowtune asks for there)."""
    if Version(version("accelerate")) >= Version(distributed.SHARDED_RESUME_ACCELERATE):
        return FSDP, "pytorch_model_fsdp_0"
    return (*FSDP, "--fsdp_state_dict_type", "FULL_STATE_DICT"), "pytorch_model_fsdp.bin"


def launch_two(*args, launcher: tuple[str, ...] = DDP, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``knowtune *args`` on 2 CPU processes (gloo), DDP or ``launcher``'s setting."""
    return launch_knowtune(args, launcher=launcher, timeout_s=timeout_s)


def assert_same_metrics(one: list[dict], two: list[dict]) -> None:
    assert [(r["epoch"], r["step"]) for r in two] == [(r["epoch"], r["step"]) for r in one]
    for a, b in zip(one, two):
        assert set(a) == set(b)
        for key in a:
            if key == "eval_seconds":
                continue
            if key in FLOAT_KEYS and a[key] is not None:
                assert math.isclose(a[key], b[key], rel_tol=RTOL), (a["epoch"], key, a[key], b[key])
            else:
                assert a[key] == b[key], (a["epoch"], key, a[key], b[key])


def assert_same_weights(one, two, saved: str = "model") -> None:
    """The two ``saved`` models (final or best) differ by at most ``WEIGHT_SHARE`` of the largest change training made."""
    base = load_file(default_model_dir() / "model.safetensors")
    a, b = load_file(one / saved / "model.safetensors"), load_file(two / saved / "model.safetensors")
    assert a.keys() == b.keys()
    update = max((a[name] - base[name]).abs().max().item() for name in a if name in base)
    gap = max((a[name] - b[name]).abs().max().item() for name in a)
    assert update > 0 and gap <= WEIGHT_SHARE * update, (gap, update)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One process, batch 8."""
    config = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=8, early_stopping_patience=1, save_every_epoch=True, device="cpu", seed=3,
                         save_best=True)
    out = tmp_path_factory.mktemp("one-process")
    result = train_model(config, default_model_dir(), load_splits(data), None, out, log=lambda _: None)
    assert result.stopped_early and result.epochs_run == 2  # the setting the test relies on
    return out


def test_two_cpu_processes_match_one_process(data, reference, tmp_path):
    out = tmp_path / "two"
    done = launch_two("train", "--data", data, "--out", out, "--batch-size", 4, *SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out / "model")  # the result printed once, by the main process
    assert done.stderr.count("epoch 2  loss") == 1  # every epoch's evaluation and log line, once
    metrics = read_metrics(out / METRICS)
    assert_same_metrics(read_metrics(reference / METRICS), metrics)
    assert_same_weights(reference, out)
    ref_result = json.loads((reference / "provenance.json").read_text())["result"]
    assert json.loads((out / "provenance.json").read_text())["result"] == ref_result  # stopped together, at epoch 2

    # Every rank's RNG state is checkpointed; the resume after a kill is run by the FSDP test below (suite time).
    last = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in last.iterdir()}


def test_fsdp_on_two_cpu_processes_matches_one_process_then_resumes(data, reference, tmp_path):
    out = tmp_path / "fsdp"
    launcher, fsdp_checkpoint = fsdp_launch()
    done = launch_two("train", "--data", data, "--out", out, "--batch-size", 4, "--save-best", *SETTINGS, launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert all((c / fsdp_checkpoint).exists() for c in checkpoints)  # accelerate's FSDP checkpoint: the model was sharded, not run as DDP
    assert done.stdout.strip().splitlines()[-1] == str(out / "model")
    assert done.stderr.count("epoch 2  loss") == 1  # evaluated by both ranks, scored and logged once
    metrics = read_metrics(out / METRICS)
    assert_same_metrics(read_metrics(reference / METRICS), metrics)
    for saved in ("model", "best"):  # the gathered weights, tied ones once, as one process saves them
        assert_same_weights(reference, out, saved)
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.architectures == ["LlamaForCausalLM"]
    ref_result = json.loads((reference / "provenance.json").read_text())["result"]
    assert json.loads((out / "provenance.json").read_text())["result"] == ref_result

    shutil.rmtree(checkpoints[-1])  # killed before epoch 2's checkpoint: resume from epoch 1's
    shutil.rmtree(out / "model")
    (out / "provenance.json").unlink()
    best = load_file(out / "best" / "model.safetensors")
    resumed = launch_two("train", "--data", data, "--out", out, "--batch-size", 4, "--save-best", *SETTINGS, launcher=launcher)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "epoch 1  loss" not in resumed.stderr
    assert_same_metrics(metrics, read_metrics(out / METRICS))
    assert_same_weights(reference, out)
    assert all(torch.equal(best[name], tensor) for name, tensor in load_file(out / "best" / "model.safetensors").items())


def test_cached_teacher_is_computed_once_and_ce_kl_are_summed_over_ranks(data, tmp_path):
    distill = ["--method", "selfdistill", "--selfdistill-teacher", "base", "--selfdistill-cache-teacher", "--selfdistill-top-k", 8]
    config = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=8, early_stopping_patience=1, save_every_epoch=True, device="cpu", seed=3,
                         method="selfdistill", selfdistill={"teacher": "base", "cache_teacher": True, "top_k": 8})
    train_model(config, default_model_dir(), load_splits(data), None, tmp_path / "one", log=lambda _: None)
    out = tmp_path / "two"
    done = launch_two("train", "--data", data, "--out", out, "--batch-size", 4, *SETTINGS, *distill)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("teacher cache: top-8 log-probs of 16 rows") == 1  # computed and logged by the main process
    metrics = read_metrics(out / METRICS)
    assert all(r["kl"] > 0 for r in metrics[1:])
    assert_same_metrics(read_metrics(tmp_path / "one" / METRICS), metrics)  # ce and kl of both ranks' tokens
    assert_same_weights(tmp_path / "one", out)


def test_only_the_main_process_evaluates_and_all_follow_its_stop(monkeypatch, tmp_path):
    evaluator = EpochEvalCallback(None, metrics_path=tmp_path / METRICS)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    callbacks = distributed.rank_callbacks(evaluator, [])
    assert evaluator not in callbacks and isinstance(callbacks[-1], distributed.SyncStop)
    monkeypatch.setenv("RANK", "0")
    callbacks = distributed.rank_callbacks(evaluator, [])
    assert callbacks.index(evaluator) < callbacks.index(next(c for c in callbacks if isinstance(c, distributed.SyncStop)))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP: every rank generates its share of the questions
    assert distributed.rank_callbacks(evaluator, [])[0] is evaluator
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.rank_callbacks(evaluator, []) == [evaluator]  # one process: nothing added


def test_sharded_settings_knowtune_cannot_run_are_refused(monkeypatch, tmp_path):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                 "FSDP_VERSION", "FSDP_STATE_DICT_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    plain, lora = TrainConfig(), TrainConfig(lora={"r": 4})
    distributed.check_sharding(lora, cpu=False)  # DDP
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.shards_parameters()
    with pytest.raises(ConfigError, match="FSDP version 1") as error:  # accelerate's default
        distributed.check_sharding(plain, cpu=False)
    assert "--fsdp_version 2" in error.value.fix
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
    distributed.check_sharding(plain, cpu=False)
    with pytest.raises(ConfigError, match=r"lora with FSDP") as error:
        distributed.check_sharding(lora, cpu=True)
    assert "distributed_type: MULTI_GPU" in error.value.fix
    format_stage = TrainConfig(method="selfdistill", selfdistill={"teacher": "format_stage"})
    with pytest.raises(ConfigError, match="selfdistill.teacher format_stage with FSDP"):
        distributed.check_sharding(format_stage, cpu=True)
    monkeypatch.delenv("FSDP_STATE_DICT_TYPE")  # sharded checkpoints (FSDP2's default), with an accelerate that resumes them wrongly
    monkeypatch.setattr(distributed, "SHARDED_RESUME_ACCELERATE", "999")
    with pytest.raises(ConfigError, match="SHARDED_STATE_DICT without their optimizer state") as error:
        distributed.check_sharding(plain, cpu=True)
    assert "fsdp_state_dict_type: FULL_STATE_DICT" in error.value.fix
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
    distributed.check_sharding(plain, cpu=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    distributed.check_sharding(lora, cpu=False)  # ZeRO-2 shards optimizer state and gradients only
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError, match="ZeRO-3") as error:
        distributed.check_sharding(plain, cpu=False)
    assert "fsdp_version: 2" in error.value.fix
    distributed.check_sharding(plain, cpu=True)  # accelerate runs DeepSpeed configs as DDP on CPU
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_sharding(plain, cpu=False)  # one process: nothing is sharded


def test_shards_cover_every_item_once_in_order(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(distributed.shard(list("abcdefg")))
    assert shares == [list("adg"), list("bea"), list("cfa")]  # as long on every rank: padded with the first item
    assert [shares[i % 3][i // 3] for i in range(7)] == list("abcdefg")  # the order gather_shards restores


def _take_lock_on_rank(rank: int, port: int, directory: str, results) -> None:
    """A forked rank of a 2-process gloo group: ``output_lock`` on ``directory``; puts (rank, outcome)."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        with distributed.output_lock(directory, f"rank {rank}", device="cpu"):
            results.put((rank, (Path(directory) / LOCK_FILE).read_text().split(" (")[0]))
            distributed.barrier()
    except KnowtuneError as error:
        results.put((rank, f"error: {error}"))
    finally:
        torch.distributed.destroy_process_group()


def _lock_on_two_ranks(directory) -> dict[int, str]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_take_lock_on_rank, args=(rank, port, str(directory), results)) for rank in range(2)]
    for process in ranks:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    return outcomes


def test_the_main_process_holds_the_output_lock_for_every_rank(tmp_path):
    assert _lock_on_two_ranks(tmp_path / "out") == {0: "rank 0", 1: "rank 0"}  # rank 1 runs under rank 0's lock
    with OutputLock(tmp_path / "out", "another run"):
        outcomes = _lock_on_two_ranks(tmp_path / "out")
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith("error: ") and "in use by another run" in outcomes[0]
