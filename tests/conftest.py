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


def tiny_pretrain_config(**overrides):
    """A pretraining config small enough to train in seconds on one core."""
    from knowtune.pretrain import PretrainConfig

    values = dict(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seq_len=32, batch_size=8, epochs=1.0, warmup_steps=2, save_every_steps=5)
    values.update(overrides)
    return PretrainConfig.model_validate(values)


def tiny_world(num_entities: int = 30, relations: int = 2, seed: int = 0):
    from knowtune.world.synthetic import SyntheticWorldConfig, generate_synthetic_world

    return generate_synthetic_world(SyntheticWorldConfig(num_entities=num_entities, relations=relations, seed=seed))


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny model pretrained by knowtune on a tiny synthetic world (seconds)."""
    from knowtune.pretrain import pretrain

    out = tmp_path_factory.mktemp("tiny-model")
    pretrain(tiny_world(), tiny_pretrain_config(), out, log=lambda _: None)
    return out


def pytest_configure(config):
    # Tiny models train fastest single-threaded, and CI machines have 2 cores.
    import torch

    torch.set_num_threads(1)
