"""``knowtune evaluate --backend openai``: the default model evaluated through a real llama.cpp
``llama-server`` (the session's server of tests/conftest.py) scores as the in-process evaluation.

Tolerance: the server's greedy answers are the in-process ones up to llama.cpp's arithmetic
(fp32 matmuls in another order), so an argmax between two near-tied tokens may flip. We require
the same prediction for at least 98% of the questions (the audit's agreement bar, issue 10) and,
since one differing prediction moves a group's exact match by at most 1/n, every exact match and
answer rate within (differing predictions in the group) / n of the in-process one, and overall
within 0.02. Measured on the whole embedded test split (1,350 questions): 99.6% identical
predictions, identical exact match overall and per relation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from knowtune.testing import run_cli

pytestmark = pytest.mark.served
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def test_questions(tmp_path_factory) -> Path:
    """Every 9th question of the embedded test split (150 questions, all 9 relations) as one JSONL file."""
    from knowtune.data import save_examples
    from knowtune.world.embedded import load_embedded_world

    path = tmp_path_factory.mktemp("eval-data") / "test.jsonl"
    save_examples([e for e in load_embedded_world().examples if e.split == "test"][::9], path)
    return path


@pytest.fixture(scope="module")
def tokenizer_only(tmp_path_factory) -> Path:
    """The default model directory without its weights: a served evaluation must not need them."""
    from knowtune.models import default_model_dir

    out = tmp_path_factory.mktemp("tokenizer-only")
    for name in TOKENIZER_FILES:
        shutil.copy(default_model_dir() / name, out / name)
    return out


def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_served_evaluate_scores_as_in_process(capsys, llama_server, test_questions, tokenizer_only, tmp_path):
    common = ["evaluate", "--data", test_questions, "--split", "test", "--device", "cpu"]
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "local")
    assert code == 0, err
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "served", "--model", tokenizer_only,
                           "--backend", "openai", "--base-url", llama_server.base_url, "--served-model", "default")
    assert code == 0, err
    local, served = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("local", "served"))
    assert served["provenance"]["model_fingerprint"].startswith("served-") and served["provenance"]["config"]["backend"] == "openai"
    a, b = _predictions(tmp_path / "local"), _predictions(tmp_path / "served")
    assert [p["id"] for p in a] == [p["id"] for p in b] and len(a) == 150
    differ = [p["relation"] for p, q in zip(a, b) if p["prediction"] != q["prediction"]]
    assert len(differ) <= 0.02 * len(a), differ
    assert 0 < local["overall"]["correct"] < len(a)  # some questions right, some wrong: the comparison means something
    assert abs(served["overall"]["exact_match"] - local["overall"]["exact_match"]) <= 0.02
    assert set(served["per_relation"]) == set(local["per_relation"]) and len(local["per_relation"]) == 9
    for relation, group in local["per_relation"].items():
        bound = differ.count(relation) / group["n"]
        for rate in ("exact_match", "answer_rate"):
            assert abs(served["per_relation"][relation][rate] - group[rate]) <= bound + 1e-12, (relation, rate)


def test_served_evaluate_errors_name_the_flag(capsys, test_questions, monkeypatch):
    code, _, err = run_cli(capsys, "evaluate", "--data", test_questions, "--backend", "openai")
    assert code == 2 and "--base-url" in err
    monkeypatch.delenv("KT_EVAL_KEY", raising=False)
    code, _, err = run_cli(capsys, "evaluate", "--data", test_questions, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                           "--api-key-env", "KT_EVAL_KEY")
    assert code == 2 and "KT_EVAL_KEY" in err
