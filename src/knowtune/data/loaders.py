"""Read QA datasets into :class:`QAExample` lists, and write them back.

Accepted sources (:func:`load_examples`):

- a ``.jsonl`` file, one JSON object per line (blank lines are skipped);
- a ``.json`` file holding a JSON array of objects (or, like EntityQuestions' own files
  sometimes are, one object per line);
- a ``.parquet`` file, one row per example (as written by :func:`save_examples`);
- a ``.csv`` or ``.tsv`` file with a header row;
- a ``datasets.Dataset``, or a ``datasets.DatasetDict`` whose keys are splits
  (``validation`` is read as ``dev``), given as objects, as folders written by
  ``save_to_disk``, or as ``hf:NAME[:CONFIG]`` (``datasets.load_dataset``, local cache only);
- a directory in the EntityQuestions layout ``<dir>/{train,dev,test}/<relation>.<split>.json[l]``,
  where the file name gives each record's relation and split
  (``relation_query_templates.json`` beside the split folders is not data and is ignored).

A record needs ``question`` (string) and ``answers`` (a string or a list of strings; a single
``answer`` string also serves), or chat ``messages`` (:mod:`knowtune.data.formats`: the last
user turn is the question, the assistant reply after it the answer), and
may carry ``id``, ``relation``, ``split``, ``subject``, ``object`` and ``metadata`` (an
object, or a JSON string holding one, as Parquet stores it); ``null`` counts as absent,
and any other key is kept in ``metadata`` (an explicit ``metadata`` entry wins on a
clash). Defaults: relation ``"default"``; split the ``split`` argument, else ``"train"``;
id ``f"{relation}-{split}-{n}"`` in the EntityQuestions layout, else ``f"{stem}-{n}"``,
where ``stem`` is the file name without extension (``"dataset"`` for a Dataset, the key
for a DatasetDict) and ``n`` the 1-based line (JSONL), array element (JSON) or row
(Parquet, Dataset).

Every problem raises :class:`~knowtune.errors.DataError` naming the file, the line (or
the element or row) and the fix; ids must be unique across everything loaded.
"""

from __future__ import annotations

import gc
import json
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from knowtune.data.formats import (HF_PREFIX, ChatFormatError, FieldMap, delimited_rows, is_saved_dataset, load_hub_dataset,
                                   load_saved_dataset, normalise_record)
from knowtune.data.schema import SPLITS, QAExample
from knowtune.errors import DataError, KnowtuneError
from knowtune.io import atomic_write_bytes, atomic_write_jsonl

_EQ_NAME = re.compile(r"(?P<relation>.+)\.(?P<split>train|dev|test)\.jsonl?")
_KNOWN_KEYS = frozenset({"id", "relation", "question", "answers", "split", "subject", "object", "metadata"})
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_EXAMPLE = '{"question": "Where was Ada Lovelace born?", "answers": ["London"]}'
_FORMATS = (".jsonl, .json (an array of objects), .parquet, .csv or .tsv, a `datasets` save_to_disk folder, hf:NAME (a cached "
            "Hugging Face dataset), or an EntityQuestions folder <dir>/{train,dev,test}/<relation>.<split>.jsonl")

_Row = tuple[int, "int | None", Any]  # (n for ids and messages, file line or None, record)


@dataclass(frozen=True)
class _Origin:
    """Where a batch of records comes from, and what its layout fixes for them."""

    path: str  # shown in error messages
    id_prefix: str
    unit: str = "line"  # "line" (JSONL), "element" (JSON array) or "row" (Parquet, Dataset)
    relation: str | None = None  # set by the layout (EntityQuestions file name)
    split: str | None = None  # set by the layout (EntityQuestions folder, DatasetDict key)

    def fail(self, n: int, line: int | None, message: str, fix: str | None = None) -> DataError:
        prefix = "" if self.unit == "line" else f"{self.unit} {n}: "
        return DataError(self.path, prefix + message, line=line, fix=fix)

    def where(self, n: int, line: int | None) -> str:
        return f"{self.path}:{line}" if line is not None else f"{self.path} {self.unit} {n}"


