"""The shapes users bring their QA data in, turned into knowtune's records.

:func:`knowtune.data.load_examples` reads every source into plain records first (one dict
per example, numbered by line, element or row) and this module maps each record onto the
:class:`~knowtune.data.QAExample` fields:

- **field names** (:class:`FieldMap`): ``question``, ``answers`` (a list, or a single
  ``answer`` string), ``relation``, ``split`` and ``id`` may live under other keys, e.g.
  ``FieldMap(question="prompt", answer="completion")``;
- **chat records** (``{"messages": [{"role": ..., "content": ...}, ...]}``, the format TRL,
  Axolotl and LLaMA-Factory train on): the last user turn is the question and the
  assistant reply after it the answer; system prompts and earlier turns are kept in
  ``metadata`` (``system``, ``history``);
- **CSV and TSV** files (a header row; an answers cell holding a JSON array is a list of
  aliases, any other text is one answer);
- **``datasets`` folders** written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``,
  whose keys are the splits) and **dataset names** ``hf:NAME[:CONFIG]`` read with
  ``datasets.load_dataset`` from the local cache (no network is assumed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from knowtune.errors import DataError

HF_PREFIX = "hf:"
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}


class DataFields(BaseModel):
    """The ``data_fields`` config block: which record key holds each field (unset: knowtune's own name)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    question: str | None = None
    """Record key of the question [question]."""
    answer: str | None = None
    """Record key of the gold answer(s), a string or a list [answers, or answer]."""
    relation: str | None = None
    """Record key of the relation (exemplars are drawn per relation) [relation]."""
    split: str | None = None
    """Record key of the split: train, dev or test [split]."""
    id: str | None = None
    """Record key of the example id [id]."""

    def field_map(self) -> "FieldMap":
        """The :class:`FieldMap` these keys give (``answer`` maps both the list and the string form)."""
        values = self.model_dump(exclude_none=True)
        if "answer" in values:
            values["answers"] = values["answer"]
        return FieldMap.of(values)


#: ``--question-field`` etc.: the flag names of the :class:`DataFields` keys.
FIELD_FLAG_ALIASES = {f"data_fields.{name}": [f"--{name}-field"] for name in ("question", "answer", "relation", "split", "id")}


@dataclass(frozen=True)
class FieldMap:
    """Which record key holds each field (``answer`` is the single-string form of ``answers``)."""

    question: str = "question"
    answers: str = "answers"
    answer: str = "answer"
    relation: str = "relation"
    split: str = "split"
    id: str = "id"

    @classmethod
    def of(cls, mapping: dict[str, str | None] | FieldMap | DataFields | None) -> FieldMap:
        """A FieldMap from ``{field: key}`` or a :class:`DataFields` block (``None`` values keep the default)."""
        if isinstance(mapping, DataFields):
            return mapping.field_map()
        if mapping is None or isinstance(mapping, FieldMap):
            return mapping or cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{key: value for key, value in mapping.items() if value})

    def is_default(self) -> bool:
        return self == FieldMap()


def normalise_record(record: Any, field_map: FieldMap) -> Any:
    """``record`` with its fields under knowtune's own names (chat turns unfolded)."""
    if not isinstance(record, dict):
        return record
    if "messages" in record and field_map.question not in record:
        record = _from_messages(record)
    if field_map.is_default() and "answer" not in record:
        return record
    out = dict(record)
    for name, key in (("question", field_map.question), ("relation", field_map.relation), ("split", field_map.split), ("id", field_map.id)):
        if key != name and key in out:
            out[name] = out.pop(key)
    if field_map.answers != "answers" and field_map.answers in out:
        out["answers"] = out.pop(field_map.answers)
    if out.get("answers") is None and field_map.answer in out:
        out["answers"] = out.pop(field_map.answer)
    return out


class ChatFormatError(ValueError):
    """A chat record that cannot be read as one question and its answer."""


