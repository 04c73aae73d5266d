"""The training half of the architecture matrix: every family of ``knowtune.testing.FAMILIES``.

Per family, on a tiny random-init model and 8 examples of the tiny world (1 epoch, batch 4):
each freezing preset selects exactly that family's modules (checked against the family's own
layout written out below, not against the presets' rules), SFT lowers the training loss and
moves exactly the preset's parameters, self-distillation against the base model trains,
LoRA (all-linear) trains only ``lora_`` parameters, and ``knowtune.evaluate`` answers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from knowtune.evaluate import evaluate_examples
from knowtune.testing import FAMILIES, tiny_family_model, tiny_world
from knowtune.train.config import LoraSettings, TrainConfig
from knowtune.train.freezing import set_trainable
from knowtune.train.sft import build_sft_rows, build_trainer, prepare_model

# Each family's layout: (decoder blocks, attention child, feed-forward children, position-embedding tables).
LAYOUT = {
    "llama": ("model.layers", "self_attn", ("mlp",), ()),
    "mistral": ("model.layers", "self_attn", ("mlp",), ()),
    "qwen2": ("model.layers", "self_attn", ("mlp",), ()),
    "qwen3": ("model.layers", "self_attn", ("mlp",), ()),
    "gemma2": ("model.layers", "self_attn", ("mlp",), ()),
    "phi3": ("model.layers", "self_attn", ("mlp",), ()),
    "gpt2": ("transformer.h", "attn", ("mlp",), ("transformer.wpe",)),
    "gpt_neox": ("gpt_neox.layers", "attention", ("mlp",), ()),
    "opt": ("model.decoder.layers", "self_attn", ("fc1", "fc2"), ("model.decoder.embed_positions",)),
    "bloom": ("transformer.h", "self_attention", ("mlp",), ()),
    "falcon": ("transformer.h", "self_attention", ("mlp",), ()),
}
FAST = dict(epochs=1, batch_size=4, learning_rate=1e-2, lr_scheduler="constant", report_to=[], eval_every_epoch=False)


def test_every_family_has_a_layout():
    assert set(LAYOUT) == set(FAMILIES)


@pytest.fixture(scope="module")
def examples():
    world = tiny_world()
    return world.split("train")[:8], world.split("dev")[:4]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: tiny_family_model(family, root / family, initializer_range=0.02) for family in FAMILIES}


def _ids(modules) -> set[int]:
    return {id(param) for module in modules for param in module.parameters()}


def _trainable_ids(model) -> set[int]:
    return {id(param) for param in model.parameters() if param.requires_grad}


def _expected(model, family: str) -> dict[str, set[int]]:
    """What each preset must select, from the family's layout and the model's public accessors."""
    blocks_path, attention, feed_forward, positions = LAYOUT[family]
    blocks = list(model.get_submodule(blocks_path))
    assert len(blocks) == model.config.num_hidden_layers
    attention_modules = [block.get_submodule(attention) for block in blocks]
    assert all("Attention" in type(module).__name__ for module in attention_modules)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in type(module).__name__]
    return {
        "attention": _ids(attention_modules),
        "mlp": _ids(block.get_submodule(name) for block in blocks for name in feed_forward),
        "embeddings": _ids([model.get_input_embeddings(), *(model.get_submodule(path) for path in positions)]),
        "lm_head": _ids([model.get_output_embeddings()]),
        "norms": _ids(norms),
    }


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(param.detach().cpu(), before[name])}


def _names(model, ids: set[int]) -> set[str]:
    return {name for name, param in model.named_parameters() if id(param) in ids}


def _loss(model, collated) -> float:
    with torch.no_grad():
        return model(**{key: value.to(model.device) for key, value in collated.items()}).loss.item()  # the Trainer moved it to a GPU


def _train(config: TrainConfig, model, tokenizer, rows, out, **kwargs):
    trainer = build_trainer(config, model, tokenizer, rows, out, save=False, **kwargs)
    trainer.train()
    return trainer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_freezes_distills_adapts_and_evaluates(family, family_dirs, examples, tmp_path):
    train, dev = examples
    tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
    base = AutoModelForCausalLM.from_pretrained(family_dirs[family])
    rows = build_sft_rows(train, tokenizer)
    collated = build_trainer(TrainConfig(**FAST), base, tokenizer, rows, tmp_path, save=False).data_collator(rows)

    # Presets: exactly the family's modules; training moves exactly them.
    for preset in ("attention", "mlp", "embeddings", "lm_head", "norms"):
        model = copy.deepcopy(base)
        ids = _expected(model, family)[preset]
        assert ids, f"{family}: no {preset} parameters in the layout"
        set_trainable(model, [preset])
        assert _trainable_ids(model) == ids, f"{family}: preset {preset} selects {_names(model, _trainable_ids(model) ^ ids)} wrongly"
        if preset in ("attention", "mlp"):
            before = _snapshot(model)
            _train(TrainConfig(**FAST, train_only=[preset]), model, tokenizer, rows, tmp_path / preset)
            assert _changed(model, before) == _names(model, ids), f"{family}: training {preset} moved other parameters"

    # SFT on everything: the training loss falls.
    model = copy.deepcopy(base)
    start = _loss(model, collated)
    _train(TrainConfig(**FAST), model, tokenizer, rows, tmp_path / "sft")
    assert _loss(model, collated) < start

    # Self-distillation against the untouched base model.
    student, teacher = copy.deepcopy(base), copy.deepcopy(base).eval()
    before = _snapshot(student)
    trainer = _train(TrainConfig(**FAST, method="selfdistill"), student, tokenizer, rows, tmp_path / "sd", teacher=teacher)
    assert _changed(student, before) == set(before)
    assert {"ce", "kl"} <= set(trainer.state.log_history[0])

    # LoRA on all linear layers: only adapter weights train, and they move.
    config = TrainConfig(**FAST, lora=LoraSettings(r=2))
    adapted, _ = prepare_model(copy.deepcopy(base), config, log=lambda _: None)
    trainable = {name for name, param in adapted.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    before = _snapshot(adapted)
    _train(config, adapted, tokenizer, rows, tmp_path / "lora")
    assert _changed(adapted, before) and _changed(adapted, before) <= trainable

    # Evaluate: greedy answers to a few dev questions, scored.
    result = evaluate_examples(model, tokenizer, dev, batch_size=4)
    assert result.overall.n == len(dev) and all(isinstance(p.prediction, str) for p in result.predictions)
