"""benchmarks/unknown_fit.py: the dynamics table of a finished study, and the per-epoch re-run of one of its variants."""

import contextlib
import io
import json


def _run(function, *args) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        function(*args)
    return out.getvalue().splitlines()


def test_dynamics_table_has_a_row_per_regression_point(route_study, benchmark_script):
    study, _ = route_study
    points = json.loads((study / "analysis.json").read_text())["regression_points"]
    lines = _run(benchmark_script("unknown_fit").dynamics_table, study)
    assert len(lines) == 1 + len(points)
    first = lines[1].split()
    assert first[:2] == [points[0]["variant"], str(points[0]["epoch"])]
    assert float(first[4]) == round(points[0]["test"], 1)


def test_probe_reruns_the_variant_and_answers_at_every_epoch(route_study, tmp_path, benchmark_script):
    study, _ = route_study
    lines = _run(benchmark_script("unknown_fit").probe, study, "D_50", tmp_path)
    assert (tmp_path / "D_50" / "model").is_dir()
    asked = int(lines[0].split()[1])
    rows = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in rows] == [0, 1, 2]
    for _, em, memorised, distinct, others, of_relation, count, times, *_ in rows:
        assert 0 <= float(em) <= 100 and 0 <= float(memorised) <= 1 and int(distinct) >= 1 and 0 <= float(others) <= 100
        assert 0 <= float(of_relation) <= 1 and 1 <= int(count) <= asked and times == "x"
    assert rows[0][6:] == [str(asked), "x", "''"]  # the base model answers nothing in the new format
    metrics = [json.loads(line) for line in (study / "runs" / "D_50" / "metrics.jsonl").read_text().splitlines()]
    assert float(rows[0][1]) == round(100 * metrics[0]["test/exact_match"], 1)  # epoch 0 is the base model, as in the study
