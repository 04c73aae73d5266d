import pytest
import yaml

from knowtune.errors import KnowtuneError
from knowtune.models import default_model_dir, fingerprint_of, load_model_and_tokenizer, resolve_model
from knowtune.pretrain import PretrainConfig, load_exposures
from knowtune.provenance import model_fingerprint
from knowtune.world.corpus import assign_exposures
from knowtune.world.embedded import load_embedded_world


def test_shipped_default_was_built_with_the_default_config():
    directory = default_model_dir()
    saved = yaml.safe_load((directory / "pretrain_config.yaml").read_text())
    assert saved == PretrainConfig().model_dump(mode="json")
    expected = {item.id: item.to_record() for item in assign_exposures(load_embedded_world(), PretrainConfig().corpus)}
    assert load_exposures(directory) == expected


def test_default_model_loads_and_answers_a_well_known_fact():
    from knowtune.recall import few_shot_recall

    model, tokenizer = load_model_and_tokenizer("default")
    exposures = load_exposures(default_model_dir())
    world = load_embedded_world()
    top = [ex for ex in world.examples if exposures[ex.id]["exposures"] >= 50 and not exposures[ex.id]["distractor_exposures"]][:8]
    results = few_shot_recall(model, tokenizer, top, world.split("dev"))
    assert sum(r.correct for r in results) >= 7


def test_resolve_model_paths_and_errors(tmp_path):
    assert resolve_model("default") == default_model_dir()
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(KnowtuneError, match="config.json"):
        resolve_model(tmp_path)
    with pytest.raises(KnowtuneError, match="cannot load model"):
        load_model_and_tokenizer(str(tmp_path / "missing" / "x"))


def test_fingerprint_of_default_is_its_content_hash():
    assert fingerprint_of("default") == model_fingerprint(default_model_dir())
    with pytest.raises(KnowtuneError, match="local Hugging Face cache"):
        fingerprint_of("no-such-org/no-such-model-anywhere")
