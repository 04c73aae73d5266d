"""`knowtune curate --route-unknown retrieval`: Unknown examples leave the training sets for a BM25 store."""

from __future__ import annotations

import json

from curate_annotations import _record, write_annotation_dir

from knowtune.data import load_examples
from knowtune.retrieval import RetrievalStore
from knowtune.slick.categories import CATEGORIES
from knowtune.testing import run_cli, tiny_world


def _world_annotations(tmp_path):
    """A tiny world on disk and an annotate output over its train split, categories cycling per relation."""
    world = tiny_world(40, 2)
    data = world.save(tmp_path / "world")
    records = []
    for i, ex in enumerate(sorted(world.split("train"), key=lambda e: e.id)):
        records.append({**_record(ex.id, ex.relation, "train", CATEGORIES[i % 4]), "question": ex.question, "answers": list(ex.answers)})
    return world, data, write_annotation_dir(tmp_path / "annotations", records)


def test_route_unknown_writes_known_only_training_sets_and_a_store_of_the_unknown(capsys, tmp_path):
    world, data, annotations = _world_annotations(tmp_path)
    out = tmp_path / "curated"
    code, _, err = run_cli(capsys, "curate", "--annotations", annotations, "--data", data, "--out", out,
                           "--route-unknown", "retrieval", "--variants", "ratio,idk,filtered", "--unknown-ratios", "0,50,100")
    assert code == 0, err
    index = json.loads((out / "variants.json").read_text())
    assert index["route_unknown"] == "retrieval"
    assert {s["name"] for s in index["skipped"]} == {"D_100", "D_IDK_50"}
    entries = {v["name"]: v for v in index["variants"]}
    assert set(entries) == {"D_0", "D_50", "D_Filtered"} and "retrieval" not in entries["D_0"]
    for name in ("D_50", "D_Filtered"):
        train = load_examples(out / name / "train.jsonl")
        assert train and all(ex.metadata["category"] != "Unknown" for ex in train)
        store = RetrievalStore.load(out / entries[name]["retrieval"])
        assert entries[name]["routed"] == len(store.passages) > 0
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["retrieval"]["routed"] == len(store.passages)
        assert manifest["retrieval"]["counts"]["per_category"]["Unknown"] == len(store.passages)
        routed = load_examples(out / name / "retrieval" / "examples.jsonl")
        assert {ex.metadata["category"] for ex in routed} == {"Unknown"}
        assert not {ex.id for ex in routed} & {ex.id for ex in train}
    every_unknown = {ex.id for ex in load_examples(out / "D_Filtered" / "retrieval" / "examples.jsonl")}
    assert len(every_unknown) == len(world.split("train")) // 4 + (len(world.split("train")) % 4 > 3)
    store = RetrievalStore.load(out / "D_Filtered" / "retrieval")
    first = store.passages[0]
    fact = next(ex for ex in world.examples if ex.id == first.id)
    assert first.text == world.relations[fact.relation].statement(fact.subject, fact.answers[0], 0)  # a statement, from --data's world
    assert store.record["provenance"]["config"]["route_unknown"] == "retrieval"
    assert store.search([fact.question], 1)[0][0].id == fact.id


def test_default_route_keeps_unknown_in_training_and_writes_no_store(capsys, tmp_path):
    _, data, annotations = _world_annotations(tmp_path)
    out = tmp_path / "curated"
    code, _, err = run_cli(capsys, "curate", "--annotations", annotations, "--data", data, "--out", out, "--variants", "ratio", "--unknown-ratios", "50")
    assert code == 0, err
    index = json.loads((out / "variants.json").read_text())
    assert "route_unknown" not in index and "retrieval" not in index["variants"][0]
    assert not (out / "D_50" / "retrieval").exists()
    assert any(ex.metadata["category"] == "Unknown" for ex in load_examples(out / "D_50" / "train.jsonl"))


def test_route_unknown_with_only_unknown_variants_exits_2(capsys, tmp_path):
    _, data, annotations = _world_annotations(tmp_path)
    code, _, err = run_cli(capsys, "curate", "--annotations", annotations, "--data", data, "--out", tmp_path / "o",
                           "--route-unknown", "retrieval", "--variants", "ratio", "--unknown-ratios", "100")
    assert code == 2 and "no variant keeps a training example" in " ".join(err.split())
    assert not (tmp_path / "o" / "variants.json").exists()


def test_default_route_is_left_out_of_saved_configs():
    from knowtune.curate import CurateConfig

    assert "route_unknown" not in CurateConfig().model_dump(mode="json")  # study stage keys of existing runs stay valid
    assert CurateConfig(route_unknown="retrieval").model_dump(mode="json")["route_unknown"] == "retrieval"
