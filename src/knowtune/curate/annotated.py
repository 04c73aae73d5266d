"""Read the output of ``knowtune annotate`` back as :class:`AnnotatedExample` objects.

``annotations.jsonl`` holds one JSON object per audited example, as written by
:func:`knowtune.slick.results.write_outputs` (record built in
``knowtune.slick.annotate._Scorer.row``): ``id``, ``relation``, ``split``, ``question``,
``answers``, ``category`` (SliCK, Gekhman et al. 2024 section 3), ``p0``, ``ps`` (``null``
in lazy mode) and audit details that curation does not need (``greedy_answers``,
``samples``, ...). Records from other tools may leave out ``question``/``answers``/``split``;
then the original dataset (``data``) supplies them, joined by ``id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from knowtune.data.schema import QAExample
from knowtune.errors import DataError, KnowtuneError
from knowtune.slick.categories import CATEGORIES

Category = Literal["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]
ANNOTATIONS_FILE = "annotations.jsonl"
_ANNOTATE_FIX = "pass the --out directory of a finished `knowtune annotate` run"
_CHECKED_FIELDS = ("relation", "question", "answers", "split")  # must agree with --data when both give them


class AnnotatedExample(QAExample):
    """A QA example with its SliCK category and the P0 / Ps estimates behind it."""

    category: Category
    p0: float | None = None
    ps: float | None = None

    @property
    def known(self) -> bool:
        """Known = HighlyKnown, MaybeKnown or WeaklyKnown."""
        return self.category != "Unknown"

    def to_record(self) -> dict[str, Any]:
        """The plain :class:`QAExample` record written to ``train.jsonl``: category, p0 and ps move to metadata."""
        return {
            "id": self.id, "relation": self.relation, "question": self.question, "answers": list(self.answers),
            "split": self.split, "subject": self.subject, "object": self.object,
            "metadata": {**self.metadata, "category": self.category, "p0": self.p0, "ps": self.ps},
        }

    def to_example(self) -> QAExample:
        """The record of :meth:`to_record` as a :class:`QAExample` (already validated, so not re-validated)."""
        record = self.to_record()
        return QAExample.model_construct(**{**record, "answers": tuple(record["answers"])})


def load_annotated(annotation_dir: str | Path, data: str | Path | None = None) -> list[AnnotatedExample]:
    """The annotated examples of an annotate output dir, in file order.

    With ``data`` (any source :func:`knowtune.data.load_examples` reads, or ``embedded``)
    each record is joined to the dataset example with the same ``id``, which then supplies
    every field (subject, object and metadata included); fields the record also holds must
    agree, so stale annotations of a changed dataset are caught. Every problem raises
    :class:`~knowtune.errors.KnowtuneError` naming the file, line and fix.
    """
    directory = Path(annotation_dir)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "annotation directory not found"
        raise KnowtuneError(f"{directory}: {problem}", fix=_ANNOTATE_FIX)
    path = directory / ANNOTATIONS_FILE
    if not path.is_file():
        raise DataError(path, "no such file", fix=f"{_ANNOTATE_FIX}; it writes {ANNOTATIONS_FILE}")
    _check_complete(directory)
    rows = _read_records(path)
    dataset = _dataset_index(data) if data is not None else None
    examples: list[AnnotatedExample] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    for line, record in rows:
        example = _annotated(record, path, line, dataset, missing)
        if example is None:
            continue
        if example.id in seen:
            raise DataError(path, f"duplicate id {example.id!r}, first on line {seen[example.id]}", line=line,
                            fix="keep one record per example (merge shards with `knowtune annotate merge`)")
        seen[example.id] = line
        examples.append(example)
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise KnowtuneError(f"{path}: {len(missing)} annotated ids are not in --data {data}: {shown}",
                            fix="pass the dataset that was annotated as --data")
    return examples


def annotation_source(annotation_dir: str | Path) -> dict[str, Any]:
    """Where the annotations come from: the dir, and the protocol hash and model fingerprint of ``protocol.json``."""
    directory = Path(annotation_dir)
    source: dict[str, Any] = {"annotations": str(directory), "protocol_hash": None, "model_fingerprint": None}
    header = directory / "protocol.json"
    if header.is_file():
        saved = _read_json(header)
        source["protocol_hash"] = saved.get("protocol_hash")
        source["model_fingerprint"] = saved.get("model_fingerprint")
    return source


def _check_complete(directory: Path) -> None:
    summary = directory / "summary.json"
    if summary.is_file() and _read_json(summary).get("complete") is False:
        raise KnowtuneError(f"{directory}: the audit is incomplete (summary.json says complete: false)",
                            fix="rerun the same `knowtune annotate` command to finish it (it resumes), or merge every shard")


def _read_json(path: Path) -> dict[str, Any]:
    from knowtune.data.loaders import read_utf8

    try:
        value = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON: {error.msg}", line=error.lineno, fix="rerun `knowtune annotate` to rewrite it") from None
    if not isinstance(value, dict):
        raise DataError(path, "expected a JSON object", fix="rerun `knowtune annotate` to rewrite it")
    return value


def _read_records(path: Path) -> list[tuple[int, Any]]:
    from knowtune.data.loaders import read_utf8

    rows = []
    for line, content in enumerate(read_utf8(path).split("\n"), 1):
        if not content.strip():
            continue
        try:
            rows.append((line, json.loads(content)))
        except json.JSONDecodeError as error:
            raise DataError(path, f"malformed JSON: {error.msg} (column {error.colno})", line=line,
                            fix="rerun `knowtune annotate` (it rewrites annotations.jsonl from its database)") from None
    if not rows:
        raise DataError(path, "holds no annotated examples", fix=_ANNOTATE_FIX)
    return rows


def _dataset_index(data: str | Path) -> dict[str, QAExample]:
    from knowtune.data import load_examples
    from knowtune.world.embedded import resolve_data_path

    return {example.id: example for example in load_examples(resolve_data_path(data))}


def _annotated(record: Any, path: Path, line: int, dataset: dict[str, QAExample] | None,
               missing: list[str]) -> AnnotatedExample | None:
    """One record as an :class:`AnnotatedExample`; ``None`` (id appended to ``missing``) when not in ``dataset``."""
    if not isinstance(record, dict):
        raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=line, fix=_ANNOTATE_FIX)
    example_id = record.get("id")
    if not isinstance(example_id, str) or not example_id:
        raise DataError(path, "missing 'id' (a non-empty string)", line=line, fix=_ANNOTATE_FIX)
    category = record.get("category")
    if category not in CATEGORIES:
        raise DataError(path, f"example {example_id!r}: unknown category {category!r}, expected one of {', '.join(CATEGORIES)}",
                        line=line, fix="use annotations written by `knowtune annotate`")
    scores = {key: _probability(record, key, path, line) for key in ("p0", "ps")}
    if dataset is not None:
        base = dataset.get(example_id)
        if base is None:
            missing.append(example_id)
            return None
        fields = _joined_fields(record, base, path, line)
    else:
        fields = _record_fields(record, path, line)
    try:
        return AnnotatedExample(**fields, category=category, **scores)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise DataError(path, f"example {example_id!r}: {problems}", line=line, fix=_ANNOTATE_FIX) from None


def _probability(record: dict[str, Any], key: str, path: Path, line: int) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataError(path, f"example {record['id']!r}: {key!r} must be a number in [0, 1] or null, got {value!r}", line=line,
                        fix=_ANNOTATE_FIX)
    return float(value)


def _record_fields(record: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    """QAExample fields from the record alone (no --data)."""
    absent = [key for key in ("relation", "question", "answers") if record.get(key) is None]
    if absent:
        raise DataError(path, f"example {record['id']!r} lacks {', '.join(map(repr, absent))}", line=line,
                        fix="pass --data with the annotated dataset, so curate can join the records to it by id")
    answers = record["answers"]
    fields = {
        "id": record["id"], "relation": record["relation"], "question": record["question"],
        "answers": (answers,) if isinstance(answers, str) else answers, "split": record.get("split") or "train",
    }
    fields.update({key: record[key] for key in ("subject", "object") if record.get(key) is not None})
    return fields


def _joined_fields(record: dict[str, Any], base: QAExample, path: Path, line: int) -> dict[str, Any]:
    """QAExample fields from the dataset; what the record also states must agree with it."""
    fields = base.model_dump()
    for key in _CHECKED_FIELDS:
        if record.get(key) is None:
            continue
        mine = record[key]
        if key == "answers":
            mine = (mine,) if isinstance(mine, str) else tuple(mine) if isinstance(mine, list) else mine
        if mine != fields[key]:
            raise DataError(path, f"example {base.id!r}: {key} {mine!r} here but {fields[key]!r} in --data", line=line,
                            fix="the dataset changed since the audit: rerun `knowtune annotate` on it, or pass the dataset that was annotated")
    return fields
