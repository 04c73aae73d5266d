"""Fixtures of the SliCK tests: a tiny QA world and a tiny Llama trained on it (seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slick_tinyworld import make_model, make_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Path, list[dict]]:
    """(JSONL path, records) of the tiny world: 3 relations, train/dev/test splits."""
    root = tmp_path_factory.mktemp("slick_world")
    records = make_world(root / "data.jsonl")
    return root / "data.jsonl", records


@pytest.fixture(scope="session")
def tiny_model(tiny_world, tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64, byte-level BPE, no pad token) trained briefly on the world."""
    _, records = tiny_world
    return make_model(records, tmp_path_factory.mktemp("slick_model"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model):
    """(model, tokenizer) of the tiny model in fp32 on CPU."""
    from knowtune.models import load

    return load(tiny_model, "cpu", "float32")
