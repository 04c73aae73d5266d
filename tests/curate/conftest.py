"""Fixtures of the curation tests: the hand-made annotations of :mod:`curate_annotations`."""

from __future__ import annotations

from pathlib import Path

import pytest
from curate_annotations import annotation_records, write_annotation_dir


@pytest.fixture(scope="session")
def annotated():
    """The hand-made annotations as AnnotatedExample objects (train and dev)."""
    from knowtune.curate import AnnotatedExample

    return [AnnotatedExample(**{k: r[k] for k in ("id", "relation", "split", "question", "answers", "category", "p0", "ps")})
            for r in annotation_records()]


@pytest.fixture(scope="session")
def train(annotated):
    return [e for e in annotated if e.split == "train"]


@pytest.fixture
def annotation_dir(tmp_path: Path) -> Path:
    return write_annotation_dir(tmp_path / "annotations", annotation_records())
