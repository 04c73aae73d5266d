"""Bad input: every case raises DataError naming the file and the line (or element/row) and a fix."""

from __future__ import annotations

import json
import re

import datasets
import pytest

from knowtune.data import QAExample, load_examples, save_examples
from knowtune.errors import DataError, KnowtuneError

GOOD = '{"question": "Where was Ada born?", "answers": ["London"]}'


def _line(record: dict) -> str:
    return json.dumps(record)


# (file name, content, expected line, phrase in the message)
JSONL_CASES = [
    ("malformed.jsonl", GOOD + '\n{"question": "Q?"\n', 2, "malformed JSON"),
    ("not_object.jsonl", GOOD + '\n["Q?", "A"]\n', 2, "expected a JSON object, got an array"),
    ("no_question.jsonl", _line({"answers": ["A"]}), 1, "missing 'question'"),
    ("blank_question.jsonl", GOOD + "\n" + _line({"question": "  ", "answers": ["A"]}), 2, "'question' is empty"),
    ("number_question.jsonl", _line({"question": 3, "answers": ["A"]}), 1, "'question' must be a non-empty string, got a number"),
    ("no_answers.jsonl", _line({"question": "Q?"}), 1, "missing 'answers'"),
    ("empty_answers.jsonl", _line({"question": "Q?", "answers": []}), 1, "'answers' is empty"),
    ("blank_answer.jsonl", _line({"question": "Q?", "answers": " "}), 1, "'answers' is empty"),
    ("number_answers.jsonl", _line({"question": "Q?", "answers": 42}), 1, "'answers' must be a string or a list of strings, got a number"),
    ("mixed_answers.jsonl", _line({"question": "Q?", "answers": ["A", 1]}), 1, "'answers[1]' must be a non-empty string, got a number"),
    ("bad_split.jsonl", _line({"question": "Q?", "answers": "A", "split": "validation"}), 1, "unknown split 'validation'"),
    ("bad_id.jsonl", _line({"question": "Q?", "answers": "A", "id": ["x"]}), 1, "'id' must be a non-empty string, got an array"),
    ("bad_subject.jsonl", _line({"question": "Q?", "answers": "A", "subject": 5}), 1, "'subject' must be a non-empty string, got a number"),
    ("bad_metadata.jsonl", _line({"question": "Q?", "answers": "A", "metadata": [1]}), 1, "'metadata' must be an object, got an array"),
    ("lines_no_question.json", GOOD + '\n{"answers": ["A"]}\n', 2, "missing 'question'"),
    ("array_malformed.json", f"[\n {GOOD},\n {{\"question\": }}\n]", 3, "element 2: malformed JSON"),
    ("array_not_object.json", f"[\n {GOOD},\n 5\n]", 3, "element 2: expected a JSON object, got a number"),
    ("array_no_question.json", f"[\n {GOOD},\n {GOOD},\n {{\"answers\": [\"A\"]}}\n]", 4, "element 3: missing 'question'"),
    ("array_trailing_comma.json", f"[\n {GOOD},\n]", 3, "element 2: malformed JSON"),
    ("array_missing_comma.json", f"[\n {GOOD}\n {GOOD}\n]", 3, "element 1: expected ',' or ']' after it"),
    ("array_extra_data.json", f"[{GOOD}]\n\n[]", 1, "extra data after the closing ']'"),
]


@pytest.mark.parametrize(("name", "content", "line", "phrase"), JSONL_CASES, ids=[case[0] for case in JSONL_CASES])
def test_bad_record_names_file_and_line(write, name, content, line, phrase):
    path = write(name, content)
    with pytest.raises(DataError) as caught:
        load_examples(path)
    message = caught.value.render()
    assert f"{path}:{line}: {phrase}" in message
    assert caught.value.line == line and "Fix:" in message


def test_undecodable_bytes_name_the_line(write):
    path = write("latin1.jsonl", (GOOD + "\n" + GOOD + "\n").encode() + b'{"question": "Caf\xe9?", "answers": ["A"]}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:3: not valid UTF-8: byte 0xe9"):
        load_examples(path)


def test_duplicate_ids_name_both_lines(write):
    path = write("dup.jsonl", [{"id": "x", "question": "Q?", "answers": "A"}, {"id": "y", "question": "Q?", "answers": "A"}, {"id": "x", "question": "Q?", "answers": "A"}])
    with pytest.raises(DataError) as caught:
        load_examples(path)
    assert f"{path}:3: duplicate id 'x', first used at {path}:1" in str(caught.value)


@pytest.mark.parametrize("content", ["", "\n  \n", "[]", "[\n]\n"])
def test_empty_files(write, content):
    path = write("empty.json", content)
    with pytest.raises(DataError, match=r"empty\.json: the file holds no examples"):
        load_examples(path)


def test_missing_path_unsupported_extension_and_empty_directory(tmp_path, write):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"data\.txt: unsupported extension '\.txt'"):
        load_examples(write("data.txt", "question,answers\n"))
    with pytest.raises(DataError, match=r"data\.csv: the file holds no examples"):
        load_examples(write("data.csv", "question,answers\n"))
    (tmp_path / "folder" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"folder: no data files found") as caught:
        load_examples(tmp_path / "folder")
    assert "{train,dev,test}" in caught.value.render()


def test_entityquestions_layout_errors(tmp_path, write):
    write("eq/train/P1.train.jsonl", GOOD + "\n")
    bad = write("eq/dev/P1.dev.jsonl", GOOD + "\n" + '{"question": "Q?", "answers": ["A"], "relation": "P2"}\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}:2: relation 'P2' disagrees with 'P1'"):
        load_examples(tmp_path / "eq")
    misplaced = write("eq2/train/P1.dev.jsonl", GOOD + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(misplaced))}: file name does not follow <relation>\.train\.jsonl"):
        load_examples(tmp_path / "eq2")


def test_table_rows_are_named(tmp_path):
    rows = [{"question": "Q?", "answers": ["A"]}, {"question": "Q?", "answers": []}]
    with pytest.raises(DataError, match=r"<datasets\.Dataset>: row 2: 'answers' is empty"):
        load_examples(datasets.Dataset.from_list(rows))
    path = tmp_path / "t.parquet"
    datasets.Dataset.from_list(rows).to_parquet(path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: row 2: 'answers' is empty"):
        load_examples(path)
    with pytest.raises(DataError, match=r"split 'extra' is not one of train, dev, test"):
        load_examples(datasets.DatasetDict({"extra": datasets.Dataset.from_list(rows[:1])}))


def test_corrupt_parquet(write):
    path = write("broken.parquet", b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        load_examples(path)


def test_bad_arguments(tmp_path, write):
    with pytest.raises(KnowtuneError, match="unknown split 'validation'"):
        load_examples(write("f.jsonl", GOOD), split="validation")
    example = QAExample(id="a", relation="r", question="Q?", answers=("A",), split="train")
    with pytest.raises(DataError, match=r"out\.csv: cannot write examples as '\.csv'"):
        save_examples([example], tmp_path / "out.csv")
