"""The study's typed state (study.json): it reads the files earlier versions wrote and writes the same layout."""

from __future__ import annotations

import json

import pytest

from knowtune.errors import DataError
from knowtune.study.state import MethodRecord, RunRecord, StageRecord, StudyState

SAVED = {  # a study.json as knowtune wrote it before the state was typed
    "stages": {"annotate": {"key": "a1", "status": "done", "seconds": 3.2, "counts": {"Unknown": 4}},
               "curate": {"key": "c1", "status": "running"}},
    "runs": {"D_0": {"dir": "runs/D_0", "kind": "ratio", "size": 8, "params": {"ratio": 0, "seed": None}, "done": True}},
    "provenance": {"seed": 0, "config": {"model": "m"}},
    "trained": ["D_0"],
    "methods": {"sft": {"dir": "runs/D_0", "variant": "D_0", "done": True}},
}


def test_reads_and_writes_the_same_layout(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(SAVED))
    state = StudyState.load(path)
    assert state.stages["annotate"].counts == {"Unknown": 4} and state.stage_done("annotate", "a1") and not state.stage_done("curate", "c1")
    assert state.runs["D_0"].params["ratio"] == 0 and state.methods["sft"].variant == "D_0"
    assert state.to_json() == SAVED


def test_done_needs_the_run_directory(tmp_path):
    state = StudyState(runs={"D_0": RunRecord(dir="runs/D_0", kind="ratio", size=8, done=True)},
                       methods={"sft": MethodRecord(dir="runs/D_0", variant="D_0", done=True)})
    assert not state.run_done("D_0", tmp_path) and not state.method_done("sft", tmp_path)
    (tmp_path / "runs" / "D_0").mkdir(parents=True)
    (tmp_path / "runs" / "D_0" / "provenance.json").write_text("{}")
    assert state.run_done("D_0", tmp_path) and state.method_done("sft", tmp_path) and not state.run_done("D_50", tmp_path)
    assert StudyState().to_json() == {"stages": {}, "runs": {}}
    assert StageRecord(key="k", status="running").model_dump(exclude_none=True) == {"key": "k", "status": "running"}


def test_a_broken_state_file_is_a_data_error(tmp_path):
    path = tmp_path / "study.json"
    path.write_text('{"stages": {"annotate": {"status": "finished"}}}')
    with pytest.raises(DataError, match="not a study state"):
        StudyState.load(path)


def test_settings_may_change_until_a_stage_has_finished(tmp_path):
    """A study whose first run stopped before any stage finished (a model that failed to load, say)
    takes corrected settings; once a stage is done, other settings are refused."""
    from knowtune.errors import KnowtuneError
    from knowtune.study.config import StudyConfig
    from knowtune.study.pipeline import STATE_FILE, Study

    out = tmp_path / "study"
    Study(StudyConfig(out=str(out), seed=0), log=lambda _: None).open()
    lines: list[str] = []
    Study(StudyConfig(out=str(out), seed=1), log=lines.append).open()
    assert any("no stage finished under its earlier settings (annotate.seed, curate.seed, seed, train.seed differ" in line for line in lines), lines
    state = StudyState(stages={"annotate": StageRecord(key="k", status="done")})
    (out / STATE_FILE).write_text(json.dumps(state.to_json()))
    with pytest.raises(KnowtuneError, match=r"holds a study with other settings \(annotate.seed"):
        Study(StudyConfig(out=str(out), seed=2), log=lambda _: None).open()
