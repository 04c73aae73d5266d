"""benchmarks/candidate.py: the audit and study figures it reads back, and the comparison it prints."""

import contextlib
import io
import json
import shutil


def test_audit_runs_the_exposure_check_on_the_annotations(route_study, tmp_path, benchmark_script):
    from knowtune.exposure import validate_against_exposure
    from knowtune.models import DEFAULT_MODEL_DIR
    from knowtune.pretrain import load_exposures

    study, _ = route_study
    shutil.copytree(study / "audit", tmp_path / "audit")  # an audit already there is not run again
    figures = benchmark_script("candidate").audit(str(DEFAULT_MODEL_DIR), tmp_path, tmp_path / "unused-sample.jsonl")
    records = [json.loads(line) for line in (study / "audit" / "annotations.jsonl").read_text().splitlines() if line.strip()]
    expected = validate_against_exposure(records, load_exposures(DEFAULT_MODEL_DIR))
    assert (tmp_path / "exposure.json").is_file()
    assert figures["rho"] == expected["spearman_exposure_category"]
    assert figures["rho_not_inferable"] == expected["spearman_exposure_category_not_inferable"]
    assert abs(sum(figures[c] for c in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")) - 1.0) < 1e-9
    assert figures["MaybeKnown"] == expected["per_category"]["MaybeKnown"]["facts"] / expected["facts"]


def test_study_figures_and_the_findings_a_candidate_loses(route_study, tmp_path, benchmark_script):
    script = benchmark_script("candidate")
    study, _ = route_study
    shutil.copytree(study, tmp_path / "demo")  # the work directory's study for demo.yaml, already finished
    linear, findings = script.study("default", tmp_path, "src/knowtune/study/demo.yaml")
    analysis = json.loads((study / "analysis.json").read_text())
    assert linear["b_unk"] == analysis["linear_model"]["in_distribution"]["b_unk"]
    assert {name: f["holds"] for name, f in findings.items()} == {f["name"]: f["holds"] for f in analysis["findings"]}

    baseline = {"findings": {"a": {"holds": True, "value": 1.0}, "b": {"holds": True, "value": 2.0}, "c": {"holds": False, "value": 0.0}}}
    candidate = {"findings": {"a": {"holds": True, "value": 1.5}, "b": {"holds": False, "value": -1.0}}}
    assert script.lost_findings({"candidate": candidate, "baseline": baseline}) == ["b"]
    methods = {"a": {"holds": None, "value": None}, "d": {"holds": False, "value": 3.0}}
    assert script.merge_findings(candidate["findings"], methods) == {**candidate["findings"], "d": methods["d"]}

    figures = {"reading": {"closed_em": 0.0, "k1_em": 0.5, "k2_em": 0.25, "fresh_lesson_em": 0.4, "fresh_qa_lesson_em": 0.7},
               "audit": {"rho": 0.83, "rho_not_inferable": 0.86, "HighlyKnown": 0.4, "MaybeKnown": 0.05, "WeaklyKnown": 0.1, "Unknown": 0.45},
               "linear_model": linear, "findings": findings}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        script.print_table({"candidate": figures})
    lines = out.getvalue().splitlines()
    assert "0.000 / 0.500 / 0.250" in lines[1]
    assert "40.0 / 5.0 / 10.0 / 45.0" in lines[4]
    assert len(lines) == 1 + 5 + len(findings)
