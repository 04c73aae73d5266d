"""Splits and the one dev/test/OOD rule (knowtune.data.splits) that `knowtune train` and the study use."""

from __future__ import annotations

import dataclasses

import pytest

from knowtune.data import save_examples
from knowtune.data.splits import Splits, load_splits, split_examples
from knowtune.testing import tiny_world


def _world():
    world = tiny_world(relations=3)
    ood_relation = sorted({ex.relation for ex in world.examples})[-1]
    examples = [ex for ex in world.examples if not (ex.split == "train" and ex.relation == ood_relation)]
    return examples, ood_relation


def test_ood_is_the_test_of_relations_without_training_examples():
    examples, ood_relation = _world()
    splits = split_examples(examples)
    assert splits.train and all(ex.split == "train" for ex in splits.train)
    assert {ex.relation for ex in splits.ood} == {ood_relation}
    assert ood_relation not in {ex.relation for ex in splits.test} and splits.test
    assert len(splits.test) + len(splits.ood) == sum(ex.split == "test" for ex in examples)
    assert splits.dev == tuple(ex for ex in examples if ex.split == "dev")


def test_given_dev_test_and_ood_replace_the_datasets_own(tmp_path):
    examples, ood_relation = _world()
    own = split_examples(examples)
    given = split_examples(examples, ood=own.ood[:2])
    assert given.ood == own.ood[:2] and len(given.test) == len(own.test) + len(own.ood)  # the test set is not filtered
    other_dev = own.test[:3]
    assert split_examples(examples, dev=other_dev).dev == other_dev
    save_examples(own.ood[:2], tmp_path / "ood.jsonl")
    loaded = load_splits(str(tmp_path / "ood.jsonl"), test=str(tmp_path / "ood.jsonl"))
    assert loaded.train == () and [ex.id for ex in loaded.ood] == [ex.id for ex in own.ood[:2]]


def test_splits_is_an_immutable_typed_record():
    examples, _ = _world()
    splits = split_examples(examples)
    assert isinstance(splits.train, tuple) and splits.all == splits.train + splits.dev + splits.test + splits.ood
    assert splits.counts() == {"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test), "ood": len(splits.ood)}
    assert splits.describe() == f"{len(splits.train)} train, {len(splits.dev)} dev, {len(splits.test)} test, {len(splits.ood)} OOD examples"
    assert [name for name, _ in splits.items()] == ["train", "dev", "test", "ood"] and splits["dev"] == splits.dev
    assert list(splits.evaluation) == ["dev", "test", "ood"]
    variant = splits.with_train(splits.train[:2])
    assert variant.train == splits.train[:2] and variant.test == splits.test
    with pytest.raises(dataclasses.FrozenInstanceError):
        splits.train = ()
    with pytest.raises(KeyError, match="unknown split"):
        splits["validation"]
    assert Splits([examples[0]]).counts() == {"train": 1, "dev": 0, "test": 0, "ood": 0}
