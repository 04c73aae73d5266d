"""Each transformers internal wrapped in ``knowtune.compat`` still behaves as knowtune relies on.

A transformers release that renames, moves or changes one of them fails here, by name,
instead of making the SliCK engine slow, wrong or broken somewhere else.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

from knowtune import compat
from knowtune.slick.kvcache import preallocated_cache


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, max_position_embeddings=64, initializer_range=0.5)
    return LlamaForCausalLM(config).eval()


def _ids(length: int = 7, batch: int = 2) -> torch.Tensor:
    return torch.arange(batch * length).reshape(batch, length) % 60 + 2


def test_repeat_kv_repeats_each_kv_head_for_its_query_heads():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(compat.repeat_kv(x, 2), x.repeat_interleave(2, dim=1))


def test_sdpa_attention_forward_takes_knowtunes_arguments_and_returns_b_q_h_d():
    class Module(torch.nn.Module):
        num_key_value_groups, is_causal = 2, False

    query, key, value = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    bias = torch.zeros(2, 1, 3, 5).masked_fill_(torch.rand(2, 1, 3, 5) < 0.3, float("-inf"))
    bias[..., 0] = 0.0
    out, weights = compat.sdpa_attention_forward(Module(), query, key, value, bias, scaling=0.3, dropout=0.0)
    scores = query @ compat.repeat_kv(key, 2).transpose(2, 3) * 0.3 + bias
    expected = (scores.softmax(-1) @ compat.repeat_kv(value, 2)).transpose(1, 2)  # (B, Q, H, D)
    assert weights is None and out.shape == (2, 3, 4, 8)
    torch.testing.assert_close(out, expected)


def test_registered_attention_receives_extra_forward_arguments(llama):
    calls = []

    def recording(module, query, key, value, attention_mask, scaling=None, dropout=0.0, knowtune_test=None, **kwargs):
        calls.append((module.layer_idx, knowtune_test))
        return compat.sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    compat.register_attention("knowtune_test_recording", recording)
    before = llama.config._attn_implementation
    expected = llama(input_ids=_ids()).logits
    with compat.attention_implementation(llama, "knowtune_test_recording"):
        logits = llama(input_ids=_ids(), knowtune_test="seen").logits
    assert calls == [(0, "seen"), (1, "seen")]  # every layer, the model's extra argument passed down
    torch.testing.assert_close(logits, expected)
    assert llama.config._attn_implementation == before
    llama(input_ids=_ids())
    assert len(calls) == 2  # restored: the registered function is no longer called


def test_uses_attention_registry_reads_the_class_flag(llama):
    bloom = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_head=4, n_layer=1))
    assert compat.uses_attention_registry(llama) and not compat.uses_attention_registry(bloom)


def test_model_output_and_cache_argument(llama):
    ids = _ids()
    out = llama(input_ids=ids[:, :-1], use_cache=True)
    cache = compat.output_cache(out)
    layers = compat.cache_layers(cache)
    assert len(layers) == 2 and layers[0][0].shape == (2, 2, ids.shape[1] - 1, 8)  # (B, Hkv, T, D)
    argument = compat.cache_argument(llama)
    assert argument in inspect.signature(llama.forward).parameters
    step = llama(input_ids=ids[:, -1:], use_cache=True, **{argument: cache}).logits[:, -1]
    torch.testing.assert_close(step, llama(input_ids=ids).logits[:, -1], atol=1e-5, rtol=1e-5)
    assert compat.cache_layers(compat.output_cache(out))[0][0].shape[2] == ids.shape[1]  # updated in place


def test_dynamic_layer_contract():
    layer = compat.DynamicLayer()
    keys, values = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    out_k, _ = layer.update(keys, values, {"cache_position": None})
    assert torch.equal(out_k, keys) and layer.get_seq_length() == 4
    layer.batch_select_indices(torch.tensor([2, 2, 0]))
    assert torch.equal(layer.keys, keys[[2, 2, 0]])
    assert {"update", "get_seq_length", "batch_select_indices", "batch_repeat_interleave", "crop", "get_mask_sizes"} <= set(dir(layer))


def test_a_cache_of_knowtunes_layers_decodes_like_the_models_own(llama):
    """``cache_from_layers`` with ``PreallocatedLayer`` (a ``DynamicLayer`` subclass): the
    model writes into it, masks from it and selects rows of it like its own cache."""
    ids = _ids(9)
    empty = [(torch.zeros(2, 2, 0, 8), torch.zeros(2, 2, 0, 8)) for _ in range(2)]
    cache = preallocated_cache(empty, capacity=4)  # grows past its capacity below
    argument = compat.cache_argument(llama)
    llama(input_ids=ids[:, :-2], use_cache=True, **{argument: cache})
    llama(input_ids=ids[:, -2:-1], use_cache=True, **{argument: cache})
    cache.batch_select_indices(torch.tensor([1, 1, 0]))
    step = llama(input_ids=ids[[1, 1, 0], -1:], use_cache=True, **{argument: cache}).logits[:, -1]
    assert cache.get_seq_length() == ids.shape[1] and len(cache.layers) == 2
    torch.testing.assert_close(step, llama(input_ids=ids).logits[[1, 1, 0], -1], atol=1e-5, rtol=1e-5)


def test_require_layered_cache_passes_on_supported_versions():
    compat.require_layered_cache()


# --- training (knowtune.train) ---------------------------------------------------------

@pytest.mark.parametrize("ratio, steps, expected", [(0.0, 10, 0), (0.25, 10, 3), (0.1, 7, 1), (0.5, 1, 1), (1.0, 10, 10), (1.0, 1, 1)])
def test_warmup_arguments_give_ceil_of_ratio_times_steps(ratio, steps, expected, tmp_path):
    """``warmup_ratio`` (4.x) and a float ``warmup_steps`` below 1 (5.x) both warm up for
    ceil(steps * ratio) steps; a ratio of 1 is every step, not one step."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **compat.warmup_arguments(ratio))
    assert args.get_warmup_steps(steps) == expected


def test_reporter_logging_dir_reaches_tensorboard(tmp_path, monkeypatch):
    """4.x takes ``logging_dir``; 5.x's TensorBoard callback reads TENSORBOARD_LOGGING_DIR when made."""
    import os

    from transformers import TrainingArguments
    from transformers.integrations import TensorBoardCallback

    monkeypatch.delenv(compat.TENSORBOARD_LOGGING_DIR, raising=False)
    target = str(tmp_path / "runs")
    with compat.reporter_logging_dir(tmp_path / "runs") as keywords:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **keywords)
        if keywords:
            assert args.logging_dir == target
        else:
            assert os.environ[compat.TENSORBOARD_LOGGING_DIR] == target
            assert compat.TENSORBOARD_LOGGING_DIR in inspect.getsource(TensorBoardCallback.__init__)
    assert compat.TENSORBOARD_LOGGING_DIR not in os.environ
