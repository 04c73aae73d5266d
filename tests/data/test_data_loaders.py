"""load_examples / save_examples: every accepted format, defaults, filters and round trips."""

from __future__ import annotations

import gc
import json

import datasets
import pytest

from knowtune.data import QAExample, load_examples, save_examples
from knowtune.errors import DataError

Q = {"question": "Where was Ada Lovelace born?", "answers": ["London"]}


def test_jsonl_defaults_and_extras(write):
    path = write("facts.jsonl", json.dumps(Q) + "\n\n" + json.dumps({"question": "Q2?", "answers": "A2", "source": "wiki"}) + "\n")
    first, second = load_examples(path)
    assert (first.id, first.relation, first.split, first.answers) == ("facts-1", "default", "train", ("London",))
    assert second.id == "facts-3"  # ids follow file lines; the blank line 2 is skipped
    assert second.answers == ("A2",)  # a string answer becomes a one-element tuple
    assert second.metadata == {"source": "wiki"}  # unknown keys are kept in metadata


def test_explicit_fields_are_kept(write):
    record = {**Q, "id": "ada", "relation": "P19", "split": "test", "subject": "Ada Lovelace", "object": "London", "metadata": {"k": 1}, "extra": 2}
    (example,) = load_examples(write("f.jsonl", [record]))
    assert example == QAExample(id="ada", relation="P19", question=Q["question"], answers=("London",), split="test", subject="Ada Lovelace", object="London", metadata={"extra": 2, "k": 1})


def test_integer_ids_become_strings(write):
    (example,) = load_examples(write("f.jsonl", [{**Q, "id": 7}]))
    assert example.id == "7"


def test_split_argument_is_default_and_filter(write):
    path = write("f.jsonl", [Q, {**Q, "id": "t", "split": "test"}, {**Q, "id": "r", "relation": "P1"}])
    assert [ex.split for ex in load_examples(path)] == ["train", "test", "train"]
    assert [ex.id for ex in load_examples(path, split="dev")] == ["f-1", "r"]  # records without a split become dev
    assert [ex.id for ex in load_examples(path, split="test")] == ["f-1", "t", "r"]
    assert [ex.id for ex in load_examples(path, split="train")] == ["f-1", "r"]
    assert [ex.id for ex in load_examples(path, relation="P1")] == ["r"]
    assert load_examples(path, relation="P999") == []


def test_json_array_uses_element_numbers(write):
    path = write("arr.json", json.dumps([Q, {**Q, "relation": "P1"}], indent=2))
    examples = load_examples(path)
    assert [(ex.id, ex.relation) for ex in examples] == [("arr-1", "default"), ("arr-2", "P1")]


def test_json_file_with_one_object_per_line(write):
    assert [ex.id for ex in load_examples(write("lines.json", [Q, Q]))] == ["lines-1", "lines-2"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_and_load_round_trip(tmp_path, suffix):
    examples = [
        QAExample(id="a", relation="P19", question="Where was Ada born?", answers=("London", "Marylebone"), split="dev", subject="Ada", metadata={"n": 1, "tags": ["x"]}),
        QAExample(id="b", relation="P36", question="Qué es Ｐａｒｉｓ?", answers=("Paris",), split="test", object="Paris"),
    ]
    path = tmp_path / f"out{suffix}"
    save_examples(examples, path)
    assert load_examples(path) == examples
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write cleaned up


def test_parquet_written_by_other_tools(tmp_path):
    path = tmp_path / "t.parquet"
    datasets.Dataset.from_list([{"question": "Q?", "answers": ["A", "B"], "relation": None, "rank": 3}]).to_parquet(path)
    (example,) = load_examples(path)
    assert (example.id, example.relation, example.answers, example.metadata) == ("t-1", "default", ("A", "B"), {"rank": 3})


def test_datasets_dataset_and_dataset_dict():
    dataset = datasets.Dataset.from_list([{**Q, "split": None}, {"question": "Q2?", "answers": ["A2"], "split": "test"}])
    assert [(ex.id, ex.split) for ex in load_examples(dataset)] == [("dataset-1", "train"), ("dataset-2", "test")]
    both = datasets.DatasetDict({"train": dataset.select([0]), "validation": dataset.select([0])})
    assert [(ex.id, ex.split) for ex in load_examples(both)] == [("train-1", "train"), ("validation-1", "dev")]
    assert [ex.id for ex in load_examples(both, split="dev")] == ["validation-1"]


def test_entityquestions_layout(write, tmp_path):
    write("relation_query_templates.json", '{"P1": "Where is [X]?"}')
    write("train/P1.train.jsonl", [Q, Q])
    write("dev/P1.dev.json", json.dumps([Q]))
    write("test/P2.test.jsonl", [Q])
    write("train/README.md", "not data")
    examples = load_examples(tmp_path)
    assert [(ex.id, ex.relation, ex.split) for ex in examples] == [
        ("P1-train-1", "P1", "train"), ("P1-train-2", "P1", "train"), ("P1-dev-1", "P1", "dev"), ("P2-test-1", "P2", "test"),
    ]
    assert [ex.id for ex in load_examples(tmp_path, split="dev")] == ["P1-dev-1"]
    assert [ex.id for ex in load_examples(tmp_path, relation="P2")] == ["P2-test-1"]


def test_real_entityquestions_relation(entityquestions):
    examples = load_examples(entityquestions, relation="P36")
    counts = {split: sum(ex.split == split for ex in examples) for split in ("train", "dev", "test")}
    total_lines = sum(len((entityquestions / s / f"P36.{s}.jsonl").read_text().splitlines()) for s in counts)
    assert sum(counts.values()) == total_lines and min(counts.values()) > 0
    assert examples[0].id == "P36-train-1" and examples[0].question.startswith("What is the capital of")


def test_garbage_collector_state_is_restored(write):
    good, bad = write("good.jsonl", [Q]), write("bad.jsonl", "{")
    assert gc.isenabled()
    load_examples(good)
    with pytest.raises(DataError):
        load_examples(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        load_examples(good)
        assert not gc.isenabled()  # a caller's own choice is left alone
    finally:
        gc.enable()
