"""The formats users bring: chat messages, a single answer string, field mappings, CSV/TSV,
`datasets` folders from save_to_disk, and cached hub dataset names."""

from __future__ import annotations

import json

import pytest

from knowtune.data import load_examples, save_examples
from knowtune.errors import DataError, KnowtuneError


def _chat(question: str, answer: str, system: str | None = None, **extra) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, **extra}


def test_chat_messages_last_user_turn_is_the_question_and_system_is_kept(write):
    path = write("chat.jsonl", [
        _chat("Where was Ada Lovelace born?", "London", system="Answer briefly."),
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Who wrote Hamlet?"}, {"role": "assistant", "content": "Shakespeare"}]},
    ])
    first, second = load_examples(path)
    assert (first.question, first.answers, first.metadata["system"]) == ("Where was Ada Lovelace born?", ("London",), "Answer briefly.")
    assert (second.question, second.answers) == ("Who wrote Hamlet?", ("Shakespeare",))
    assert second.metadata["history"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert first.id == "chat-1" and first.split == "train"


def test_chat_parquet_loads_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_chat("Where was Ada Lovelace born?", "London"), _chat("Who wrote Hamlet?", "Shakespeare")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    assert [(e.question, e.answers) for e in load_examples(tmp_path / "chat.parquet")] == [
        ("Where was Ada Lovelace born?", ("London",)), ("Who wrote Hamlet?", ("Shakespeare",))]


@pytest.mark.parametrize(("messages", "expected"), [
    ([{"role": "assistant", "content": "x"}], "no 'user' turn"),
    ([{"role": "user", "content": "Q?"}], "no 'assistant' turn after the last user turn"),
    ([], "must be a non-empty list"),
    ([{"role": "user"}], "messages[0] must be an object"),
])
def test_bad_chat_records_name_the_line_and_the_fix(write, messages, expected):
    path = write("chat.jsonl", [_chat("Q?", "A"), {"messages": messages}])
    with pytest.raises(DataError) as error:
        load_examples(path)
    text = error.value.render()
    assert f"{path}:2" in text and expected in text and '"messages"' in text


def test_single_answer_string(write):
    (example,) = load_examples(write("qa.jsonl", [{"question": "Where was Ada Lovelace born?", "answer": "London"}]))
    assert example.answers == ("London",)


def test_field_mapping_and_a_fix_that_names_the_keys_present(write):
    path = write("qa.jsonl", [{"prompt": "Where was Ada Lovelace born?", "completion": "London", "rel": "P19", "part": "dev", "uid": "a1"}])
    with pytest.raises(DataError) as error:
        load_examples(path)
    text = error.value.render()
    assert "missing 'question'" in text and "completion, part, prompt, rel, uid" in text and "--question-field" in text
    (example,) = load_examples(path, fields={"question": "prompt", "answer": "completion", "relation": "rel", "split": "part", "id": "uid"})
    assert (example.id, example.relation, example.split, example.question, example.answers) == (
        "a1", "P19", "dev", "Where was Ada Lovelace born?", ("London",))
    with pytest.raises(KnowtuneError, match="unknown field"):
        load_examples(path, fields={"quest": "prompt"})


def test_csv_and_tsv_with_alias_lists(write):
    csv_path = write("qa.csv", 'question,answers,relation\n"Where was Ada Lovelace born, exactly?",London,P19\n'
                               'Who wrote Hamlet?,"[""Shakespeare"", ""William Shakespeare""]",P50\n\n')
    tsv_path = write("qa.tsv", "question\tanswer\nWhere was Ada Lovelace born?\tLondon\n")
    first, second = load_examples(csv_path)
    assert (first.question, first.answers, first.relation) == ("Where was Ada Lovelace born, exactly?", ("London",), "P19")
    assert second.answers == ("Shakespeare", "William Shakespeare")
    assert [e.answers for e in load_examples(tsv_path)] == [("London",)]


def test_csv_errors_name_the_line(write):
    path = write("bad.csv", "question,answer\nQ1?,A1\nQ2?,A2,extra\n")
    with pytest.raises(DataError) as error:
        load_examples(path)
    assert f"{path}:3" in str(error.value) and "more cells" in str(error.value)
    path = write("noanswer.csv", "question,answer\nQ1?,\n")
    with pytest.raises(DataError, match="missing 'answers'"):
        load_examples(path)


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    records = [{"question": "Where was Ada Lovelace born?", "answer": "London"}, {"question": "Who wrote Hamlet?", "answer": "Shakespeare"}]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "single"))
    assert [e.answers for e in load_examples(tmp_path / "single")] == [("London",), ("Shakespeare",)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:1]), "validation": datasets.Dataset.from_list(records[1:])}).save_to_disk(
        str(tmp_path / "dict"))
    examples = load_examples(tmp_path / "dict")
    assert [(e.split, e.question) for e in examples] == [("train", "Where was Ada Lovelace born?"), ("dev", "Who wrote Hamlet?")]
    assert [e.id for e in load_examples(tmp_path / "dict", split="dev")] == ["validation-1"]


