"""`knowtune data check`, run in-process through knowtune.cli.main as the console script does."""

from __future__ import annotations

import json

import pytest

from knowtune.testing import run_cli, table_row
from knowtune.world.embedded import load_embedded_world

GOOD = '{"question": "Where was Ada born?", "answers": ["London"]}'


run = run_cli
row = table_row


def test_malformed_file_exits_2_with_file_and_line(capsys, write):
    path = write("bad.jsonl", GOOD + "\n" + '{"question": "Q?", "answers": 42}\n')
    code, out, err = run(capsys, "data", "check", path)
    assert code == 2 and out == ""
    assert f"{path}:2: 'answers' must be a string or a list of strings, got a number" in err.replace("\n", "")
    assert "Fix:" in err and "Traceback" not in err


def test_counts_per_relation_and_split_and_writes_nothing(capsys, write, tmp_path):
    path = write("f.jsonl", [{"question": "Q?", "answers": "A", "relation": r, "split": s} for r, s in [("P19", "train"), ("P19", "test"), ("P2", "train"), ("x", "dev")]])
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 0
    assert row(out, "P2") == ["1", "0", "0", "1"] and row(out, "P19") == ["1", "0", "1", "2"] and row(out, "x") == ["0", "1", "0", "1"]
    assert row(out, "total") == ["2", "1", "1", "4"]
    assert out.index("│ P2 ") < out.index("│ P19 ") < out.index("│ x ")  # Wikidata ids in numeric order
    code, out, _ = run(capsys, "data", "check", path, "--split", "test")
    assert code == 0 and row(out, "total") == ["1", "1"] and "kept in the test split" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_entityquestions_with_filters(capsys, entityquestions):
    code, out, err = run(capsys, "data", "check", entityquestions, "--drop-multi-answer", "--drop-test-overlap")
    assert code == 0, err
    assert "220703 valid examples; 207914 kept" in out.replace("\n", "")
    assert row(out, "P36") == ["6813", "881", "880", "8574"]
    assert row(out, "total") == ["165534", "21174", "21206", "207914"]
    assert row(out, "drop_multi_answer") == ["7396", "894", "869", "9159", "211544"]
    assert row(out, "drop_test_overlap") == ["3630", "0", "0", "3630", "207914"]  # templates found beside the data


def test_overlap_without_templates_is_a_usage_error(capsys, write):
    path = write("f.jsonl", [{"question": "Where was Bob born?", "answers": "X", "split": "test"}])
    code, _, err = run(capsys, "data", "check", path, "--drop-test-overlap")
    assert code == 2 and "cannot tell the subject" in err and "--templates" in err
    templates = write("t.json", '{"default": "Where was [X] born?"}')
    code, out, _ = run(capsys, "data", "check", path, "--drop-test-overlap", "--templates", templates)
    assert code == 0 and row(out, "drop_test_overlap") == ["0", "0", "0", "0", "1"]


@pytest.mark.parametrize("args", [["data", "--help"], ["data", "check", "--help"]])
def test_help(capsys, args):
    code, out, _ = run(capsys, *args)
    assert code == 0 and "check" in out and "Validate" in out


def test_data_store_indexes_a_dataset_for_retrieval(tmp_path, capsys):
    from knowtune.retrieval import RetrievalStore

    code, out, _ = run_cli(capsys, "data", "store", "embedded", "--split", "dev", "--out", tmp_path / "store")
    assert code == 0 and "360 passages (statement)" in out
    store = RetrievalStore.load(tmp_path / "store")
    best = store.search(["Where is Savannah located?"], k=1)[0][0]
    assert best.text == "Savannah is located in Denton County." and len(store.passages) == 360
    assert not list(tmp_path.glob(".*partial"))
    code, _, err = run_cli(capsys, "data", "store", "embedded", "--out", tmp_path / "store")
    assert code == 2 and "not an empty directory" in err
    facts = tmp_path / "facts.jsonl"  # a plain file of the world's facts: Q/A passages, unless --relations names the world
    facts.write_text("".join(json.dumps(ex.to_record()) + "\n" for ex in load_embedded_world().split("dev")[:20]), encoding="utf-8")
    assert run_cli(capsys, "data", "store", facts, "--out", tmp_path / "qa")[0] == 0
    assert RetrievalStore.load(tmp_path / "qa").passages[0].text.startswith("Q: ")
    assert run_cli(capsys, "data", "store", facts, "--relations", "embedded", "--out", tmp_path / "statements")[0] == 0
    assert RetrievalStore.load(tmp_path / "statements").passages[0].text == "Savannah is located in Denton County."
    code, _, err = run_cli(capsys, "data", "store", facts, "--relations", tmp_path, "--out", tmp_path / "none")
    assert code == 2 and "not a knowtune world" in err and not (tmp_path / "none").exists()
