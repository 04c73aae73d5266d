"""set_trainable: train a tiny Llama a few steps and compare every parameter to a snapshot."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from knowtune.errors import ConfigError
from knowtune.train.freezing import PRESETS, set_trainable


def _tiny_llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **overrides
    )
    return LlamaForCausalLM(config)


def _train(model: torch.nn.Module, steps: int = 3) -> None:
    # Every parameter goes to the optimizer: only requires_grad decides what moves.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        input_ids = torch.randint(0, 64, (2, 8), generator=generator)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("attention", r"\.self_attn\."),
        ("mlp", r"\.mlp\."),
        (r"layers\.1\..*_proj", r"layers\.1\..*_proj"),
    ],
)
def test_only_matching_parameters_change(entry, expected):
    model = _tiny_llama()
    report = set_trainable(model, [entry])
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    _train(model)
    should_train = {name for name in before if re.search(expected, name)}
    assert should_train and len(should_train) < len(before)
    for name, param in model.named_parameters():
        if name in should_train:
            assert not torch.equal(param, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(param, before[name]), f"{name} should be frozen"
    assert set(report.trainable_names) == should_train
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_presets_pick_llama_modules():
    model = _tiny_llama()
    names = [name for name, _ in model.named_parameters()]

    def trainable(entries):
        set_trainable(model, entries)
        return {name for name, param in model.named_parameters() if param.requires_grad}

    assert trainable(["embeddings"]) == {"model.embed_tokens.weight"}
    assert trainable(["lm_head"]) == {"lm_head.weight"}
    assert trainable(["norms"]) == {n for n in names if "norm" in n}
    assert len(trainable(["norms"])) == 5
    assert trainable(["all"]) == set(names)
    assert trainable(["attention", "mlp"]) == {n for n in names if ".self_attn." in n or ".mlp." in n}


def test_presets_pick_gpt2_and_neox_modules():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    report = set_trainable(gpt2, ["attention"])
    assert set(report.trainable_names) == {f"transformer.h.0.attn.{m}.{p}" for m in ("c_attn", "c_proj") for p in ("weight", "bias")}
    assert not gpt2.transformer.h[0].mlp.c_proj.weight.requires_grad
    report = set_trainable(gpt2, ["mlp"])
    assert set(report.trainable_names) == {f"transformer.h.0.mlp.{m}.{p}" for m in ("c_fc", "c_proj") for p in ("weight", "bias")}
    assert len(set_trainable(gpt2, ["norms"]).trainable_names) == 6  # ln_1, ln_2, ln_f

    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    attention = set_trainable(neox, ["attention"]).trainable_names
    assert set(attention) == {f"gpt_neox.layers.0.attention.{m}.{p}" for m in ("query_key_value", "dense") for p in ("weight", "bias")}
    # The head is ``embed_out`` in transformers 4.x and ``lm_head`` in 5.x: the preset finds either.
    head = next(name for name, module in neox.named_modules() if module is neox.get_output_embeddings())
    assert head in ("embed_out", "lm_head")
    assert set_trainable(neox, ["lm_head"]).trainable_names == (f"{head}.weight",)
    assert set_trainable(neox, ["embeddings"]).trainable_names == ("gpt_neox.embed_in.weight",)
    assert set(set_trainable(gpt2, ["embeddings"]).trainable_names) == {"transformer.wte.weight", "transformer.wpe.weight"}


def test_presets_follow_structure_not_names():
    """An attention module under an unusual attribute name, and an OPT-style feed-forward
    directly in the block (``fc1``/``fc2``, no ``.mlp.``), are still found."""
    model = _tiny_llama()
    block = model.model.layers[0]
    block.mixer = block.self_attn
    del block.self_attn
    block.fc1, block.fc2 = block.mlp.up_proj, block.mlp.down_proj
    del block.mlp
    attention = set(set_trainable(model, ["attention"]).trainable_names)
    assert {n for n in attention if "layers.0." in n} == {f"model.layers.0.mixer.{m}_proj.weight" for m in "qkvo"}
    mlp = set(set_trainable(model, ["mlp"]).trainable_names)
    assert {n for n in mlp if "layers.0." in n} == {"model.layers.0.fc1.weight", "model.layers.0.fc2.weight"}
    assert {n for n in mlp if "layers.1." in n} == {f"model.layers.1.mlp.{m}_proj.weight" for m in ("gate", "up", "down")}


def test_presets_under_peft_select_base_weights_and_their_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    attention = set(set_trainable(model, ["attention"]).trainable_names)
    assert attention and all(".self_attn." in n for n in attention)
    assert any("lora_A" in n for n in attention) and any(n.endswith("q_proj.base_layer.weight") for n in attention)
    assert set_trainable(model, ["lm_head"]).trainable_names == ("base_model.model.lm_head.weight",)
    assert set(set_trainable(model, ["lora_"]).trainable_names) == {n for n, _ in model.named_parameters() if "lora_" in n}


def test_tied_lm_head_trains_the_embeddings_and_is_reported():
    model = _tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    report = set_trainable(model, ["lm_head"])
    assert model.model.embed_tokens.weight.requires_grad
    assert report.tied == (("model.embed_tokens.weight", "lm_head.weight"),)
    assert report.total == sum(p.numel() for p in model.parameters())  # the shared tensor counted once
    assert report.trainable == 64 * 32
    assert "model.embed_tokens.weight = lm_head.weight" in report.describe()


def test_describe_reports_counts():
    model = _tiny_llama()
    report = set_trainable(model, ["attention"])
    total = sum(p.numel() for p in model.parameters())
    attention = 2 * 4 * 32 * 32
    assert (report.trainable, report.total) == (attention, total)
    assert report.describe() == f"trainable {attention:,} / {total:,} parameters ({100 * attention / total:.1f}%)"
    assert "," in report.describe()


def test_unknown_preset_is_a_config_error_listing_presets():
    model = _tiny_llama()
    with pytest.raises(ConfigError) as error:
        set_trainable(model, ["attention", "attn_only"])
    message = error.value.render()
    assert "'attn_only'" in message and "matches no parameter" in message
    assert all(preset in message for preset in PRESETS)


def test_invalid_regex_and_empty_list_are_config_errors():
    model = _tiny_llama()
    with pytest.raises(ConfigError, match="not a preset nor a valid regular expression|neither a preset"):
        set_trainable(model, ["layers.(0"])
    with pytest.raises(ConfigError, match="empty"):
        set_trainable(model, [])


def test_a_preset_that_finds_no_module_is_a_config_error_naming_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))  # no attention, no embeddings
    for preset in ("attention", "mlp", "embeddings", "lm_head"):
        with pytest.raises(ConfigError, match=f"preset '{preset}' .* finds no parameter of Sequential"):
            set_trainable(model, [preset])
    assert set_trainable(model, ["norms"]).trainable_names == ("1.weight", "1.bias")
