"""benchmarks/seeds.py: a study run at several seeds through the CLI, and the table of its findings across them."""

import contextlib
import io
import json

import pytest
import yaml
from study_metrics import default_model_study


def tiny_study(path):
    """A miniature study of the default model (40 facts per relation, 1 epoch, SFT against Known-only)."""
    path.write_text(yaml.safe_dump(default_model_study(train=40, samples=2, size=16, epochs=1, max_eval=10)))
    return path


def test_each_seed_runs_the_whole_study_and_a_finished_one_is_read_as_it_is(tmp_path, benchmark_script):
    script = benchmark_script("seeds")
    config = tiny_study(tmp_path / "study.yaml")
    work = tmp_path / "work"
    findings = {seed: script.run_seed(str(config), "default", seed, work, ["--workers", "1"]) for seed in (0, 1)}
    for seed in (0, 1):
        assert yaml.safe_load((work / f"seed-{seed}" / "config.yaml").read_text())["seed"] == seed
        analysis = json.loads((work / f"seed-{seed}" / "analysis.json").read_text())
        assert findings[seed] == analysis["findings"] and findings[seed]
    samples = [{json.loads(line)["id"] for line in (work / f"seed-{seed}" / "data" / "examples.jsonl").read_text().splitlines()
                if line.strip()} for seed in (0, 1)]
    assert samples[0] != samples[1], "another seed audits another sample"

    log = work / "seed-0.log"
    before = log.stat().st_mtime_ns
    assert script.run_seed(str(config), "default", 0, work, []) == findings[0]
    assert log.stat().st_mtime_ns == before, "a finished study is not run again"

    rows = script.across_seeds(findings)
    assert [row["name"] for row in rows] == [f["name"] for f in findings[0]]
    for row in rows:
        tested = [f for seed in (0, 1) for f in findings[seed] if f["name"] == row["name"] and f["holds"] is not None]
        assert row["tested_in"] == len(tested) and row["holds_in"] == sum(f["holds"] for f in tested)


def test_the_table_counts_the_seeds_a_finding_holds_in_and_the_spread_of_its_value(benchmark_script):
    script = benchmark_script("seeds")
    findings = {0: [{"name": "a", "holds": True, "value": 3.6}, {"name": "b", "holds": None, "value": None}],
                1: [{"name": "a", "holds": False, "value": 1.6}, {"name": "b", "holds": False, "value": -2.0}],
                2: [{"name": "a", "holds": False, "value": 1.8}]}
    a, b = script.across_seeds(findings)
    assert (a["holds_in"], a["tested_in"]) == (1, 3) and a["mean"] == pytest.approx(7.0 / 3)
    assert a["sd"] == pytest.approx(((3.6 - 7 / 3) ** 2 + (1.6 - 7 / 3) ** 2 + (1.8 - 7 / 3) ** 2) ** 0.5 / 2 ** 0.5)
    assert (b["holds_in"], b["tested_in"], b["mean"], b["sd"]) == (0, 1, -2.0, None), "untested and missing seeds are left out"
    assert b["seeds"][2] == {"holds": None, "value": None}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        script.print_table([a, b], [0, 1, 2])
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:7] == ["a", "holds", "(3.60)", "fails", "(1.60)", "fails", "(1.80)"]
    assert "1 of 3" in lines[1] and "2.33 +- 1.10" in lines[1]
    assert "untested (-)" in lines[2] and "0 of 1" in lines[2]


@pytest.mark.parametrize(("extra", "message"), [(["--seed", "1"], "--seed: this script sets"), (["--seed=1"], "--seed: this script sets"),
                                               (["--seeds", "1,1"], "distinct seeds"), (["--seeds", "one"], "comma-separated integers")])
def test_a_seed_flag_or_bad_seeds_are_refused_before_anything_runs(extra, message, tmp_path, benchmark_script, monkeypatch, capsys):
    script = benchmark_script("seeds")
    argv = ["--config", "study.yaml", "--out", str(tmp_path / "work")]
    argv += extra if extra[0] == "--seeds" else ["--seeds", "0,1", *extra]
    monkeypatch.setattr("sys.argv", ["seeds.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
