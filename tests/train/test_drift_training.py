"""Representation drift during training (Kaplan, Gekhman et al. 2026): metrics.jsonl gets
``drift/cosine`` every epoch, measured from the base model, also after a resume."""

from __future__ import annotations

import json

import pytest

from knowtune.drift import cosine_drift, entity_states
from knowtune.data.splits import Splits
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.models import load
from knowtune.testing import SimulatedCrash, crash_after_save, tiny_world
from knowtune.train.config import TrainConfig
from knowtune.train.sft import train_model

FAST = dict(epochs=3, learning_rate=5e-3, batch_size=2, lr_scheduler="constant", max_new_tokens=8, max_eval_examples=6,
            drift={"layer": 2})


def _data():
    """12 training examples; test examples alternate HighlyKnown / Unknown (6 Known held-out facts)."""
    world = tiny_world()
    categories = {ex.id: ("HighlyKnown", "Unknown")[i % 2] for i, ex in enumerate(world.examples)}
    return world.split("train")[:12], world.split("test"), categories


def _run(config, model, out, callbacks=()):
    train, test, categories = _data()
    return train_model(config, model, Splits(train, test=test), categories=categories, out_dir=out, callbacks=callbacks, log=lambda _: None)


@pytest.fixture(scope="module")
def drift_run(tiny_pretrained, tmp_path_factory):
    return _run(TrainConfig(**FAST), tiny_pretrained, tmp_path_factory.mktemp("drift") / "run")


def test_every_record_has_drift_from_the_base_model(drift_run, tiny_pretrained):
    records = drift_run.metrics
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[0]["drift/cosine"] == 0.0 and records[0]["drift/cosine/Known"] == 0.0
    assert all(r["drift/cosine"] > 0 for r in records[1:])
    # Default set: the Known test facts only, all of them (6 < max_examples).
    assert all(r["drift/n"] == 6 for r in records)
    assert all(r["drift/cosine/Known"] == r["drift/cosine/HighlyKnown"] == r["drift/cosine"] for r in records)
    assert not any("drift/cosine/Unknown" in r for r in records)
    # The last value is the drift of the saved model from the base model, recomputed here.
    _, test, categories = _data()
    known = [ex for ex in test if categories[ex.id] == "HighlyKnown"]
    base, tokenizer = load(tiny_pretrained)
    final, _ = load(drift_run.model_dir)
    expected = cosine_drift(entity_states(base, tokenizer, known, layer=2), entity_states(final, tokenizer, known, layer=2))
    assert records[-1]["drift/cosine"] == pytest.approx(expected, abs=1e-6)
    lines = [json.loads(line) for line in (drift_run.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["drift/cosine"] for line in lines] == [r["drift/cosine"] for r in records]


def test_resume_measures_drift_from_the_base_model_not_the_checkpoint(drift_run, tiny_pretrained, tmp_path):
    with pytest.raises(SimulatedCrash):
        _run(TrainConfig(**FAST), tiny_pretrained, tmp_path, callbacks=[crash_after_save(2)])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # epochs 0-2
    resumed = _run(TrainConfig(**FAST), tiny_pretrained, tmp_path)
    assert [r["epoch"] for r in resumed.metrics] == [0, 1, 2, 3]
    # Epoch 3 after the resume equals the uninterrupted run; drift from the epoch-2 checkpoint would be far smaller.
    for again, first in zip(resumed.metrics, drift_run.metrics):
        assert again["drift/cosine"] == pytest.approx(first["drift/cosine"], abs=1e-6)


def test_all_categories_per_group_and_lora(tiny_pretrained, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 1, "learning_rate": 2e-2, "lora": {"r": 2, "dropout": 0.0},
                            "drift": {"layer": -1, "categories": ["HighlyKnown", "Unknown"], "max_examples": 8}})
    result = _run(config, tiny_pretrained, tmp_path)
    first, last = result.metrics
    assert first["drift/n"] == 8 and first["drift/cosine"] == 0.0  # the adapter starts as the identity
    assert {k for k in last if k.startswith("drift/cosine/")} == {"drift/cosine/HighlyKnown", "drift/cosine/Unknown", "drift/cosine/Known"}
    assert last["drift/cosine"] > 0 and last["drift/cosine/Unknown"] > 0


def test_format_stage_student_starts_drifted_from_the_base(tiny_pretrained, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 1, "method": "selfdistill", "drift": {}})
    result = _run(config, tiny_pretrained, tmp_path)
    assert result.metrics[0]["drift/cosine"] > 0  # the student is the format-stage model; the reference is the base model


def test_bad_drift_settings_fail_before_anything_is_written(tiny_pretrained, tmp_path):
    train, test, categories = _data()
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="drift.split is test but there are no test examples") as error:
        train_model(TrainConfig(drift={}), tiny_pretrained, Splits(train), out_dir=out)
    assert "--test" in error.value.fix
    with pytest.raises(ConfigError, match="drift.categories.*needs SliCK categories"):
        train_model(TrainConfig(drift={"categories": ["Unknown"]}), tiny_pretrained, Splits(train, test=test), out_dir=out)
    with pytest.raises(ConfigError, match="no dev example is in the drift groups"):
        train_model(TrainConfig(drift={"split": "dev", "categories": ["MaybeKnown"]}), tiny_pretrained, Splits(train, dev=test),
                    categories=categories, out_dir=out)
    no_subject = [test[0].model_copy(update={"subject": None}), *test[1:]]
    with pytest.raises(KnowtuneError, match=f"example '{test[0].id}' has no subject"):
        train_model(TrainConfig(drift={}), tiny_pretrained, Splits(train, test=no_subject), categories=categories, out_dir=out)
    with pytest.raises(ConfigError, match="drift layer 9 is out of range"):
        train_model(TrainConfig(drift={"layer": 9}), tiny_pretrained, Splits(train, test=test), out_dir=out)
    with pytest.raises(ValueError, match="unknown groups"):
        TrainConfig(drift={"categories": ["Known", "Famous"]})
    assert not out.exists()

