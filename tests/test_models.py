import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from knowtune.errors import KnowtuneError
from knowtune.models import check_model, context_length, default_model_dir, fingerprint_of, load, resolve_dtype, resolve_model
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
    with pytest.raises(KnowtuneError, match="model.safetensors is truncated or corrupt"):
        load(broken)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    shutil.copy(source / "model.safetensors", broken)
    with pytest.raises(KnowtuneError, match="could not be loaded as a causal language model"):
        load(broken)
    with pytest.raises(KnowtuneError, match="dtype: 'float8'"):
        load("default", dtype="float8")


def test_fingerprint_of_default_is_its_content_hash():
    assert fingerprint_of("default") == model_fingerprint(default_model_dir())
    with pytest.raises(KnowtuneError, match="local Hugging Face cache"):
        fingerprint_of("no-such-org/no-such-model-anywhere")


def _copy_default(tmp_path, name: str) -> Path:
    return Path(shutil.copytree(default_model_dir(), tmp_path / name))


def test_check_model_finds_a_truncated_weight_file_from_its_header(tmp_path):
    model = _copy_default(tmp_path, "truncated")
    weights = model / "model.safetensors"
    full = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-1])  # one byte short: every tensor's range is in the header
    with pytest.raises(KnowtuneError, match=f"model.safetensors is truncated or corrupt .*describes {full} bytes, the file has {full - 1}") as error:
        check_model(model)
    assert "download the model again" in error.value.fix
    shutil.copy(default_model_dir() / "model.safetensors", weights)
    assert check_model(model) == model


def test_check_model_reads_sharded_indexes_bin_archives_and_config(tmp_path):
    model = _copy_default(tmp_path, "sharded")
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KnowtuneError, match="missing: model-00002-of-00002.safetensors"):
        check_model(model)
    legacy = _copy_default(tmp_path, "legacy")
    (legacy / "model.safetensors").unlink()
    (legacy / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(KnowtuneError, match="pytorch_model.bin is truncated or corrupt"):
        check_model(legacy)
    bad_config = _copy_default(tmp_path, "bad-config")
    (bad_config / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(KnowtuneError, match="config.json is not valid JSON"):
        check_model(bad_config)


def test_context_length_reads_the_config_key_that_bounds_positions(tmp_path):
    from knowtune.testing import tiny_family_model

    assert context_length(default_model_dir()) == (512, "max_position_embeddings")
    assert context_length(tiny_family_model("gpt2", tmp_path / "gpt2")) == (512, "n_positions")
    assert context_length(tiny_family_model("bloom", tmp_path / "bloom")) == (None, None)  # ALiBi: no position table


def test_a_fingerprint_follows_a_weight_file_changed_in_place(tmp_path):
    model = _copy_default(tmp_path, "changing")
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before == fingerprint_of("default")
    with open(model / "model.safetensors", "r+b") as handle:  # same file, same size, one byte of a tensor changed
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    assert model_fingerprint(model) != before
