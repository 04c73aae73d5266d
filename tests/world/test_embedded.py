import json

from knowtune.world.embedded import EMBEDDED_DIR, load_embedded_world, resolve_data_path
from knowtune.world.entityquestions import EMBEDDED_SLICE, slice_entityquestions
from knowtune.world.spec import World


def test_embedded_world_matches_its_slice_spec():
    world = load_embedded_world()
    assert set(world.in_distribution_relations) == set(EMBEDDED_SLICE.relations)
    assert set(world.ood_relations) == set(EMBEDDED_SLICE.ood_relations)
    for relation in EMBEDDED_SLICE.relations:
        assert len([e for e in world.split("train") if e.relation == relation]) == EMBEDDED_SLICE.train_per_relation
        assert len([e for e in world.split("dev") if e.relation == relation]) == EMBEDDED_SLICE.dev_per_relation
    assert len(world.split("test", ood=True)) == 3 * EMBEDDED_SLICE.test_per_relation
    assert not world.split("train", ood=True)


def test_embedded_world_obeys_the_papers_filters():
    world = load_embedded_world()
    assert all(len(ex.answers) == 1 for ex in world.examples)
    test_entities = {e.casefold() for ex in world.split("test") for e in (ex.subject, ex.object)}
    for ex in world.split("train") + world.split("dev"):
        assert ex.subject.casefold() not in test_entities and ex.object.casefold() not in test_entities
    assert len({ex.question for ex in world.examples}) == len(world.examples)


def test_embedded_world_is_reproducible_from_entityquestions(entityquestions_dir):
    rebuilt = slice_entityquestions(entityquestions_dir, EMBEDDED_SLICE)
    assert rebuilt.examples == load_embedded_world().examples


def test_embedded_world_ships_licence_and_attribution():
    assert "MIT" in (EMBEDDED_DIR / "LICENSE").read_text()
    assert "Sciavolino" in (EMBEDDED_DIR / "ATTRIBUTION.md").read_text()
    assert resolve_data_path("embedded") == EMBEDDED_DIR


def test_world_save_load_round_trip(tmp_path):
    world = load_embedded_world()
    small = World(name="small", relations=world.relations, examples=world.examples[:40])
    small.save(tmp_path)
    assert json.loads((tmp_path / "relations.json").read_text())["name"] == "small"
    loaded = World.load(tmp_path)
    assert sorted(loaded.examples, key=lambda e: e.id) == sorted(small.examples, key=lambda e: e.id)
    assert loaded.relations == small.relations