def load_examples(source: Any, *, split: str | None = None, relation: str | None = None,
                  fields: FieldMap | dict[str, str | None] | None = None) -> list[QAExample]:
    """Load and validate QA examples from ``source`` (see the module docstring for formats).

    ``split`` is the default split of records that carry none, and with ``relation`` also
    a filter: only matching examples are returned (possibly none). ``fields`` names the
    record keys that hold each field when they differ from knowtune's
    (:class:`~knowtune.data.formats.FieldMap`).
    """
    try:
        field_map = FieldMap.of(fields)
    except ValueError as error:
        raise KnowtuneError(f"data fields: {error}", fix="map question, answers, answer, relation, split or id") from None
    if split is not None and split not in SPLITS:
        raise KnowtuneError(f"unknown split {split!r}", fix=f"use one of {', '.join(SPLITS)}")
    examples: list[QAExample] = []
    seen: dict[str, str] = {}
    with _garbage_collection_paused():
        for origin, rows in _batches(source, split, relation):
            for n, line, record in rows:
                example = _to_example(record, origin, n, line, split or "train", field_map)
                if example.id in seen:
                    message = f"duplicate id {example.id!r}, first used at {seen[example.id]}"
                    raise origin.fail(n, line, message, fix="give every example a unique id, or drop the id fields to get generated ones")
                seen[example.id] = origin.where(n, line)
                examples.append(example)
    return [ex for ex in examples if (split is None or ex.split == split) and (relation is None or ex.relation == relation)]


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: loading makes no cycles, and the collections that
    hundreds of thousands of new objects trigger took 60% of the time on EntityQuestions."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def save_examples(examples: Iterable[QAExample], path: str | Path) -> None:
    """Write examples atomically as ``.jsonl`` or ``.parquet`` (chosen by the suffix).

    The file loads back with :func:`load_examples` to equal examples. An empty list writes
    an empty file, which :func:`load_examples` rejects as empty.
    """
    path = Path(path)
    records = [example.to_record() for example in examples]
    if path.suffix == ".jsonl":
        atomic_write_jsonl(path, records)
    elif path.suffix == ".parquet":
        atomic_write_bytes(path, _parquet_bytes(records))
    else:
        suffix = path.suffix or "a file without extension"
        raise DataError(path, f"cannot write examples as {suffix!r}", fix="name the output *.jsonl or *.parquet")


def read_utf8(path: Path) -> str:
    """The text of ``path``; a missing file or undecodable bytes raise :class:`DataError` (with the line)."""
    if not path.is_file():
        raise DataError(path, "no such file" if not path.exists() else "not a file", fix="check the path")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        message = f"not valid UTF-8: byte {data[error.start]:#04x} cannot be decoded"
        raise DataError(path, message, line=line, fix="re-save the file as UTF-8") from None


def _batches(source: Any, split: str | None, relation: str | None) -> Iterator[tuple[_Origin, Iterable[_Row]]]:
    datasets = sys.modules.get("datasets")  # a Dataset object implies the module is imported
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        yield from _dataset_dict_batches(source)
    elif datasets is not None and isinstance(source, datasets.Dataset):
        yield _Origin("<datasets.Dataset>", "dataset", unit="row"), _numbered(source.to_list())
    elif isinstance(source, (str, Path)) and str(source).startswith(HF_PREFIX):
        yield from _batches(load_hub_dataset(str(source)), split, relation)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if is_saved_dataset(path):
            yield from _batches(load_saved_dataset(path), split, relation)
            return
        if not path.exists():
            raise DataError(path, "no such file or directory", fix=f"check the path; expected {_FORMATS}")
        if path.is_dir():
            yield from _entityquestions_batches(path, split, relation)
        else:
            unit, rows = _file_rows(path)
            yield _Origin(str(path), path.stem, unit=unit), rows
    else:
        expected = "a path, a datasets.Dataset or a datasets.DatasetDict"
        raise TypeError(f"load_examples() takes {expected}, not {type(source).__name__}")


def _dataset_dict_batches(source: Any) -> Iterator[tuple[_Origin, Iterable[_Row]]]:
    for key, dataset in source.items():
        split = "dev" if key == "validation" else key
        path = f"<datasets.DatasetDict[{key!r}]>"
        if split not in SPLITS:
            fix = "rename the split, e.g. DatasetDict({'dev': d['val']})"
            raise DataError(path, f"split {key!r} is not one of {', '.join(SPLITS)}", fix=fix)
        yield _Origin(path, key, unit="row", split=split), _numbered(dataset.to_list())


