"""Fixtures of the study tests: a tiny world and a tiny model pretrained on it long enough to
know about half of its facts (so SliCK finds Known and Unknown ones), in about 10 seconds."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def study_world(tmp_path_factory) -> Path:
    """The tiny synthetic world (2 relations, 30 entities) saved as a dataset directory."""
    from knowtune.testing import tiny_world

    return tiny_world().save(tmp_path_factory.mktemp("study-world") / "world")


@pytest.fixture(scope="session")
def knowing_model(tmp_path_factory) -> Path:
    """A tiny Llama pretrained by knowtune on the tiny world for 20 passes: it recalls some facts, not others."""
    from knowtune.pretrain import pretrain
    from knowtune.testing import tiny_pretrain_config, tiny_world

    out = tmp_path_factory.mktemp("knowing-model")
    config = tiny_pretrain_config(epochs=20, hidden_size=64, intermediate_size=128, learning_rate=3e-3, seq_len=64, batch_size=16,
                                  save_every_steps=10_000)
    pretrain(tiny_world(), config, out, log=lambda _: None)
    return out
