"""The study's ``reaudit: true``: each trained variant's model audited again at ES and CONV, and the
category transition matrices in the report."""

from __future__ import annotations

import json

from test_study_cli import run, study_yaml


def test_reaudit_writes_the_shift_at_es_and_conv_and_the_report_shows_the_matrices(knowing_model, study_world, tmp_path):
    config = study_yaml(tmp_path, knowing_model, study_world, train_variants=["D_50"], reaudit=True,
                        train={"epochs": 3, "learning_rate": 1e-3, "batch_size": 4, "max_new_tokens": 8, "save_best": True})
    out = tmp_path / "study"
    code, stdout, err = run("study", "--config", config, "--out", out)
    assert code == 0, err
    assert "shift ran" in stdout
    state = json.loads((out / "study.json").read_text())
    run_dir = out / state["runs"]["D_50"]["dir"]
    trained = {json.loads(line)["id"] for line in (out / "variants" / "D_50" / "train.jsonl").read_text().splitlines()}
    base = json.loads((out / "audit" / "protocol.json").read_text())["protocol_hash"]
    for stage, name in (("conv", "shift.json"), ("es", "shift_es.json")):
        shift = json.loads((run_dir / name).read_text())
        assert json.loads((run_dir / "reaudit" / stage / "protocol.json").read_text())["protocol_hash"] == base
        assert shift["per_training"]["trained"]["examples"] == len(trained)
        assert shift["per_training"]["held_out"]["examples"] == len(trained)  # as many held-out facts, when there are enough
    code, stdout, err = run("study", "--config", config, "--out", out)
    assert code == 0 and "shift skipped" in stdout
    code, stdout, err = run("report", out)
    assert code == 0, err
    results = json.loads((out / "report" / "results.json").read_text())
    assert [(r["variant"], r["stage"]) for r in results["knowledge_shift"]] == [("D_50", "es"), ("D_50", "conv")]
    assert "knowledge_shift.png" in results["figures"]
    page = (out / "report" / "index.html").read_text()
    assert "Knowledge shift: category transitions at EARLY_STOP and CONVERGENCE" in page and "held-out Known lost" in page