def _from_messages(record: dict) -> dict:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("'messages' must be a non-empty list of {'role', 'content'} objects")
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ChatFormatError(f"messages[{i}] must be an object with a string 'content' and a 'role'")
        role = str(turn.get("role", turn.get("from", ""))).lower()
        turns.append((_ROLE_ALIASES.get(role, role), turn["content"]))
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None:
        raise ChatFormatError("no 'user' turn: the last user turn is the question")
    replies = [content for role, content in turns[last_user + 1:] if role == "assistant"]
    if not replies:
        raise ChatFormatError("no 'assistant' turn after the last user turn: it is the answer")
    out = {key: value for key, value in record.items() if key != "messages"}
    out["question"] = turns[last_user][1]
    out["answers"] = replies[0]
    metadata = dict(out.get("metadata") or {}) if isinstance(out.get("metadata"), dict) else {}
    system = [content for role, content in turns[:last_user] if role == "system"]
    history = [{"role": role, "content": content} for role, content in turns[:last_user] if role != "system"]
    if system:
        metadata["system"] = "\n".join(system)
    if history:
        metadata["history"] = history
    if metadata:
        out["metadata"] = metadata
    return out


def delimited_rows(path: Path, text: str) -> list[tuple[int, int, dict]]:
    """(n, line, record) per data row of a CSV (``,``) or TSV (tab) file with a header row."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames or not any(name.strip() for name in reader.fieldnames):
        raise DataError(path, "no header row", line=1, fix="start the file with a header such as question,answer")
    rows, n = [], 0
    try:
        for record in reader:
            if None in record:
                raise DataError(path, f"more cells than the {len(reader.fieldnames)} header columns", line=reader.line_num,
                                fix="quote cells that contain the delimiter")
            if not any((value or "").strip() for value in record.values()):
                continue
            n += 1
            rows.append((n, reader.line_num, {key: _cell(value) for key, value in record.items() if value not in (None, "")}))
    except csv.Error as error:
        raise DataError(path, f"malformed {path.suffix[1:].upper()}: {error}", line=reader.line_num, fix="check the quoting") from None
    return rows


def _cell(value: str) -> Any:
    """A JSON array or object cell is decoded (answer aliases, metadata); other text stays text."""
    stripped = value.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def load_saved_dataset(path: Path):
    """The ``Dataset`` or ``DatasetDict`` saved at ``path``."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises several types for damaged folders
        raise DataError(path, f"not a readable `datasets` folder: {type(error).__name__}: {error}",
                        fix="write it with Dataset.save_to_disk / DatasetDict.save_to_disk") from None


def load_hub_dataset(spec: str):
    """``hf:NAME[:CONFIG]`` through ``datasets.load_dataset``, from the local cache only."""
    name, _, config = spec[len(HF_PREFIX):].partition(":")
    if not name:
        raise DataError(spec, "no dataset name after 'hf:'", fix="write hf:NAME or hf:NAME:CONFIG, e.g. hf:my-org/my-qa")
    import datasets

    with _offline():
        try:
            return datasets.load_dataset(name, config or None)
        except Exception as error:  # not cached, unknown config, ...
            raise DataError(spec, f"dataset {name!r} could not be loaded from the local Hugging Face cache "
                            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
                            fix="download it once where there is network (datasets.load_dataset), or save it with "
                                "save_to_disk and pass that folder") from None


@contextlib.contextmanager
def _offline():
    """``datasets`` and ``huggingface_hub`` in offline mode for the block: no request (and no
    retries, 24 s of them without a network) for a dataset that is not cached. Both libraries
    read their flags at import, so the module constants are set as well as the variables."""
    import datasets
    import huggingface_hub.constants as hub

    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = [(module, name, getattr(module, name)) for module in (datasets.config, hub) for name in names if hasattr(module, name)]
    os.environ.update(dict.fromkeys(names, "1"))
    for module, name, _ in saved:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
