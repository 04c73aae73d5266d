"""`accelerate launch -m knowtune study` with 2 CPU processes (gloo) against the same study in one process.

Two processes with per-device batch 2 take the same optimizer steps as one process with
batch 4 (the same global batch; every variant has 8 examples, so no rank pads a ragged last
batch). Measured on the tiny knowing model (2 cores, transformers 5.24): the audit's categories
(sharded over the ranks) are identical, and so is every exact-match metric of every epoch of
both variants; ``train_loss`` and ``grad_norm`` differ by at most 1.6e-7 relative (the gradient
all-reduce adds in another order; 8e-7 on 4.56.2 over 5 epochs, by hand). The test allows the ``RTOL`` of
tests/train/test_distributed.py (1e-4) and no difference in anything else.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from knowtune.config import load_config
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.study.config import StudyConfig
from knowtune.study.pipeline import run_study
from knowtune.testing import free_port, launch_knowtune, run_cli
from study_metrics import mini_key_overlap

RTOL = 1e-4
FLOAT_KEYS = ("train_loss", "grad_norm", "learning_rate", "ce", "kl")
VARIANTS = ["D_0", "D_100"]


def study_yaml(path: Path, model: Path, world: Path, batch_size: int, **sections) -> Path:
    settings = {
        "model": str(model), "data": str(world), "seed": 0, "device": "cpu", "train_variants": VARIANTS,
        "annotate": {"n_ex": 2, "k": 2, "n_samples": 4, "splits": ["train", "test"]},
        "curate": {"unknown_ratios": [0, 100], "size": 8, "size_split": "equal", "variants": ["ratio"]},
        "train": {"epochs": 2, "learning_rate": 1e-3, "batch_size": batch_size, "max_new_tokens": 8}, **sections,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def launch_two(*args, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu`` of ``knowtune *args`` on 2 CPU processes."""
    return launch_knowtune(args, timeout_s=timeout_s)


def categories(study_dir: Path) -> list[tuple[str, str]]:
    records = map(json.loads, (study_dir / "audit" / "annotations.jsonl").read_text().splitlines())
    return [(r["id"], r["category"]) for r in records]


def metrics(study_dir: Path, variant: str) -> list[dict]:
    return [json.loads(line) for line in (study_dir / "runs" / variant / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(one: list[dict], two: list[dict]) -> None:
    assert [(r["epoch"], r["step"]) for r in two] == [(r["epoch"], r["step"]) for r in one]
    for a, b in zip(one, two):
        assert set(a) == set(b)
        for key in set(a) - {"eval_seconds"}:
            if key in FLOAT_KEYS and a[key] is not None:
                assert math.isclose(a[key], b[key], rel_tol=RTOL), (a["epoch"], key, a[key], b[key])
            else:
                assert a[key] == b[key], (a["epoch"], key, a[key], b[key])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, knowing_model, study_world):
    """The study in one process, batch 4."""
    root = tmp_path_factory.mktemp("one-process")
    config = study_yaml(root / "study.yaml", knowing_model, study_world, batch_size=4)
    run_study(load_config(StudyConfig, config, {"out": str(root / "study")}), log=lambda _: None)
    return root / "study"


def test_two_processes_match_one_process(reference, knowing_model, study_world, tmp_path):
    config = study_yaml(tmp_path / "study.yaml", knowing_model, study_world, batch_size=2)
    out = tmp_path / "study"
    done = launch_two("study", "--config", config, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)  # printed once, by the main process
    assert done.stdout.count("stages: annotate ran, curate ran, train ran, analyse ran") == 1
    assert done.stderr.count("[analyse] done") == 1 and done.stderr.count("D_0: epoch 2  loss") == 1
    assert (out / "audit-shards" / "1-of-2" / "summary.json").is_file()  # one audit shard per rank
    assert categories(out) == categories(reference)
    for variant in VARIANTS:
        assert_same_metrics(metrics(reference, variant), metrics(out, variant))
    state = json.loads((out / "study.json").read_text())
    assert state["trained"] == VARIANTS and all(state["stages"][s]["status"] == "done" for s in ("annotate", "curate", "train", "analyse"))


@pytest.mark.parametrize(("sections", "flags", "named"), [({}, ["--workers", "2"], "workers: 2"),
                                                          ({"key_overlap": mini_key_overlap([10])}, [], "key_overlap: section")])
def test_what_cannot_share_the_processes_is_refused_under_a_launcher(capsys, monkeypatch, knowing_model, study_world, tmp_path,
                                                                     sections, flags, named):
    config = study_yaml(tmp_path / "study.yaml", knowing_model, study_world, batch_size=2, **sections)
    monkeypatch.setenv("WORLD_SIZE", "2")  # before any process group is joined
    code, _, err = run_cli(capsys, "study", "--config", config, "--out", tmp_path / "study", *flags)
    assert code == 2 and named in err and "launcher" in err and not (tmp_path / "study").exists()


def _stages_on_rank(rank: int, port: int, out: str, results) -> None:
    """A forked rank of a 2-process gloo group running three stages of a :class:`LaunchedStudy`; puts (rank, outcome)."""
    from knowtune.study.config import StudyConfig
    from knowtune.study.launch import LaunchedStudy
    from knowtune.study.state import StageRecord

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        study = LaunchedStudy(StudyConfig(out=out), log=lambda _: None)
        study.model_fingerprint = study.data_fingerprint = "test"
        study.state.stages["curate"] = StageRecord(key="k", status="done")
        ran: list[str] = []
        # rank 1 does not see curate's outputs (done=False), rank 0 does: the main process decides.
        curate = study._stage("curate", "k", rank == 0, lambda: ran.append("curate"))
        analyse = study._stage("analyse", "k", False, lambda: ran.append("analyse") or {"by": rank})
        try:
            study._stage("shift", "k", False, lambda: (_ for _ in ()).throw(ConfigError("shift failed", fix="fix it")))
            failure = None
        except KnowtuneError as error:
            failure = (type(error).__name__, str(error), error.fix)
        results.put((rank, (curate, analyse, ran, study.state.stages["analyse"].by, failure)))
    finally:
        torch.distributed.destroy_process_group()


def test_the_main_process_decides_skips_runs_other_stages_and_its_errors_stop_every_rank(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_stages_on_rank, args=(rank, port, str(tmp_path / "study"), results)) for rank in range(2)]
    for process in ranks:
        process.start()
    try:
        outcomes = dict(results.get(timeout=60) for _ in ranks)
    finally:
        for process in ranks:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert outcomes[0] == ("skipped", "ran", ["analyse"], 0, ("ConfigError", "shift failed", "fix it"))
    assert outcomes[1] == ("skipped", "ran", [], 0, ("KnowtuneError", "shift failed", "fix it"))  # waited, got rank 0's result and error
    state = json.loads((tmp_path / "study" / "study.json").read_text())  # written by the main process
    assert state["stages"]["analyse"]["by"] == 0 and state["stages"]["shift"]["status"] == "running"
