"""Fixtures for the data tests: the shared EntityQuestions copy and a file writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# /work/shared is the sibling of the repository root (also in CI).
ENTITYQUESTIONS = (Path(__file__).parents[2] / "../shared/datasets/entityquestions").resolve()


@pytest.fixture
def entityquestions() -> Path:
    """The shared EntityQuestions copy: <dir>/{train,dev,test}/<relation>.<split>.jsonl."""
    return ENTITYQUESTIONS


@pytest.fixture
def write(tmp_path: Path):
    """write(name, content) -> path: str content as UTF-8 text, bytes as is, a list as JSON lines."""

    def _write(name: str, content: str | bytes | list) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = "".join(json.dumps(record) + "\n" for record in content)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return path

    return _write
