"""`knowtune train` and `knowtune evaluate`, run in-process through knowtune.cli.main."""

from __future__ import annotations

import json

import pytest

from knowtune.testing import run_cli, table_row
from knowtune.cli.train import load_training_data
from knowtune.data import save_examples
from knowtune.train.config import TrainConfig
from knowtune.testing import tiny_world

CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


run = run_cli
row = table_row


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset file (12 train examples of 2 relations; dev; test of 3 relations, one never
    trained on = OOD) and an annotate-style output dir."""
    world = tiny_world(relations=3)
    ood_relation = sorted({ex.relation for ex in world.examples})[-1]
    in_distribution = sorted({ex.relation for ex in world.examples} - {ood_relation})
    train = [ex for relation in in_distribution for ex in [e for e in world.split("train") if e.relation == relation][:6]]
    examples = train + world.split("dev") + world.split("test")
    root = tmp_path_factory.mktemp("cli-data")
    save_examples(examples, root / "data.jsonl")
    (root / "annotate").mkdir()
    records = [{"id": ex.id, "category": CATEGORIES[i % 4]} for i, ex in enumerate(examples)]
    (root / "annotate" / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, ood_relation


def test_train_then_evaluate_end_to_end(capsys, tiny_pretrained, dataset, tmp_path):
    root, ood_relation = dataset
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--model", tiny_pretrained, "--data", root / "data.jsonl", "--annotations", root / "annotate",
                            "--out", out, "--epochs", 2, "--lr", "5e-3", "--batch-size", 4, "--seed", 1, "--max-eval-examples", 8,
                            "--drift-layer", 1)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(out / "model")
    assert row(stdout, "2 (last)") and "OOD EM" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["ood/n"] == 6 and records[-1]["test/n"] == 8 and records[-1]["train/n"] == 8
    assert records[0]["drift/cosine"] == 0.0 and records[-1]["drift/cosine"] > 0 and "drift/cosine/Known" in records[-1]
    assert f"drift {records[-1]['drift/cosine']:.3f}" in err  # the progress line of the last epoch
    saved = (out / "config.yaml").read_text()
    assert "epochs: 2" in saved and "seed: 1" in saved and "learning_rate: 0.005" in saved
    assert TrainConfig.model_validate(__import__("yaml").safe_load(saved)).drift.layer == 1
    assert (out / "model" / "config.json").is_file() and (out / "provenance.json").is_file()

    evaluation = tmp_path / "eval"
    code, stdout, err = run(capsys, "evaluate", "--model", out / "model", "--data", root / "data.jsonl", "--annotations", root / "annotate",
                            "--out", evaluation, "--max-new-tokens", 16)
    assert code == 0, err
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 18 and set(metrics["per_category"]) == {*CATEGORIES, "Known"}
    assert ood_relation in metrics["per_relation"]
    assert metrics["provenance"]["model_fingerprint"] and metrics["provenance"]["config"]["split"] == "test"
    assert len((evaluation / "predictions.jsonl").read_text().splitlines()) == 18
    assert row(stdout, "all")[0] == "18" and row(stdout, "Unknown")

    code, stdout, err = run(capsys, "evaluate", "--model", tiny_pretrained, "--data", root / "data.jsonl", "--format", "fewshot",
                            "--shots", 2, "--limit", 4, "--max-new-tokens", 4)
    assert code == 0, err
    assert "fewshot prompt (4 examples)" in stdout and row(stdout, "all")[0] == "4"


def test_unknown_config_key_exits_2_naming_it(capsys, tiny_pretrained, dataset, tmp_path):
    root, _ = dataset
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 2\nlearning_rat: 0.1\n")
    code, stdout, err = run(capsys, "train", "--model", tiny_pretrained, "--data", root / "data.jsonl", "--config", config, "--out", tmp_path / "out")
    assert code == 2 and stdout == ""
    assert "learning_rat: unknown key" in err and str(config) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_annotations_exit_2_with_file_and_line(capsys, tiny_pretrained, dataset, tmp_path):
    root, _ = dataset
    (tmp_path / "annotations.jsonl").write_text('{"id": "x", "category": "Unknown"}\n{"id": "y"}\n')
    code, _, err = run(capsys, "train", "--data", root / "data.jsonl", "--annotations", tmp_path, "--out", tmp_path / "out", "--model", tiny_pretrained)
    assert code == 2 and f"{tmp_path / 'annotations.jsonl'}:2" in err.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_evaluate_rejects_an_empty_split(capsys, tiny_pretrained, tmp_path):
    save_examples(tiny_world().split("train")[:3], tmp_path / "train.jsonl")
    code, _, err = run(capsys, "evaluate", "--model", tiny_pretrained, "--data", tmp_path / "train.jsonl", "--out", tmp_path / "eval")
    assert code == 2 and "no examples of the test split" in err
    assert not (tmp_path / "eval").exists()


def test_drift_flags_merge_with_the_config_block(capsys, tiny_pretrained, dataset, tmp_path):
    root, _ = dataset
    config = tmp_path / "train.yaml"
    config.write_text("drift:\n  layer: 1\n  categories: [Famous]\n")
    code, stdout, err = run(capsys, "train", "--model", tiny_pretrained, "--data", root / "data.jsonl", "--config", config, "--out", tmp_path / "out")
    assert code == 2 and "drift.categories" in err and "unknown groups" in err and "Traceback" not in err
    code, stdout, err = run(capsys, "train", "--model", tiny_pretrained, "--data", root / "data.jsonl", "--drift-layer", 40, "--out", tmp_path / "out")
    assert code == 2 and "drift layer 40 is out of range" in err and "--drift-layer" in err
    assert not (tmp_path / "out").exists()


def test_separate_dev_test_and_ood_files(dataset, tmp_path):
    root, ood_relation = dataset
    splits = load_training_data(str(root / "data.jsonl"))
    assert {ex.relation for ex in splits["ood"]} == {ood_relation} and ood_relation not in {ex.relation for ex in splits["test"]}
    save_examples(splits["ood"][:2], tmp_path / "ood.jsonl")
    explicit = load_training_data(str(root / "data.jsonl"), dev=str(root / "data.jsonl"), ood=str(tmp_path / "ood.jsonl"))
    assert explicit["ood"] == splits["ood"][:2] and len(explicit["test"]) == len(splits["test"]) + len(splits["ood"])
    assert explicit["dev"] == splits["dev"]
