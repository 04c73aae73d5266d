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


@pytest.fixture(scope="session")
def route_study(tmp_path_factory) -> tuple[Path, str]:
    """A miniature study of the default model with the ``table2:`` and ``retrieval_route:`` sections (a seeded sample
    of the embedded world, 2 epochs), run once through the CLI with ``--report``: (study dir, stdout)."""
    import contextlib
    import io

    import yaml

    from knowtune.cli import main

    from study_metrics import default_model_study

    root = tmp_path_factory.mktemp("route-study")
    settings = default_model_study(train=60, samples=4, size=24, epochs=2, max_eval=30, table2={},
                                   retrieval_route={"k": 2, "finetune_with_passages": True, "oracle_share": 0.5})
    (root / "study.yaml").write_text(yaml.safe_dump(settings))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        main(["study", "--config", str(root / "study.yaml"), "--out", str(root / "study"), "--report"])
    assert (root / "study" / "report" / "index.html").is_file(), err.getvalue()[-3000:]
    return root / "study", out.getvalue()
