"""StudyConfig resolution and the study's data preparation (sample, fingerprint), without a model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from knowtune.config import load_config
from knowtune.errors import ConfigError
from knowtune.study.config import StudyConfig
from knowtune.study.pipeline import data_fingerprint, sample_examples
from knowtune.testing import tiny_world


def test_top_level_seed_and_device_reach_every_section_that_sets_none():
    config = load_config(StudyConfig, None, {"seed": 7, "device": "cpu", "train": {"seed": 3}}).resolved()
    assert (config.annotate.seed, config.curate.seed, config.train.seed) == (7, 7, 3)
    assert (config.annotate.device, config.train.device) == ("cpu", "cpu")
    assert config.study_seed == 7


def test_sections_may_not_set_the_paths_the_study_wires():
    with pytest.raises(ConfigError, match="annotate.model is set by the study itself"):
        load_config(StudyConfig, None, {"annotate": {"model": "x"}})
    with pytest.raises(ConfigError, match="curate.out is set by the study itself"):
        load_config(StudyConfig, None, {"curate": {"out": "x"}})
    with pytest.raises(ConfigError, match="train_variants"):
        load_config(StudyConfig, None, {"train_variants": ["D_0", "D_0"]})


def test_the_wired_configs_point_at_the_study_directory(tmp_path):
    config = load_config(StudyConfig, None, {"model": "m", "annotate": {"n_ex": 3}})
    annotate = config.annotate_config(tmp_path, tmp_path / "data.jsonl", ["P19", "P26"])
    assert (annotate.model, annotate.data, annotate.out, annotate.relations, annotate.n_ex) == \
        ("m", str(tmp_path / "data.jsonl"), str(tmp_path / "audit"), ["P19", "P26"], 3)
    curate = config.curate_config(tmp_path, tmp_path / "data.jsonl")
    assert (curate.annotations, curate.out) == (str(tmp_path / "audit"), str(tmp_path / "variants"))


def test_comparable_settings_leave_out_run_keys_only():
    a = load_config(StudyConfig, None, {"workers": 1, "device": "cpu", "train": {"eval_batch_size": 8}}).comparable()
    b = load_config(StudyConfig, None, {"workers": 2, "device": "auto", "train": {"eval_batch_size": 64}}).comparable()
    assert a == b
    c = load_config(StudyConfig, None, {"train": {"epochs": 3}}).comparable()
    assert c != a


def test_sample_takes_a_seeded_count_per_split_and_relation():
    examples = list(tiny_world(num_entities=60).examples)
    sample = sample_examples(examples, {"train": 10, "dev": None, "test": 3}, seed=0)
    counts = Counter((e.split, e.relation) for e in sample)
    relations = {e.relation for e in examples}
    assert all(counts["train", r] == 10 and counts["test", r] == 3 for r in relations)
    assert sum(e.split == "dev" for e in sample) == sum(e.split == "dev" for e in examples)
    assert sample == sample_examples(list(reversed(examples)), {"train": 10, "dev": None, "test": 3}, seed=0)
    assert sample != sample_examples(examples, {"train": 10, "dev": None, "test": 3}, seed=1)


def test_data_fingerprint_follows_the_content(tmp_path):
    world = tiny_world()
    first = data_fingerprint(world.save(tmp_path / "a"))
    assert first == data_fingerprint(world.save(tmp_path / "b"))
    path = next(Path(tmp_path / "b").rglob("*.jsonl"))
    path.write_text(path.read_text().replace("?", "!", 1))
    assert data_fingerprint(tmp_path / "b") != first


def test_the_key_overlap_section_takes_the_study_seed_and_workers_unless_it_sets_its_own():
    config = StudyConfig.model_validate({"workers": 1, "seed": 3, "key_overlap": {}}).resolved()
    assert (config.key_overlap.workers, config.key_overlap.seed) == (1, 3)
    config = StudyConfig.model_validate({"workers": 1, "seed": 3, "key_overlap": {"workers": 2, "seed": 0}}).resolved()
    assert (config.key_overlap.workers, config.key_overlap.seed) == (2, 0)
    assert StudyConfig.model_validate({"workers": 1, "seed": 3}).resolved().key_overlap is None
