"""A miniature study end to end through the CLI (`knowtune study`, `knowtune report`) on a tiny
knowtune-pretrained model and a tiny world: 4 variants, 3 epochs; then reruns that skip done work."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from knowtune.cli import main
from knowtune.config import load_config
from knowtune.study.config import StudyConfig, demo_config_path
from knowtune.study.findings import NAMES
from knowtune.train.config import TrainConfig
from study_metrics import mini_key_overlap

VARIANTS = ["D_0", "D_50", "D_100", "D_IDK_50"]


def run(*args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `knowtune *args`, run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*map(str, args)])
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), " ".join(err.getvalue().split())


def study_yaml(directory: Path, model: Path, world: Path, **changes) -> Path:
    settings = {
        "model": str(model), "data": str(world), "seed": 0, "device": "cpu", "train_variants": VARIANTS,
        "annotate": {"n_ex": 2, "k": 2, "n_samples": 4, "splits": ["train", "test"]},
        "curate": {"unknown_ratios": [0, 50, 100], "size": 8, "size_split": "equal", "variants": ["ratio", "idk"]},
        "train": {"epochs": 3, "learning_rate": 1e-3, "batch_size": 4, "max_new_tokens": 8},
    }
    for key, value in changes.items():  # "train__epochs" sets train.epochs
        section, _, name = key.partition("__")
        if name:
            settings[section][name] = value
        else:
            settings[section] = value
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def categories(study_dir: Path) -> list[tuple[str, str]]:
    """(id, SliCK category) of every audited example of a study, in file order."""
    records = map(json.loads, (study_dir / "audit" / "annotations.jsonl").read_text().splitlines())
    return [(r["id"], r["category"]) for r in records]


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("metrics.jsonl")}


@pytest.fixture(scope="module")
def study(tmp_path_factory, knowing_model, study_world):
    """The miniature study, run once: (study dir, config path, stdout of the first run)."""
    root = tmp_path_factory.mktemp("study")
    config = study_yaml(root, knowing_model, study_world)
    code, out, err = run("study", "--config", config, "--out", root / "study")
    assert code == 0, err
    return root / "study", config, out


def test_study_runs_every_stage_and_records_provenance(study):
    out_dir, _, stdout = study
    assert stdout.strip().splitlines()[-1] == str(out_dir)
    assert "stages: annotate ran, curate ran, train ran, analyse ran" in stdout
    state = json.loads((out_dir / "study.json").read_text())
    assert [state["stages"][s]["status"] for s in ("annotate", "curate", "train", "analyse")] == ["done"] * 4
    assert state["trained"] == VARIANTS
    assert {"HighlyKnown", "Unknown"} <= {category for _, category in categories(out_dir)}
    for key in ("config", "model_fingerprint", "seed", "knowtune_version"):
        assert state["provenance"][key] is not None
    for name in VARIANTS:
        metrics = [json.loads(line) for line in (out_dir / state["runs"][name]["dir"] / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    analysis = json.loads((out_dir / "analysis.json").read_text())
    assert analysis["provenance"]["model_fingerprint"] == state["provenance"]["model_fingerprint"]
    assert set(analysis["variants"]) == set(VARIANTS)
    assert len(analysis["regression_points"]) == 3 * 3  # D_0, D_50, D_100 at epochs 1-3; D_IDK_50 is left out
    assert [row["variant"] for row in analysis["idk_table"]] == ["D_50", "D_IDK_50"]


def test_report_writes_a_self_contained_page_pngs_and_findings(study):
    out_dir, _, _ = study
    code, stdout, err = run("report", out_dir)
    assert code == 0, err
    page = Path(stdout.strip().splitlines()[-1])
    assert page == out_dir / "report" / "index.html"
    results = json.loads((page.parent / "results.json").read_text())
    assert [f["name"] for f in results["findings"]] == list(NAMES)
    for finding in results["findings"]:
        assert set(finding) == {"name", "holds", "value", "detail"}
        assert finding["holds"] in (True, False, None) and isinstance(finding["detail"], str)
        assert finding["value"] is None or isinstance(finding["value"], float)
        assert finding["name"] in stdout
    assert results["linear_model"]["in_distribution"]["paper"] == {"b0": 36.9, "b_kn": 7.3, "b_unk": -8.3, "r2": 0.86}
    assert results["categories_by_exposure"]["rows"]  # the tiny model was pretrained by knowtune: exposures are known
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert pngs == sorted(results["figures"]) and len(pngs) == 6
    html = page.read_text()
    assert html.count("src='data:image/png;base64,") == 6
    assert not re.search(r"(src|href)=['\"]?(http|//|[\w./-]+\.png)", html)  # nothing loaded from outside the page
    assert "(36.9)" in html and "(61.8)" in html  # paper numbers beside ours: Table 1 b0, IDK accuracy
    for finding in results["findings"]:
        if finding["holds"] is False:
            assert "Does not hold in this study" in html and finding["name"] in html


def test_rerun_skips_every_done_stage(study):
    out_dir, config, _ = study
    before = mtimes(out_dir)
    code, stdout, err = run("study", "--config", config, "--out", out_dir)
    assert code == 0, err
    assert "stages: annotate skipped, curate skipped, train skipped, analyse skipped" in stdout
    assert mtimes(out_dir) == before


def test_a_lost_run_is_retrained_alone(study):
    out_dir, config, _ = study
    before = mtimes(out_dir)
    shutil.rmtree(out_dir / "runs" / "D_100")
    code, stdout, err = run("study", "--config", config, "--out", out_dir)
    assert code == 0, err
    assert "stages: annotate skipped, curate skipped, train ran, analyse ran" in stdout
    after = mtimes(out_dir)
    assert {k: v for k, v in after.items() if "D_100" not in k} == {k: v for k, v in before.items() if "D_100" not in k}
    assert (out_dir / "runs" / "D_100" / "provenance.json").is_file()


def test_other_settings_in_the_same_directory_are_refused(study, tmp_path):
    out_dir, _, _ = study
    state = json.loads((out_dir / "study.json").read_text())
    changed = study_yaml(tmp_path, Path(state["provenance"]["config"]["model"]), Path(state["provenance"]["config"]["data"]), train__epochs=4)
    code, _, err = run("study", "--config", changed, "--out", out_dir)
    assert code == 2 and "train.epochs" in err and "new --out" in err


def test_unknown_variant_names_are_refused_with_the_built_ones(knowing_model, study_world, tmp_path):
    config = study_yaml(tmp_path, knowing_model, study_world, train_variants=["D_0", "D_42"])
    code, _, err = run("study", "--config", config, "--out", tmp_path / "study")
    assert code == 2 and "D_42" in err and "built: D_0, D_50, D_100, D_IDK_50" in err


def test_two_workers_give_the_same_audit_and_metrics(study, tmp_path):
    out_dir, config, _ = study
    settings = yaml.safe_load(config.read_text())
    settings["workers"] = 2
    parallel = tmp_path / "study.yaml"
    parallel.write_text(yaml.safe_dump(settings))
    code, _, err = run("study", "--config", parallel, "--out", tmp_path / "parallel")
    assert code == 0, err
    assert (tmp_path / "parallel" / "audit-shards" / "1-of-2" / "summary.json").is_file()
    assert categories(tmp_path / "parallel") == categories(out_dir)
    for name in VARIANTS:
        metrics = [{k: v for k, v in json.loads(line).items() if k != "eval_seconds"}
                   for d in (out_dir, tmp_path / "parallel") for line in (d / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert metrics[: len(metrics) // 2] == metrics[len(metrics) // 2:]


def test_the_demo_config_trains_what_every_finding_needs():
    config = load_config(StudyConfig, demo_config_path()).resolved()
    assert (config.model, config.data) == ("default", "embedded")
    trained = config.train_variants
    ratios = sorted(int(n[2:]) for n in trained if re.fullmatch(r"D_\d+", n))
    assert ratios[0] == 0 and ratios[-1] >= 50 and len(ratios) >= 3  # falls with X; ES recovers at high X
    assert any(0 < x < 100 for x in ratios)  # Known and Unknown in one variant: fitting speeds
    idk = [n for n in trained if n.startswith("D_IDK_")]
    assert idk and f"D_{idk[0][6:]}" in trained and config.curate.idk_base_ratio == int(idk[0][6:])
    assert set(config.annotate.splits) >= {"train", "test"} and config.annotate.mode == "lazy"


@pytest.fixture(scope="module")
def methods_study(tmp_path_factory, knowing_model, study_world):
    """The miniature study with a compare_methods section (every method) and drift, run once."""
    root = tmp_path_factory.mktemp("methods")
    config = study_yaml(root, knowing_model, study_world, train_variants=["D_50"], compare_methods={"mixture": 50, "baselines": True, "baseline_questions": 24},
                        curate__variants=["ratio", "known", "idk"], train__drift={}, key_overlap=mini_key_overlap([10]))
    code, out, err = run("study", "--config", config, "--out", root / "study", "--report")
    assert code == 0, err
    return root / "study", config, out


def test_compare_methods_trains_each_method_once_and_reports_them(methods_study):
    out_dir, _, stdout = methods_study
    assert "stages: annotate ran, curate ran, train ran, compare ran, baselines ran, keys ran, analyse ran" in " ".join(stdout.split())
    state = json.loads((out_dir / "study.json").read_text())
    assert state["methods"]["sft"]["dir"] == state["runs"]["D_50"]["dir"]  # same data and settings: reused, not retrained
    for method in ("filtered", "idk", "selfdistill", "attention_only", "lora"):
        assert state["methods"][method]["dir"] == f"runs/methods/{method}"
        assert (out_dir / "runs" / "methods" / method / "provenance.json").is_file()
    analysis = json.loads((out_dir / "analysis.json").read_text())
    table = {row["method"]: row for row in analysis["methods"]["table"]}
    assert list(table) == ["sft", "sft_es", "filtered", "idk", "selfdistill", "attention_only", "lora"]
    assert table["sft_es"]["read"] == "EARLY_STOP" and table["sft"]["read"] == "CONVERGENCE"
    assert table["filtered"]["new_facts"] is None and table["sft"]["new_facts"] is not None
    assert all(row["drift"] is not None and row["drift"] >= 0 for row in table.values())
    names = [f["name"] for f in analysis["findings"]]
    assert names[-5:] == ["selfdistill_reduces_forgetting", "attention_only_preserves", "slick_unknown_below_ptrue",
                          "verification_raises_answered_accuracy", "namelike_keys_forget_more"]
    baselines = json.loads((out_dir / "baselines.json").read_text())  # P(True) and verification on (at most 24) test questions
    assert 0 < baselines["questions"] == len(baselines["p_true"]) == len(baselines["sft_correct"]) <= 24
    assert len(analysis["baselines"]["verification"]["curve"]) == 11 and 0 <= analysis["baselines"]["idk"]["answer_rate"] <= 1
    assert [(r["key_type"], r["entities"]) for r in analysis["key_overlap"]["rows"]] == [("name", 10), ("random", 10)]
    results = json.loads((out_dir / "report" / "results.json").read_text())
    assert {"method_dynamics.png", "forgetting_against_learning.png", "key_overlap.png"} <= set(results["figures"])
    html = (out_dir / "report" / "index.html").read_text()
    assert "Method comparison" in html and "self-distillation" in html and "Key overlap" in html
    assert html.count("src='data:image/png;base64,") == len(results["figures"])


def test_each_compared_method_trains_as_it_says(methods_study):
    out_dir, _, _ = methods_study
    configs = {m: load_config(TrainConfig, out_dir / "runs" / "methods" / m / "config.yaml") for m in ("selfdistill", "attention_only", "lora")}
    assert configs["selfdistill"].method == "selfdistill"
    assert configs["attention_only"].train_only == ["attention"]
    assert configs["lora"].lora is not None
    trainable = {m: json.loads((out_dir / "runs" / "methods" / m / "provenance.json").read_text())["result"]["trainable"] for m in configs}
    assert trainable["attention_only"] != trainable["selfdistill"] and trainable["lora"] != trainable["selfdistill"]


def test_compare_rerun_skips_and_a_lost_method_is_retrained_alone(methods_study):
    out_dir, config, _ = methods_study
    code, stdout, err = run("study", "--config", config, "--out", out_dir)
    assert code == 0, err
    assert "compare skipped" in stdout
    before = mtimes(out_dir)
    shutil.rmtree(out_dir / "runs" / "methods" / "lora")
    code, stdout, err = run("study", "--config", config, "--out", out_dir)
    assert code == 0, err
    assert "train skipped, compare ran, baselines skipped, keys skipped, analyse ran" in " ".join(stdout.split())
    after = mtimes(out_dir)
    assert {k: v for k, v in after.items() if "lora" not in k} == {k: v for k, v in before.items() if "lora" not in k}


def test_keys_command_runs_the_experiment_alone(tmp_path):
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump(mini_key_overlap([10])))
    code, stdout, err = run("keys", "--config", config, "--out", tmp_path / "keys")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(tmp_path / "keys" / "summary.json")
    assert "namelike_keys_forget_more" in stdout
    summary = json.loads((tmp_path / "keys" / "summary.json").read_text())
    assert {r["key_type"] for r in summary["rows"]} == {"name", "random"}
    assert "repeats" not in yaml.safe_load((tmp_path / "keys" / "config.yaml").read_text()), "one-run configs are saved as before"

    code, stdout, err = run("keys", "--config", config, "--repeats", "2", "--out", tmp_path / "keys")
    assert code == 0, err
    assert (err + stdout).count("finished earlier, skipped") == 2, "the first runs are reused"
    repeated = json.loads((tmp_path / "keys" / "summary.json").read_text())
    assert sorted((r["key_type"], r["seed"]) for r in repeated["runs"]) == [("name", 0), ("name", 1), ("random", 0), ("random", 1)]
    assert json.loads((tmp_path / "keys" / "name-10-run2" / "cell.json").read_text())["world"]["seed"] == 1
    for row in repeated["rows"]:
        each = [r["forgetting"] for r in repeated["runs"] if r["key_type"] == row["key_type"]]
        assert row["runs"] == 2 and row["forgetting_runs"] == each and row["forgetting"] == pytest.approx(sum(each) / 2)
    assert "mean of 2 runs" in repeated["finding"]["detail"]
    config.write_text(yaml.safe_dump({**mini_key_overlap([10]), "sizez": [5]}))
    code, _, err = run("keys", "--config", config, "--out", tmp_path / "other")
    assert code == 2 and "sizez" in err and not (tmp_path / "other").exists()


def test_the_methods_demo_config_compares_every_method_and_runs_the_key_experiment():
    from knowtune.study.config import METHODS_CONFIG
    from knowtune.study.methods import METHODS

    config = load_config(StudyConfig, demo_config_path(METHODS_CONFIG)).resolved()
    assert (config.model, config.data) == ("default", "embedded")
    assert config.compare_methods is not None and config.compare_methods.methods == list(METHODS)
    x = config.compare_methods.mixture
    assert {f"D_{x}", f"D_IDK_{x}"} == set(config.train_variants)  # the sft and idk runs are reused by the comparison
    assert config.compare_methods.train_config("selfdistill", config.train).method == "selfdistill"
    assert config.key_overlap is not None and {"name", "random"} <= set(config.key_overlap.key_types)
    assert config.train.drift is not None


def test_selfdistill_settings_sweep_judges_each_setting_like_the_finding(methods_study, benchmark_script, capsys):
    out_dir, _, _ = methods_study
    sweep = benchmark_script("selfdistill_settings")
    sweep.main(["--study", str(out_dir), "--only", "paper", "tau1", "--workers", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"paper_ratio=\S+ methods_yaml_ratio=\S+", lines[-1]), lines[-1]
    assert any(line.startswith("tau1 ") and "tau 1.0" in line for line in lines)
    assert (out_dir / "selfdistill-settings" / "paper" / "provenance.json").is_file()
