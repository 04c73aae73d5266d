"""Synthetic worlds: determinism, sizes, splits, keys, round trip, config errors."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from knowtune.config import load_config
from knowtune.data.schema import SPLITS
from knowtune.errors import ConfigError
from knowtune.world.corpus import CorpusConfig, assign_exposures, render_corpus
from knowtune.world.spec import World
from knowtune.world.synthetic import (
    CATALOGUE,
    OBJECT_POOLS,
    SyntheticWorldConfig,
    entity_keys,
    generate_synthetic_world,
    key_overlap,
)

ID_PATTERN = re.compile(r"(?P<relation>[a-z_]+)-(?P<split>train|dev|test)-(?P<index>\d{5,})")


def make(**overrides) -> World:
    return generate_synthetic_world(SyntheticWorldConfig(**{"num_entities": 200, **overrides}))


@pytest.fixture(scope="module")
def world() -> World:
    return make(num_entities=1000)


def test_same_seed_same_world_and_other_seed_differs():
    first, again, other = make(seed=3), make(seed=3), make(seed=4)
    assert first == again
    assert {ex.subject for ex in first.examples} != {ex.subject for ex in other.examples}
    assert [ex.object for ex in first.examples] != [ex.object for ex in other.examples]


def test_every_entity_gets_one_fact_per_relation(world):
    assert len(world.examples) == 1000 * len(CATALOGUE)
    per_subject = Counter(ex.subject for ex in world.examples)
    assert len(per_subject) == 1000 and set(per_subject.values()) == {len(CATALOGUE)}
    assert set(world.relations) == {r.id for r in CATALOGUE}


def test_relations_per_entity_and_relation_count():
    small = make(relations=5, relations_per_entity=2)
    assert set(small.relations) == {r.id for r in CATALOGUE[:5]}
    per_subject = Counter(ex.subject for ex in small.examples)
    assert len(per_subject) == 200 and set(per_subject.values()) == {2}
    assert len({ex.relation for ex in small.examples}) == 5


def test_ids_questions_and_fields(world):
    ids = [ex.id for ex in world.examples]
    assert len(set(ids)) == len(ids)
    assert len({ex.question for ex in world.examples}) == len(world.examples)
    counters: Counter = Counter()
    for ex in world.examples:
        match = ID_PATTERN.fullmatch(ex.id)
        assert match and match["relation"] == ex.relation and match["split"] == ex.split
        assert int(match["index"]) == counters[(ex.relation, ex.split)]  # consecutive from 0
        counters[(ex.relation, ex.split)] += 1
        assert ex.subject and ex.object and ex.answers == (ex.object,)
        assert ex.question == world.relations[ex.relation].question(ex.subject)


def test_split_by_entity_keeps_subjects_disjoint(world):
    subjects = {split: {ex.subject for ex in world.split(split)} for split in SPLITS}
    assert [len(subjects[s]) for s in SPLITS] == [700, 100, 200]
    assert not (subjects["train"] & subjects["test"]) and not (subjects["dev"] & subjects["test"])
    assert not (subjects["train"] & subjects["dev"])


def test_split_by_fact_cuts_every_relation_by_the_shares():
    by_fact = make(split_by="fact", train_share=0.5, dev_share=0.2, test_share=0.3)
    for relation in by_fact.relations:
        sizes = Counter(ex.split for ex in by_fact.examples if ex.relation == relation)
        assert sizes == {"train": 100, "dev": 40, "test": 60}
    train_subjects = {ex.subject for ex in by_fact.split("train")}
    assert train_subjects & {ex.subject for ex in by_fact.split("test")}  # facts, not entities, are split


@pytest.mark.parametrize("split_by", ["entity", "fact"])
def test_ood_relations_are_test_only(split_by):
    ood_world = make(ood_relations=2, split_by=split_by)
    assert ood_world.ood_relations == [r.id for r in CATALOGUE[-2:]]
    ood_facts = [ex for ex in ood_world.examples if ex.relation in ood_world.ood_relations]
    assert ood_facts and {ex.split for ex in ood_facts} == {"test"}
    assert {ex.split for ex in ood_world.split("train", ood=False)} == {"train"}
    if split_by == "entity":
        train_subjects = {ex.subject for ex in ood_world.split("train")}
        assert not train_subjects & {ex.subject for ex in ood_facts}


def test_name_keys_overlap_more_than_random_keys():
    names, randoms, uuids = (make(num_entities=1000, relations=1, key_type=k) for k in ("name", "random", "uuid"))
    assert key_overlap(names) > 0.6
    assert key_overlap(randoms) < 0.02
    assert key_overlap(uuids) < 0.2
    assert key_overlap(names, pieces=lambda key: [key]) == 0.0  # whole keys are unique


def test_key_formats():
    config = SyntheticWorldConfig(num_entities=300)
    names = entity_keys(config)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", key) for key in names)
    randoms = entity_keys(config.model_copy(update={"key_type": "random"}))
    assert all(re.fullmatch(r"[a-z0-9]{5}-[a-z0-9]{4}", key) for key in randoms)
    uuids = entity_keys(config.model_copy(update={"key_type": "uuid"}))
    assert all(uuid.UUID(key).version == 4 for key in uuids)
    assert len(set(names)) == len(set(randoms)) == len(set(uuids)) == 300


def test_key_types_give_paired_worlds():
    """Same seed, other key type: the same facts with the subjects renamed one-to-one."""
    names, randoms = make(key_type="name"), make(key_type="random")
    rename = {}
    for a, b in zip(names.examples, randoms.examples, strict=True):
        assert (a.id, a.relation, a.split) == (b.id, b.relation, b.split)
        assert rename.setdefault(a.subject, b.subject) == b.subject
        expected = rename.get(a.object, a.object) if a.relation == "mentor" else a.object
        assert b.object == expected
    assert len(set(rename.values())) == len(rename) == 200


def test_person_objects_are_other_entities():
    pair = make(num_entities=2, relations=["mentor"])
    first, second = (ex.subject for ex in pair.examples)
    assert {(ex.subject, ex.object) for ex in pair.examples} == {(first, second), (second, first)}


def test_objects_come_from_large_pools(world):
    for relation in CATALOGUE:
        answers = {ex.object for ex in world.examples if ex.relation == relation.id}
        if relation.object_kind == "person":
            subjects = {ex.subject for ex in world.examples}
            assert answers <= subjects
            assert all(ex.object != ex.subject for ex in world.examples if ex.relation == relation.id)
        else:
            assert len(OBJECT_POOLS[relation.object_kind]) >= 300
            assert answers <= set(OBJECT_POOLS[relation.object_kind])
        assert len(answers) > 250  # 1000 draws from >= 300 values: chance guesses are rare


def test_custom_relation_specs_from_yaml(tmp_path):
    path = tmp_path / "synth.yaml"
    path.write_text(
        "relations:\n"
        "  - born_in\n"
        "  - id: rival\n"
        "    question_template: 'Who is the rival of [X]?'\n"
        "    statement_templates: ['[X] competes with [Y].']\n"
        "    object_kind: person\n"
        "num_entities: 50\n",
        encoding="utf-8",
    )
    custom = generate_synthetic_world(load_config(SyntheticWorldConfig, path))
    assert set(custom.relations) == {"born_in", "rival"}
    rivals = [ex for ex in custom.examples if ex.relation == "rival"]
    assert len(rivals) == 50 and all(ex.question == f"Who is the rival of {ex.subject}?" for ex in rivals)
    assert {ex.object for ex in rivals} <= {ex.subject for ex in custom.examples}


def test_save_load_round_trip(tmp_path):
    original = make(num_entities=60, ood_relations=1, name="round-trip")
    loaded = World.load(original.save(tmp_path / "world"))
    assert loaded.name == "round-trip" and loaded.relations == original.relations
    assert sorted(loaded.examples, key=lambda e: e.id) == sorted(original.examples, key=lambda e: e.id)
    assert (tmp_path / "world" / "test" / "favourite_book.test.jsonl").is_file()


def test_world_renders_a_pretraining_corpus():
    small = make(num_entities=20, relations=["works_at"])
    config = CorpusConfig(never_seen_share=0.0, min_exposures=1, max_exposures=1, conflict_share=0.0, statement_weight=1.0, qa_weight=0.0, instruction_weight=0.0)
    documents = render_corpus(small, assign_exposures(small, config), config)
    assert len(documents) == 20
    assert all(any(ex.subject in doc and ex.object in doc for ex in small.examples) for doc in documents)


@pytest.mark.timeout(30)
def test_scales_to_100k_entities():
    large = generate_synthetic_world(SyntheticWorldConfig(num_entities=100_000, relations=["mentor"]))
    assert len(large.examples) == 100_000
    assert len({ex.subject for ex in large.examples}) == 100_000
    three_part = entity_keys(SyntheticWorldConfig(num_entities=150_000, relations=1))
    assert len(set(three_part)) == 150_000 and all(key.count(" ") == 2 for key in three_part[:100])


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"num_entities": -5}, "num_entities"),
        ({"num_entities": 0}, "num_entities"),
        ({"train_share": 0.9}, "sum to 1"),
        ({"relations": ["works_at", "flies_to"]}, "flies_to"),
        ({"relations": 9}, "catalogue has 8"),
        ({"relations": ["pet", "pet"]}, "repeat"),
        ({"ood_relations": 8}, "no in-distribution"),
        ({"relations_per_entity": 9}, "relations_per_entity"),
        ({"key_type": "emoji"}, "key_type"),
        ({"split_by": "relation"}, "split_by"),
        ({"num_entities": 1, "relations": ["mentor"]}, "num_entities >= 2"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_config_is_an_error_naming_the_problem(overrides, key):
    with pytest.raises(ValidationError, match=re.escape(key)):
        SyntheticWorldConfig(**overrides)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(SyntheticWorldConfig, overrides=overrides)


def test_invalid_custom_relation_is_an_error():
    missing_subject = {"id": "x", "question_template": "Who?", "statement_templates": ["[X] [Y]"], "object_kind": "place"}
    with pytest.raises(ValidationError, match=r"\[X\]"):
        SyntheticWorldConfig(relations=[missing_subject])
    bad_id = {**missing_subject, "id": "a/b", "question_template": "Who is [X]?"}
    with pytest.raises(ValidationError, match="relation id"):
        SyntheticWorldConfig(relations=[bad_id])
    same_question = {**missing_subject, "question_template": "Where was [X] born?"}
    with pytest.raises(ValidationError, match="distinct question_template"):
        SyntheticWorldConfig(relations=["born_in", same_question])
