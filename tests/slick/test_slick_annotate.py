"""End to end: lazy = exact on categories, resume = one run, shards + merge = one run, outputs."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from knowtune.cli import main
from knowtune.slick.annotate import run_annotate
from knowtune.slick.protocol import AnnotateConfig
from knowtune.testing import kill_annotate_after_rows


def _config(tiny_model, tiny_world, out, **overrides) -> AnnotateConfig:
    values = dict(model=str(tiny_model), data=str(tiny_world[0]), out=str(out), device="cpu", chunk_size=8, batch_size=256)
    values.update(overrides)
    return AnnotateConfig(**values)


def cli(*args) -> int:
    """Run ``knowtune ARGS`` in process; the exit status (0 when it returns normally)."""
    try:
        main([*map(str, args)])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "annotations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lazy_run(tiny_model, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lazy")
    run_annotate(_config(tiny_model, tiny_world, out))
    return out


@pytest.fixture(scope="module")
def exact_run(tiny_model, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exact")
    run_annotate(_config(tiny_model, tiny_world, out, mode="exact"))
    return out


def test_lazy_and_exact_agree_on_categories(lazy_run, exact_run, tiny_world):
    lazy, exact = _records(lazy_run), _records(exact_run)
    assert len(lazy) == len(exact) == len(tiny_world[1])
    assert len({r["category"] for r in exact}) >= 3  # a real mix, so agreement means something
    for a, b in zip(lazy, exact):
        assert (a["id"], a["category"], a["p0"], a["greedy_answers"]) == (b["id"], b["category"], b["p0"], b["greedy_answers"])
        assert b["ps_computed"] and b["generations"] == 170 and b["ps"] == b["sample_correct"] / 160
        if a["p0"] > 0:
            assert (a["ps"], a["ps_computed"], a["generations"]) == (None, False, 10)
        if a["category"] == "Unknown":
            assert a["ps"] == 0.0 and a["generations"] == 170
    assert sum(r["generations"] for r in lazy) < sum(r["generations"] for r in exact) / 2


def test_resume_after_interruption_equals_one_run(lazy_run, tiny_model, tiny_world, tmp_path):
    batches = []

    def stop_after_three(state):
        batches.append(state["done"])
        if len(batches) == 3:
            raise KeyboardInterrupt

    config = _config(tiny_model, tiny_world, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_annotate(config, on_batch=stop_after_three)
    summary = run_annotate(config)
    assert summary["provenance"]["run"]["examples_this_run"] == len(tiny_world[1]) - batches[-1]
    assert _records(tmp_path) == _records(lazy_run)
    assert run_annotate(config)["provenance"]["run"]["examples_this_run"] == 0  # a finished run has nothing left


def test_kill_9_mid_run_then_resume_equals_one_run(exact_run, tiny_model, tiny_world, tmp_path):
    out = tmp_path / "killed"
    args = ["annotate", "--model", str(tiny_model), "--data", str(tiny_world[0]), "--out", str(out), "--device", "cpu",
            "--mode", "exact", "--chunk-size", "1", "--batch-size", "256"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    database = out / "annotations.sqlite"
    kill_annotate_after_rows(args, database, 5, env=env)
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert 5 <= db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] < len(tiny_world[1])
    run_annotate(_config(tiny_model, tiny_world, out, mode="exact", chunk_size=1))
    assert _records(out) == _records(exact_run)


def test_shards_and_merge_equal_one_run(lazy_run, tiny_model, tiny_world, tmp_path):
    shard_dirs = []
    for i in range(3):
        shard_dirs.append(tmp_path / f"shard{i}")
        run_annotate(_config(tiny_model, tiny_world, shard_dirs[-1], shard=f"{i}/3"))
    sizes = [len(_records(d)) for d in shard_dirs]
    assert sum(sizes) == len(tiny_world[1]) and min(sizes) > 0
    assert cli("annotate", "merge", shard_dirs[0], shard_dirs[1], "--out", tmp_path / "partial") == 2
    assert cli("annotate", "merge", *shard_dirs, "--out", tmp_path / "merged") == 0
    assert _records(tmp_path / "merged") == _records(lazy_run)
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    single = json.loads((lazy_run / "summary.json").read_text())
    assert (merged["overall"], merged["per_relation"]) == (single["overall"], single["per_relation"])


def test_outputs_load_with_datasets_and_record_the_protocol(lazy_run, tiny_world):
    import datasets

    records = _records(lazy_run)
    parquet = datasets.load_dataset("parquet", data_files=str(lazy_run / "annotations.parquet"), split="train")
    jsonl = datasets.load_dataset("json", data_files=str(lazy_run / "annotations.jsonl"), split="train")
    assert parquet["category"] == jsonl["category"] == [r["category"] for r in records]
    assert parquet["greedy_answers"][0] == records[0]["greedy_answers"] and len(records[0]["greedy_answers"]) == 10
    summary = json.loads((lazy_run / "summary.json").read_text())
    assert sum(summary["overall"]["counts"].values()) == len(records) and summary["complete"]
    assert set(summary["per_relation"]) == {"born_in", "works_as", "founded"}
    assert abs(sum(summary["per_relation"]["born_in"]["shares"].values()) - 1) < 1e-9
    header = json.loads((lazy_run / "protocol.json").read_text())
    protocol = header["protocol"]
    assert protocol["template"]["query"] == "Q: {question}\nA:" and protocol["knowtune_version"]
    assert protocol["decoding"]["temperature"] == 0.5 and protocol["decoding"]["top_k"] == 40 and protocol["match"]["lowercase"]
    sets = protocol["exemplar_sets"]["born_in"]
    assert len(sets) == 10 and all(len(s["ids"]) == 4 and s["spare"] not in s["ids"] for s in sets)
    assert all(i.startswith("born_in-") and int(i.split("-")[1]) < 8 for s in sets for i in s["ids"])  # dev examples only
    assert header["model_fingerprint"] and (lazy_run / "config.yaml").exists()


def test_config_file_with_flag_overrides(tiny_model, tiny_world, tmp_path, capsys):
    (tmp_path / "annotate.yaml").write_text(f"model: {tiny_model}\ndata: {tiny_world[0]}\nmode: exact\nn_ex: 3\nsplits: [test]\n")
    assert cli("annotate", "--config", tmp_path / "annotate.yaml", "--n-ex", 2, "--out", tmp_path / "o", "--device", "cpu") == 0
    protocol = json.loads((tmp_path / "o" / "protocol.json").read_text())["protocol"]
    assert (protocol["mode"], protocol["n_ex"]) == ("exact", 2)
    records = _records(tmp_path / "o")
    assert records and all(r["split"] == "test" and r["generations"] == 34 for r in records)
    output = capsys.readouterr()
    assert "HighlyKnown" in output.out and "examples" in output.err  # summary table and progress lines


def test_models_without_the_attention_registry_give_the_same_results(lazy_run, tiny_model, tiny_world, tmp_path, monkeypatch):
    """The per-row-copy path (used for models outside transformers' attention registry)."""
    import knowtune.slick.generation as generation

    monkeypatch.setattr(generation, "supports_shared_prefix", lambda model: False)
    run_annotate(_config(tiny_model, tiny_world, tmp_path))
    assert _records(tmp_path) == _records(lazy_run)
