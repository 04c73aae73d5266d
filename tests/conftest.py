"""Shared fixtures: paths to the shared EntityQuestions data and a tiny pretrained model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_EQ = REPO.parent / "shared" / "datasets" / "entityquestions"


@pytest.fixture(scope="session")
def entityquestions_dir() -> Path:
    assert SHARED_EQ.is_dir(), f"{SHARED_EQ} is missing: the shared EntityQuestions data sits beside the repo"
    return SHARED_EQ


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny model pretrained by knowtune on a tiny synthetic world (seconds)."""
    from knowtune.pretrain import pretrain
    from knowtune.testing import tiny_pretrain_config, tiny_world

    out = tmp_path_factory.mktemp("tiny-model")
    pretrain(tiny_world(), tiny_pretrain_config(), out, log=lambda _: None)
    return out


def pytest_configure(config):
    # Tiny models train fastest single-threaded, and CI machines have 2 cores.
    import torch

    torch.set_num_threads(1)
