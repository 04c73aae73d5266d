"""Knowledge shift between two audits: the transition matrix and `knowtune diff` end to end."""

from __future__ import annotations

import json

import pytest

from knowtune.errors import KnowtuneError
from knowtune.shift import knowledge_shift, protocol_differences, transition_block
from knowtune.testing import run_cli, tiny_family_model


def test_transition_block_counts_lost_learned_degraded_improved():
    pairs = [("HighlyKnown", "Unknown"), ("HighlyKnown", "HighlyKnown"), ("MaybeKnown", "WeaklyKnown"), ("Unknown", "MaybeKnown"),
             ("Unknown", "Unknown"), ("WeaklyKnown", "HighlyKnown")]
    block = transition_block(pairs)
    assert block["matrix"]["HighlyKnown"] == {"HighlyKnown": 1, "MaybeKnown": 0, "WeaklyKnown": 0, "Unknown": 1}
    assert (block["lost"], block["learned"], block["degraded"], block["improved"], block["unchanged"]) == (1, 1, 2, 2, 2)
    assert block["lost_share_of_known"] == 1 / 4 and block["learned_share_of_unknown"] == 1 / 2
    assert (block["known_before"], block["known_after"]) == (4, 4)


def _record(i: str, category: str, relation: str = "P1", question: str | None = None) -> dict:
    return {"id": i, "relation": relation, "split": "train", "question": question or f"Q{i}?", "category": category}


def test_shift_splits_trained_and_held_out_and_checks_questions():
    before = {i: _record(i, c, r) for i, c, r in [("a", "HighlyKnown", "P1"), ("b", "Unknown", "P1"), ("c", "HighlyKnown", "P2")]}
    after = {i: _record(i, c, r) for i, c, r in [("a", "HighlyKnown", "P1"), ("b", "HighlyKnown", "P1"), ("c", "Unknown", "P2"), ("d", "Unknown", "P2")]}
    shift = knowledge_shift(before, after, trained_ids={"b"})
    assert shift["per_training"]["trained"]["learned"] == 1 and shift["per_training"]["held_out"]["lost"] == 1
    assert shift["per_relation"]["P2"]["lost"] == 1 and (shift["only_before"], shift["only_after"]) == (0, 1)
    with pytest.raises(KnowtuneError, match="different questions"):
        knowledge_shift(before, {**after, "a": _record("a", "Unknown", question="other?")})
    with pytest.raises(KnowtuneError, match="share no example ids"):
        knowledge_shift(before, {"z": _record("z", "Unknown")})


def test_protocol_differences_ignore_the_version():
    first = {"knowtune_version": "1", "decoding": {"temperature": 0.5, "top_k": 40}}
    assert protocol_differences(first, {**first, "knowtune_version": "2"}) == []
    assert protocol_differences(first, {"knowtune_version": "1", "decoding": {"temperature": 1.0, "top_k": 40}}) == ["decoding.temperature"]


def test_diff_cli_base_against_a_model_that_knows_nothing(capsys, tmp_path):
    """The default model knows some facts; a random-initialised model of the same tokenizer
    knows none, so every Known example of the base audit is lost."""
    args = ("--data", "embedded", "--limit", "16", "--n-ex", "2", "--n-samples", "4")
    assert run_cli(capsys, "annotate", "--model", "default", "--out", tmp_path / "before", *args)[0] == 0
    random_model = tiny_family_model("llama", tmp_path / "random")
    assert run_cli(capsys, "annotate", "--model", random_model, "--out", tmp_path / "after", *args)[0] == 0
    (tmp_path / "trained.jsonl").write_text("".join(
        json.dumps({k: r[k] for k in ("id", "question", "answers", "relation")}) + "\n"
        for r in map(json.loads, (tmp_path / "before" / "annotations.jsonl").read_text().splitlines()[:5])))
    code, out, err = run_cli(capsys, "diff", tmp_path / "before", tmp_path / "after", "--trained", tmp_path / "trained.jsonl", "--out", tmp_path / "shift")
    assert code == 0, err
    shift = json.loads((tmp_path / "shift" / "shift.json").read_text())
    known_before = sum(json.loads(line)["category"] != "Unknown" for line in (tmp_path / "before" / "annotations.jsonl").read_text().splitlines())
    assert known_before > 0 and shift["overall"]["lost"] == known_before and shift["overall"]["known_after"] == 0
    assert shift["per_training"]["trained"]["examples"] == 5 and shift["per_training"]["held_out"]["examples"] == 11
    assert shift["before"]["model_fingerprint"] != shift["after"]["model_fingerprint"]
    assert (tmp_path / "shift" / "shift.png").stat().st_size > 1000 and "knowledge shift over 16 examples" in out
    assert run_cli(capsys, "annotate", "--model", "default", "--out", tmp_path / "other", *args[:-1], "8")[0] == 0
    code, _, err = run_cli(capsys, "diff", tmp_path / "before", tmp_path / "other")
    assert code == 2 and "different protocols" in err and "decoding.samples_per_prompt" in " ".join(err.split())


def test_train_reaudit_audits_the_fine_tuned_models_as_the_base_was_audited_and_writes_the_shift(capsys, tmp_path):
    from knowtune.data import save_examples
    from knowtune.data.splits import load_splits

    audit = ("--data", "embedded", "--split", "train", "--limit", "12", "--n-ex", "2", "--n-samples", "2")
    assert run_cli(capsys, "annotate", "--model", "default", "--out", tmp_path / "before", *audit)[0] == 0
    splits = load_splits("embedded")
    audited = {json.loads(line)["id"] for line in (tmp_path / "before" / "annotations.jsonl").read_text().splitlines()}
    train = [e for e in splits.train if e.id in audited]
    save_examples([*train, *splits.dev[:4]], tmp_path / "data.jsonl")
    run = tmp_path / "run"
    flags = ("--model", "default", "--data", tmp_path / "data.jsonl", "--out", run, "--epochs", "2", "--batch-size", "4", "--lr", "1e-2",
             "--max-eval-examples", "4")
    code, _, err = run_cli(capsys, "train", *flags, "--reaudit")
    assert code == 2 and "--annotations" in err
    code, _, err = run_cli(capsys, "train", *flags, "--annotations", tmp_path / "before", "--save-best", "--reaudit")
    assert code == 0, err
    before = json.loads((tmp_path / "before" / "protocol.json").read_text())
    for stage, name in (("conv", "shift.json"), ("es", "shift_es.json")):
        shift = json.loads((run / name).read_text())
        after = json.loads((run / "reaudit" / stage / "protocol.json").read_text())
        assert after["protocol_hash"] == before["protocol_hash"] and after["model_fingerprint"] != before["model_fingerprint"]
        assert shift["overall"]["examples"] == 12 and shift["per_training"]["trained"]["examples"] == 12
        assert (run / name.replace(".json", ".png")).is_file()
    assert "reaudit conv:" in err and "reaudit es:" in err
