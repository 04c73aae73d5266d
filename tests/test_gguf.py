"""GGUF export of the default model (no server needed; tests/slick/test_served.py runs it in llama.cpp)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from knowtune.errors import KnowtuneError
from knowtune.models import default_model_dir
from knowtune.models.gguf import _permute, export_gguf, tokenizer_spec

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_gguf("default", tmp_path_factory.mktemp("gguf") / "default.gguf")


def _field(reader, key):
    field = reader.fields[key]
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode() for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode()
    return field.parts[-1][0].item()


def test_gguf_holds_the_tokenizer_as_llama_cpp_reads_it(exported):
    reader = gguf.GGUFReader(exported)
    spec = json.loads((default_model_dir() / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(tokens) == 4096 and all(tokens[i] == t for t, i in spec["model"]["vocab"].items())
    assert _field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in spec["model"]["merges"]]
    assert _field(reader, "tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # <s> </s> <pad> are control tokens
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False  # the default tokenizer adds no BOS
    assert (_field(reader, "tokenizer.ggml.bos_token_id"), _field(reader, "tokenizer.ggml.eos_token_id")) == (0, 1)


def test_gguf_weights_are_the_checkpoints_with_rotary_rows_interleaved(exported):
    from safetensors.numpy import load_file

    reader = gguf.GGUFReader(exported)
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    state = load_file(default_model_dir() / "model.safetensors")
    assert "output.weight" not in tensors  # tied head: llama.cpp reuses token_embd
    np.testing.assert_array_equal(tensors["token_embd.weight"], state["model.embed_tokens.weight"])
    np.testing.assert_array_equal(tensors["blk.0.attn_v.weight"], state["model.layers.0.self_attn.v_proj.weight"])
    q = state["model.layers.3.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.3.attn_q.weight"], _permute(q, 4))
    assert not np.array_equal(_permute(q, 4), q)
    # per head, rows (i, i + d/2) of the half-split layout become rows (2i, 2i + 1)
    head = q[:32]
    np.testing.assert_array_equal(_permute(q, 4)[:32][0::2], head[:16])
    np.testing.assert_array_equal(_permute(q, 4)[:32][1::2], head[16:])
    assert len(tensors) == 2 + 4 * 9


def test_tokenizers_llama_cpp_cannot_reproduce_are_refused():
    spec = json.loads((default_model_dir() / "tokenizer.json").read_text())
    tokenizer_spec(spec)
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    with pytest.raises(KnowtuneError, match="byte-level BPE"):
        tokenizer_spec(spec)


def test_other_architectures_are_refused_with_the_converter_named(tmp_path):
    from knowtune.testing import tiny_family_model

    directory = tiny_family_model("gpt2", tmp_path / "gpt2")
    with pytest.raises(KnowtuneError, match="GPT2LMHeadModel") as error:
        export_gguf(directory, tmp_path / "gpt2.gguf")
    assert "convert_hf_to_gguf.py" in error.value.fix


def test_cli_export_gguf(tmp_path, capsys):
    from knowtune.cli import main

    def cli(*args) -> int:
        try:
            main(list(args))
        except SystemExit as exit_:
            return exit_.code or 0
        return 0

    assert cli("models", "export-gguf", "default", "--out", str(tmp_path / "m.gguf"), "--dtype", "float16") == 0
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert {t.name: t.tensor_type for t in reader.tensors}["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert cli("models", "export-gguf", "default", "--out", str(tmp_path / "x.gguf"), "--dtype", "int8") == 2
    assert "float16" in capsys.readouterr().err
