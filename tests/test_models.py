import pytest
import yaml

from knowtune.errors import KnowtuneError
import shutil

import torch

from knowtune.models import default_model_dir, fingerprint_of, load, resolve_dtype, resolve_model
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

    model, tokenizer = load("default")
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
    with pytest.raises(KnowtuneError, match="nor in the local Hugging Face cache"):
        load(str(tmp_path / "missing" / "x"))


def test_load_places_the_model_in_eval_mode_on_the_device_in_the_dtype():
    model, tokenizer = load("default", device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training and model.device.type == "cpu"
    assert tokenizer.eos_token == "</s>"
    auto, _ = load("default")
    assert auto.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert resolve_dtype("auto", "cuda") == "bfloat16" and resolve_dtype("auto", "cpu") == "float32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(KnowtuneError, match="no CUDA GPU is visible"):
        load("default", device="cuda")


def test_load_names_what_a_model_directory_lacks(tmp_path):
    source = default_model_dir()
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(source / "config.json", only_config)
    with pytest.raises(KnowtuneError, match="config.json but no weights") as error:
        load(only_config)
    assert "save_pretrained" in error.value.fix
    (only_config / "adapter_config.json").write_text("{}")
    with pytest.raises(KnowtuneError, match="no weights") as error:
        load(only_config)
    assert "OUT/model" in error.value.fix
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, no_tokenizer)
    with pytest.raises(KnowtuneError, match="no tokenizer files"):
        load(no_tokenizer)
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(KnowtuneError, match="could not be loaded as a causal language model"):
        load(broken)
    with pytest.raises(KnowtuneError, match="dtype: 'float8'"):
        load("default", dtype="float8")


def test_fingerprint_of_default_is_its_content_hash():
    assert fingerprint_of("default") == model_fingerprint(default_model_dir())
    with pytest.raises(KnowtuneError, match="local Hugging Face cache"):
        fingerprint_of("no-such-org/no-such-model-anywhere")