def _entityquestions_batches(root: Path, split: str | None, relation: str | None) -> Iterator[tuple[_Origin, list[_Row]]]:
    found = False
    for folder in SPLITS:
        if not (root / folder).is_dir():
            continue
        for path in sorted((root / folder).iterdir()):
            if path.suffix not in (".json", ".jsonl"):
                continue
            match = _EQ_NAME.fullmatch(path.name)
            if match is None or match["split"] != folder:
                message = f"file name does not follow <relation>.{folder}{path.suffix}"
                raise DataError(path, message, fix=f"rename it, e.g. P36.{folder}.jsonl")
            found = True
            if (split is None or split == folder) and (relation is None or relation == match["relation"]):
                unit, rows = _file_rows(path)
                yield _Origin(str(path), f"{match['relation']}-{folder}", unit, match["relation"], folder), rows
    if not found:
        raise DataError(root, "no data files found", fix=f"expected {_FORMATS}")


def _file_rows(path: Path) -> tuple[str, list[_Row]]:
    """The records of one file, numbered by ``unit``: "line", "element" or "row"."""
    if path.suffix == ".parquet":
        unit, rows = "row", _parquet_rows(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        unit, rows = "line", delimited_rows(path, read_utf8(path))
    elif path.suffix in (".jsonl", ".json"):
        text = read_utf8(path)
        if text.lstrip().startswith("["):
            unit, rows = "element", list(_json_array_rows(path, text))
        else:
            unit, rows = "line", list(_jsonl_rows(path, text))
    else:
        raise DataError(path, f"unsupported extension {path.suffix or '(none)'!r}", fix=f"use {_FORMATS}")
    if not rows:
        raise DataError(path, "the file holds no examples", fix=f"add records such as {_EXAMPLE}, or remove the file")
    return unit, rows


def _numbered(records: list[Any]) -> list[_Row]:
    return [(n, None, record) for n, record in enumerate(records, 1)]


def _jsonl_rows(path: Path, text: str) -> Iterator[_Row]:
    for line, content in enumerate(text.split("\n"), 1):
        if not content.strip():
            continue
        try:
            yield line, line, json.loads(content)
        except json.JSONDecodeError as error:
            message = f"malformed JSON: {error.msg} (column {error.colno})"
            raise DataError(path, message, line=line, fix=f"write one complete JSON object per line, e.g. {_EXAMPLE}") from None


def _json_array_rows(path: Path, text: str) -> Iterator[_Row]:
    """Decode a JSON array element by element, to know the line each element starts on."""
    decoder, fix = json.JSONDecoder(), "the file must hold one JSON array of objects"
    pos = _skip_whitespace(text, text.index("[") + 1)
    n, line, counted, closed = 0, 1, 0, text.startswith("]", pos)
    while not closed:
        n += 1
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            message = f"element {n}: malformed JSON: {error.msg} (column {error.colno})"
            raise DataError(path, message, line=error.lineno, fix=fix) from None
        yield n, line, record
        pos = _skip_whitespace(text, pos)
        closed = text.startswith("]", pos)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
        elif not closed:
            raise DataError(path, f"element {n}: expected ',' or ']' after it", line=text.count("\n", 0, pos) + 1, fix=fix)
    if text[pos + 1 :].strip():
        raise DataError(path, "extra data after the closing ']'", line=text.count("\n", 0, pos) + 1, fix=fix)


def _skip_whitespace(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _parquet_rows(path: Path) -> list[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        fix = "write it with knowtune.data.save_examples or pandas.DataFrame.to_parquet"
        raise DataError(path, f"not a readable Parquet file: {error}", fix=fix) from None
    return _numbered(records)


def _parquet_bytes(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pa.string()
    schema = pa.schema(
        [("id", text), ("relation", text), ("question", text), ("answers", pa.list_(text)), ("split", text),
         ("subject", text), ("object", text), ("metadata", text)]  # metadata as a JSON string: its keys vary
    )
    rows = [{**record, "metadata": json.dumps(record["metadata"], ensure_ascii=False, sort_keys=True)} for record in records]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue().to_pybytes()


def _to_example(record: Any, origin: _Origin, n: int, line: int | None, default_split: str,
                field_map: FieldMap = FieldMap()) -> QAExample:
    """Validate one record and fill in the defaults described in the module docstring."""
    if not isinstance(record, dict):
        fix = f"write each example as an object, e.g. {_EXAMPLE}"
        raise origin.fail(n, line, f"expected a JSON object, got {_kind(record)}", fix=fix)
    raw_keys = sorted(record)
    try:
        record = normalise_record(record, field_map)
    except ChatFormatError as error:
        raise origin.fail(n, line, f"chat record: {error}",
                          fix='write {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]}') from None
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        message = _bad_field("question", question, "a non-empty string")
        raise origin.fail(n, line, message, fix=_mapping_fix("question", field_map.question, raw_keys))
    if record.get("answers") is None:
        raise origin.fail(n, line, "missing 'answers' (or 'answer')", fix=_mapping_fix("answer", field_map.answers, raw_keys))
    fields = {"question": question, "answers": _answers(record.get("answers"), origin, n, line)}
    if len(record) > 2 or origin.relation is None:  # the fast path above suits bare EntityQuestions records
        fields.update(_optional_fields(record, origin, n, line, default_split))
    else:
        fields.update(relation=origin.relation, split=origin.split, id=f"{origin.id_prefix}-{n}")
    try:
        return QAExample(**fields)
    except ValidationError as error:  # a schema rule the checks above do not cover
        first = error.errors()[0]
        raise origin.fail(n, line, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _mapping_fix(field: str, key: str, keys: list[str]) -> str:
    """The fix for a record without ``field``: name the keys it has and the mapping option."""
    if key in keys or not keys:
        return f"every example needs a {field}, e.g. {_EXAMPLE}"
    return (f"the record has keys {', '.join(keys)}: name the one holding the {field} with --{field}-field KEY "
            f"(config key data_fields.{field}), or write records such as {_EXAMPLE} or chat 'messages'")


def _optional_fields(record: dict, origin: _Origin, n: int, line: int | None, default_split: str) -> dict[str, Any]:
    split = _layout_field(record, "split", origin, n, line) or default_split
    if split not in SPLITS:
        raise origin.fail(n, line, f"unknown split {split!r}", fix=f"use one of {', '.join(SPLITS)}")
    raw_id = record.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    return {
        "id": _optional_text(record, "id", origin, n, line, value=raw_id) or f"{origin.id_prefix}-{n}",
        "relation": _layout_field(record, "relation", origin, n, line) or "default",
        "split": split,
        "subject": _optional_text(record, "subject", origin, n, line),
        "object": _optional_text(record, "object", origin, n, line),
        "metadata": _metadata(record, origin, n, line),
    }


def _bad_field(key: str, value: Any, expected: str) -> str:
    if value is None:
        return f"missing {key!r}"
    if isinstance(value, str) or (isinstance(value, list) and not value):
        return f"{key!r} is empty"
    return f"{key!r} must be {expected}, got {_kind(value)}"


def _optional_text(record: dict, key: str, origin: _Origin, n: int, line: int | None, value: Any = ...) -> str | None:
    value = record.get(key) if value is ... else value
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    message = _bad_field(key, value, "a non-empty string")
    raise origin.fail(n, line, message, fix=f"give {key!r} a non-empty string or remove it")


def _layout_field(record: dict, key: str, origin: _Origin, n: int, line: int | None) -> str | None:
    """A relation or split, which must agree with what the layout (file name, folder, key) says."""
    value = _optional_text(record, key, origin, n, line)
    fixed = getattr(origin, key)
    if value is not None and fixed is not None and value != fixed:
        message = f"{key} {value!r} disagrees with {fixed!r} given by the file's place"
        raise origin.fail(n, line, message, fix=f"remove the {key!r} field or move the record to the matching file")
    return fixed or value


def _answers(value: Any, origin: _Origin, n: int, line: int | None) -> tuple[str, ...]:
    answers = (value,) if isinstance(value, str) and value.strip() else value
    fix = 'write answers as a string or a list of strings, e.g. "answers": ["London"]'
    if not isinstance(answers, (list, tuple)) or not answers:
        raise origin.fail(n, line, _bad_field("answers", value, "a string or a list of strings"), fix=fix)
    for i, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise origin.fail(n, line, _bad_field(f"answers[{i}]", answer, "a non-empty string"), fix=fix)
    return tuple(answers)


def _metadata(record: dict, origin: _Origin, n: int, line: int | None) -> dict[str, Any]:
    value = record.get("metadata")
    if isinstance(value, str):  # Parquet stores metadata as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if value is not None and not isinstance(value, dict):
        message = f"'metadata' must be an object, got {_kind(value)}"
        raise origin.fail(n, line, message, fix="make metadata a JSON object or remove it")
    extras = {key: item for key, item in record.items() if key not in _KNOWN_KEYS}
    return {**extras, **(value or {})}


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
