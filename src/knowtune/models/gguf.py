"""Export a Llama-architecture checkpoint with a byte-level BPE tokenizer to GGUF for llama.cpp.

``knowtune models export-gguf MODEL --out FILE.gguf`` writes the weights (float32 by default,
as the in-process audit computes) and the tokenizer so that ``llama-server`` tokenizes a
prompt exactly as transformers does:

* ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE) with the vocabulary in id order and
  the merges in rank order, so llama.cpp applies the same merges in the same order;
* ``tokenizer.ggml.pre = "gpt-2"``: llama.cpp's GPT-2 pre-tokenizer regex, the one the
  Hugging Face ``ByteLevel(use_regex=True)`` pre-tokenizer applies;
* the special tokens (``added_tokens`` marked special) as control tokens, the BOS/EOS/pad
  ids, and ``add_bos_token`` as the tokenizer adds it (the default model adds none).

llama.cpp has no Unicode normaliser: a tokenizer with an NFKC/NFC normaliser (the default
model's) gives the same ids only on normalised text. knowtune's served backend sends the
text of the prompt's token ids, which is normalised; other clients must normalise
themselves (``tokenizer.backend_tokenizer.normalizer.normalize_str``).

``convert_hf_to_gguf.py`` (llama.cpp) is the general converter; it refuses tokenizers it
does not know by hash, as the default model's custom one. Tensor names come from the
``gguf`` package's own map; query and key projections are permuted from the Hugging Face
half-split rotary layout to llama.cpp's interleaved one, as ``convert_hf_to_gguf.py`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from knowtune.errors import KnowtuneError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
EXPORT_VERSION = 1  # part of the cache key of exported files (knowtune.serving.llama.model_gguf)
_FIX_CONVERTER = "export it with llama.cpp's convert_hf_to_gguf.py instead (it knows many more models and tokenizers)"


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise KnowtuneError("the `gguf` package is not installed", fix="pip install 'knowtune[serve]' (or pip install gguf)") from None
    return gguf


def tokenizer_spec(tokenizer_json: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(tokens in id order, merges as ``"a b"`` in rank order) of a byte-level BPE ``tokenizer.json``,
    after checking that llama.cpp's ``gpt2`` model with the ``gpt-2`` pre-tokenizer reproduces it."""
    model = tokenizer_json.get("model") or {}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise KnowtuneError(
            f"the tokenizer is not a GPT-2-style byte-level BPE (model {model.get('type')}, pre-tokenizer {pre.get('type')}, "
            f"use_regex {pre.get('use_regex')}, add_prefix_space {pre.get('add_prefix_space')})",
            fix=_FIX_CONVERTER,
        )
    if model.get("ignore_merges") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise KnowtuneError("the BPE tokenizer ignores merges or uses subword affixes, which llama.cpp's gpt2 tokenizer does not", fix=_FIX_CONVERTER)
    vocab = dict(model["vocab"])
    for added in tokenizer_json.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise KnowtuneError("the tokenizer's ids are not contiguous from 0", fix=_FIX_CONVERTER)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return [by_id[i] for i in range(len(by_id))], merges


def _adds_bos(tokenizer, bos_id: int | None) -> bool:
    """Whether the tokenizer puts its BOS in front of a text (what llama.cpp's add_bos_token mirrors)."""
    return bos_id is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos_id]


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection from the half-split rotary layout to the interleaved one, per head."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _rope(config) -> tuple[float, str]:
    """(rope theta, rope type) from ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4.x)."""
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = parameters.get("rope_theta", getattr(config, "rope_theta", None)) or 10000.0
    return float(theta), parameters.get("rope_type", parameters.get("type", "default"))


def _write_hparams(writer, config, name: str, n_vocab: int, file_type) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(file_type)


def _write_tokenizer(writer, gguf, tokenizer, tokenizer_json: dict[str, Any], n_vocab: int) -> None:
    tokens, merges = tokenizer_spec(tokenizer_json)
    if len(tokens) > n_vocab:
        raise KnowtuneError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab}", fix=_FIX_CONVERTER)
    special = {a["id"] for a in tokenizer_json.get("added_tokens", []) if a.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    padding = n_vocab - len(tokens)  # embedding rows beyond the tokenizer, as convert_hf_to_gguf.py names them
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens + [f"[PAD{i}]" for i in range(len(tokens), n_vocab)])
    writer.add_token_types(types + [gguf.TokenType.UNUSED] * padding)
    writer.add_token_merges(merges)
    for token_id, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("pad", writer.add_pad_token_id)):
        value = getattr(tokenizer, f"{token_id}_token_id", None)
        if value is not None:
            add(value)
    writer.add_add_bos_token(_adds_bos(tokenizer, tokenizer.bos_token_id))
    writer.add_add_eos_token(False)


def export_gguf(model_spec: str | Path, out: str | Path, *, dtype: str = "float32") -> Path:
    """Write ``model_spec`` (``default``, a local directory, or a cached hub id) to the GGUF file ``out``."""
    gguf = _require_gguf()
    from transformers import AutoConfig, AutoTokenizer

    from knowtune.models import resolve_model_dir

    if dtype not in ("float32", "float16"):
        raise KnowtuneError(f"dtype: {dtype!r} is not supported", fix="use float32 (as the in-process audit computes) or float16")
    model_dir = resolve_model_dir(model_spec)
    config = AutoConfig.from_pretrained(model_dir)
    architectures = getattr(config, "architectures", None) or []
    if not set(architectures) & set(SUPPORTED_ARCHITECTURES):
        raise KnowtuneError(f"{model_dir}: architecture {architectures} is not one knowtune exports (it exports {', '.join(SUPPORTED_ARCHITECTURES)})", fix=_FIX_CONVERTER)
    if _rope(config)[1] != "default" or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise KnowtuneError(f"{model_dir}: rope scaling or projection biases are not supported by this exporter", fix=_FIX_CONVERTER)
    tokenizer_file = Path(model_dir) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise KnowtuneError(f"{model_dir}: no tokenizer.json (a fast byte-level BPE tokenizer is needed)", fix=_FIX_CONVERTER)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    state = _load_state_dict(model_dir)
    np_dtype, file_type = (np.float32, gguf.LlamaFileType.ALL_F32) if dtype == "float32" else (np.float16, gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = state["model.embed_tokens.weight"].shape[0]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_hparams(writer, config, Path(model_dir).name, n_vocab, file_type)
    _write_tokenizer(writer, gguf, tokenizer, json.loads(tokenizer_file.read_text(encoding="utf-8")), n_vocab)
    for name, array in _gguf_tensors(gguf, config, state):
        writer.add_tensor(name, array.astype(np_dtype) if array.ndim > 1 else array)  # norms stay float32, as llama.cpp expects
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out


def _load_state_dict(model_dir) -> dict:
    """The checkpoint's tensors as float32 numpy arrays, by Hugging Face name."""
    import torch
    from transformers import AutoModelForCausalLM

    from knowtune.models import _dtype_kwargs

    model = AutoModelForCausalLM.from_pretrained(model_dir, **_dtype_kwargs("float32"))
    return {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}


def _gguf_tensors(gguf, config, state: dict):
    """(GGUF name, array) pairs of a Llama state dict; a tied output head is left out (llama.cpp reuses the embedding)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = getattr(config, "tie_word_embeddings", False)
    for key, array in state.items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KnowtuneError(f"tensor {key} has no GGUF name for the llama architecture", fix=_FIX_CONVERTER)
        if key.endswith("q_proj.weight"):
            array = _permute(array, n_head)
        elif key.endswith("k_proj.weight"):
            array = _permute(array, n_kv)
        yield name, array