def test_chat_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list([_chat("Where was Ada Lovelace born?", "London", system="Be brief.")]).save_to_disk(str(tmp_path / "chat"))
    (example,) = load_examples(tmp_path / "chat")
    assert (example.question, example.answers, example.metadata["system"]) == ("Where was Ada Lovelace born?", ("London",), "Be brief.")


def test_hub_name_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(DataError) as error:
        load_examples("hf:knowtune-test/not-cached-anywhere")
    assert "local Hugging Face cache" in error.value.render() and "save_to_disk" in error.value.render()


def test_hub_name_reads_a_cached_dataset(tmp_path, monkeypatch):
    """A dataset script-free repo layout in a local folder is what load_dataset reads offline."""
    folder = tmp_path / "my-qa"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "Shakespeare"}) + "\n")
    (folder / "test.jsonl").write_text(json.dumps({"question": "Where was Ada Lovelace born?", "answer": "London"}) + "\n")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    examples = load_examples(f"hf:{folder}")
    assert sorted((e.split, e.answers) for e in examples) == [("test", ("London",)), ("train", ("Shakespeare",))]


def test_every_format_round_trips_through_save_examples(tmp_path, write):
    path = write("chat.jsonl", [_chat("Where was Ada Lovelace born?", "London", system="Be brief.")])
    save_examples(load_examples(path), tmp_path / "out.jsonl")
    assert load_examples(tmp_path / "out.jsonl")[0].metadata["system"] == "Be brief."


def _mapped_dataset(tmp_path):
    rows = [{"prompt": q, "completion": a, "part": split, "uid": f"{split}-{i}"}
            for split in ("train", "dev", "test") for i, (q, a) in enumerate([("Where was Ada Lovelace born?", "London"),
                                                                              ("Who wrote Hamlet?", "Shakespeare")])]
    path = tmp_path / "mapped.csv"
    path.write_text("prompt,completion,part,uid\n" + "".join(f"{r['prompt']},{r['completion']},{r['part']},{r['uid']}\n" for r in rows))
    return path


FIELD_FLAGS = ["--question-field", "prompt", "--answer-field", "completion", "--split-field", "part", "--id-field", "uid"]


def test_field_flags_in_data_check_evaluate_annotate_and_train(capsys, tmp_path):
    from knowtune.testing import run_cli

    path = _mapped_dataset(tmp_path)
    code, _, err = run_cli(capsys, "data", "check", path)
    assert code == 2 and "--question-field" in " ".join(err.split())
    code, out, err = run_cli(capsys, "data", "check", path, *FIELD_FLAGS)
    assert code == 0 and "6 valid examples" in out, err
    code, _, err = run_cli(capsys, "evaluate", "--model", "default", "--data", path, *FIELD_FLAGS, "--out", tmp_path / "eval")
    assert code == 0, err
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in predictions) == ["test-0", "test-1"]
    assert "data_fields" in (tmp_path / "eval" / "config.yaml").read_text()
    code, _, err = run_cli(capsys, "annotate", "--data", path, *FIELD_FLAGS, "--k", "1", "--n-ex", "1", "--n-samples", "2", "--out", tmp_path / "audit")
    assert code == 0, err
    audited = [json.loads(line) for line in (tmp_path / "audit" / "annotations.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in audited) == ["dev-0", "dev-1", "test-0", "test-1", "train-0", "train-1"]
    code, _, err = run_cli(capsys, "train", "--data", path, *FIELD_FLAGS, "--epochs", "1", "--out", tmp_path / "train")
    assert code == 0, err
    assert "1 train" not in err and "2 train" in " ".join(err.split())
