"""EpochEvalCallback, early stopping and best-model saving, without a full training run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, TrainingArguments

from knowtune.models import load
from knowtune.task import DEFAULT_TASK
from knowtune.errors import ConfigError
from knowtune.train.callbacks import (DriftTracker, EarlyStopping, EpochEvalCallback, eval_subset, read_metrics, save_model_dir,
                                      select_drift_examples)
from knowtune.testing import tiny_world


def _categories(world):
    return {ex.id: ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")[i % 4] for i, ex in enumerate(world.examples)}


@pytest.mark.parametrize(
    "values, patience, best_epoch, stop_at",
    [
        ([0.1, 0.3, 0.3, 0.2, 0.4], 2, 2, 4),  # epochs 3 and 4 do not beat 0.3
        ([0.1, 0.3, 0.3, 0.4, 0.4], 2, 4, None),  # an equal value is no improvement, a higher one resets
        ([0.5, 0.5], 1, 1, 2),
        ([None, None], 2, None, 2),  # no dev set: never improves
        ([0.1, 0.0, 0.0, 0.0], None, 1, None),  # patience None: never stops
    ],
)
def test_early_stopping_counts_evaluations_without_improvement(values, patience, best_epoch, stop_at):
    stopper = EarlyStopping(patience)
    stopped = None
    for epoch, value in enumerate(values, start=1):
        stopper.update(epoch, value)
        if stopper.should_stop:
            stopped = epoch
            break
    assert (stopper.best_epoch, stopped) == (best_epoch, stop_at)


def test_eval_subset_is_a_seeded_sample_in_original_order():
    examples = tiny_world().split("train")
    subset = eval_subset(examples, 10, seed=3)
    assert len(subset) == 10 and subset == eval_subset(examples, 10, seed=3) != eval_subset(examples, 10, seed=4)
    positions = [examples.index(ex) for ex in subset]
    assert positions == sorted(positions)
    assert eval_subset(examples, None, 0) == examples == eval_subset(examples, len(examples), 0)


def test_epoch_zero_record_has_every_set_and_category(tiny_pretrained, tmp_path):
    model, tokenizer = load(tiny_pretrained)
    world = tiny_world()
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 7}\n')  # a stale file is replaced at the start of training
    callback = EpochEvalCallback(
        tokenizer, metrics_path=path, train=world.split("train"), dev=world.split("dev"), test=world.split("test")[:6],
        ood=world.split("test")[6:], categories=_categories(world), max_examples=8, task=DEFAULT_TASK.updated(max_new_tokens=4), log=lambda _: None,
    )
    callback.on_train_begin(TrainingArguments(str(tmp_path)), TrainerState(), TrainerControl(), model=model)
    (record,) = read_metrics(path)
    assert record["epoch"] == 0 and record["step"] == 0 and record["train_loss"] is None
    assert (record["train/n"], record["dev/n"], record["test/n"], record["ood/n"]) == (8, 6, 6, 6)
    for prefix in ("train", "dev", "test", "ood"):
        for group in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown", "Known"):
            assert f"{prefix}/exact_match/{group}" in record and f"{prefix}/correct/{group}" in record
        assert record[f"{prefix}/n/Known"] + record[f"{prefix}/n/Unknown"] == record[f"{prefix}/n"]
    assert record["test/answer_rate"] == 1.0


def test_resume_keeps_lines_up_to_the_checkpoint_and_replays_early_stopping(tiny_pretrained, tmp_path):
    _, tokenizer = load(tiny_pretrained)
    path = tmp_path / "metrics.jsonl"
    values = [0.0, 0.2, 0.5, 0.4, 0.6]  # epoch 4 was evaluated but its checkpoint never saved
    path.write_text("".join(json.dumps({"epoch": e, "dev/exact_match": v}) + "\n" for e, v in enumerate(values)))
    callback = EpochEvalCallback(tokenizer, metrics_path=path, early_stopping_patience=3, log=lambda _: None)
    callback.on_train_begin(TrainingArguments(str(tmp_path)), TrainerState(global_step=30, epoch=3.0), TrainerControl())
    assert [r["epoch"] for r in read_metrics(path)] == [0, 1, 2, 3]
    assert (callback.stopper.best_epoch, callback.stopper.best, callback.stopper.bad_evaluations) == (2, 0.5, 1)


def test_stop_and_best_model_follow_dev_exact_match(tiny_pretrained, tmp_path):
    model, tokenizer = load(tiny_pretrained)
    world = tiny_world()
    callback = EpochEvalCallback(tokenizer, metrics_path=tmp_path / "metrics.jsonl", dev=world.split("dev"), task=DEFAULT_TASK.updated(max_new_tokens=4),
                                 early_stopping_patience=1, best_dir=tmp_path / "best", log=lambda _: None)
    args, control = TrainingArguments(str(tmp_path), num_train_epochs=5), TrainerControl()
    callback.on_train_begin(args, TrainerState(), control, model=model)
    callback.on_epoch_end(args, TrainerState(epoch=1.0, global_step=2), control, model=model)
    assert (tmp_path / "best" / "config.json").is_file() and not control.should_training_stop
    callback.on_log(args, TrainerState(), control, logs={"loss": 1.5})
    callback.on_epoch_end(args, TrainerState(epoch=2.0, global_step=4), control, model=model)  # same dev EM: no improvement
    assert control.should_training_stop
    callback.on_train_end(args, TrainerState(), control)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["epoch"], r["train_loss"], r["best_epoch"]) for r in records] == [(0, None, None), (1, 1.5, 1), (2, None, 1)]


def test_save_model_dir_replaces_the_directory_and_merges_lora(tiny_pretrained, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load(tiny_pretrained)
    target = tmp_path / "best"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    save_model_dir(peft_model, tokenizer, target)
    assert not (target / "stale.bin").exists() and [p.name for p in tmp_path.iterdir()] == ["best"]
    assert any("lora" in name for name, _ in peft_model.named_parameters())  # the training model keeps its adapters
    loaded = AutoModelForCausalLM.from_pretrained(target)
    ids = torch.tensor([[3, 9, 27, 81]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model(ids).logits, rtol=0, atol=1e-5)


def test_drift_examples_default_to_known_and_honour_groups_and_cap():
    test = tiny_world().split("test")
    categories = _categories(tiny_world())
    known = [ex for ex in test if categories[ex.id] != "Unknown"]
    assert select_drift_examples("test", test, categories, None, None, 0) == known  # Kaplan et al.: held-out Known facts
    assert select_drift_examples("test", test, None, None, None, 0) == test  # no categories: every example
    unknown = select_drift_examples("test", test, categories, ["Unknown"], None, 0)
    assert unknown and all(categories[ex.id] == "Unknown" for ex in unknown)
    assert select_drift_examples("test", test, categories, ["Known", "Unknown"], None, 0) == test
    assert select_drift_examples("test", test, categories, None, 2, 5) == eval_subset(known, 2, 5)
    with pytest.raises(ConfigError, match="no ood examples"):
        select_drift_examples("ood", [], categories, None, None, 0)


def test_callback_writes_drift_from_the_tracker_reference(tiny_pretrained, tmp_path):
    model, tokenizer = load(tiny_pretrained)
    world = tiny_world()
    test, categories = world.split("test"), _categories(world)
    tracker = DriftTracker.from_base(model, tokenizer, test, categories=categories, layer=1)
    assert set(tracker.groups) == {"HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown", "Known"}
    callback = EpochEvalCallback(tokenizer, metrics_path=tmp_path / "metrics.jsonl", drift=tracker, log=lambda _: None)
    args, control = TrainingArguments(str(tmp_path), num_train_epochs=2), TrainerControl()
    callback.on_train_begin(args, TrainerState(), control, model=model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    callback.on_epoch_end(args, TrainerState(epoch=1.0, global_step=2), control, model=model)
    callback.on_train_end(args, TrainerState(), control)
    before, after = read_metrics(tmp_path / "metrics.jsonl")
    assert before["drift/cosine"] == 0.0 and before["drift/n"] == len(test)
    assert after["drift/cosine"] > 0 and all(after[f"drift/cosine/{g}"] > 0 for g in tracker.groups)
