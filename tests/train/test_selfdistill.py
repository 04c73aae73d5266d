"""SelfDistillationTrainer on a tiny real Llama: training, logging, equivalences, teacher kinds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from knowtune.errors import ConfigError
from knowtune.train.losses import target_mask
from knowtune.train.selfdistill import (
    TEACHER_TOPK_LOGPROBS,
    SelfDistillationConfig,
    SelfDistillationTrainer,
    TeacherTopKCollator,
    load_teacher_topk,
    logits_at,
    precompute_teacher_topk,
    save_teacher_topk,
    with_teacher_topk,
)

VOCAB = 64


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return LlamaForCausalLM(config)


def _other_teacher() -> LlamaForCausalLM:
    """A different tiny model with peaked outputs, so the KL to the student is far from 0."""
    teacher = _tiny_llama(seed=1)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(20)
    return teacher


def _rows(n: int = 4) -> list[dict]:
    """Prompt tokens labelled -100, answers of 1 to 4 tokens, rows of different lengths."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        prompt, answer = 3 + i % 3, 1 + i % 4
        ids = torch.randint(1, VOCAB, (prompt + answer,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def _args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        learning_rate=5e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**values, **overrides})


def _train_logs(trainer: Trainer) -> list[dict]:
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_trains_and_logs_ce_and_kl(tmp_path):
    student = _tiny_llama()
    config = SelfDistillationConfig(lambda_kl=1.0, temperature=0.5)
    reported = []

    class Reporter(TrainerCallback):  # stands in for tensorboard / wandb
        def on_log(self, args, state, control, logs=None, **kwargs):
            reported.append(dict(logs))

    trainer = SelfDistillationTrainer(
        student, _args(tmp_path), teacher=copy.deepcopy(student), distill_config=config,
        train_dataset=_rows(), data_collator=TeacherTopKCollator(), callbacks=[Reporter()],
    )
    logs = _train_logs(trainer)
    assert len(logs) == 3
    assert [entry["kl"] for entry in reported if "loss" in entry] == [entry["kl"] for entry in logs]
    for entry in logs:
        assert math.isfinite(entry["ce"]) and math.isfinite(entry["kl"])
        assert entry["loss"] == pytest.approx(entry["ce"] + 0.25 * entry["kl"], abs=1e-4)  # tau^2 = 0.25
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the teacher is the step-0 student
    assert logs[-1]["kl"] > 1e-4
    assert logs[-1]["ce"] < logs[0]["ce"]


def test_lambda_zero_equals_plain_trainer_cross_entropy(tmp_path):
    student = _tiny_llama()
    batch = TeacherTopKCollator()(_rows())
    plain = Trainer(student, _args(tmp_path))
    distill = SelfDistillationTrainer(
        student, _args(tmp_path), teacher=_other_teacher(), distill_config=SelfDistillationConfig(lambda_kl=0.0)
    )
    for num_items in (None, torch.tensor(23)):
        expected = plain.compute_loss(student, dict(batch), num_items_in_batch=num_items)
        actual = distill.compute_loss(student, dict(batch), num_items_in_batch=num_items)
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("top_k", [None, 8])
def test_cached_teacher_gives_the_live_teacher_loss(tmp_path, top_k):
    student, teacher = _tiny_llama(), _other_teacher()
    config = SelfDistillationConfig(temperature=0.5, top_k=top_k)
    rows = _rows(5)
    cache = precompute_teacher_topk(teacher, rows, k=top_k or VOCAB, batch_size=3, temperature=0.5)
    save_teacher_topk(cache, tmp_path / "cache")
    loaded = load_teacher_topk(tmp_path / "cache")
    assert (loaded["k"], loaded["temperature"], loaded["vocab_size"]) == (top_k or VOCAB, 0.5, VOCAB)
    cached_batch = TeacherTopKCollator()(with_teacher_topk(rows, loaded, config))
    assert cached_batch[TEACHER_TOPK_LOGPROBS].shape == (5, 8, top_k or VOCAB)
    live_batch = TeacherTopKCollator()(rows)

    live = SelfDistillationTrainer(student, _args(tmp_path), teacher=teacher, distill_config=config)
    cached = SelfDistillationTrainer(student, _args(tmp_path), teacher=None, distill_config=config)
    live_loss = live.compute_loss(student, live_batch)
    cached_loss = cached.compute_loss(student, cached_batch)
    torch.testing.assert_close(cached_loss, live_loss, rtol=0, atol=1e-5)
    ce = student(**live_batch).loss
    assert float(live_loss.detach() - ce.detach()) > 0.1  # the KL term is really there


def test_cached_teacher_trains_through_trainer_column_filtering(tmp_path):
    student, teacher = _tiny_llama(), _other_teacher()
    config = SelfDistillationConfig(top_k=8)
    rows = _rows()
    cache = precompute_teacher_topk(teacher, rows, k=8, batch_size=4, temperature=config.temperature)
    # remove_unused_columns=True (the default) must keep the teacher columns; teacher=None with a
    # non-PEFT student has no other teacher, so a dropped column would raise.
    trainer = SelfDistillationTrainer(
        student, _args(tmp_path, max_steps=1), distill_config=config,
        train_dataset=with_teacher_topk(rows, cache, config), data_collator=TeacherTopKCollator(),
    )
    (log,) = _train_logs(trainer)
    assert log["kl"] > 1e-2


def test_cache_must_match_the_stage(tmp_path):
    rows = _rows()
    cache = precompute_teacher_topk(_tiny_llama(), rows, k=8, batch_size=4, temperature=1.0)
    with pytest.raises(ConfigError, match="temperature"):
        with_teacher_topk(rows, cache, SelfDistillationConfig(temperature=0.5, top_k=8))
    with pytest.raises(ConfigError, match="full-vocabulary"):
        with_teacher_topk(rows, cache, SelfDistillationConfig(temperature=1.0))
    with pytest.raises(ConfigError, match="exceeds"):
        with_teacher_topk(rows, cache, SelfDistillationConfig(temperature=1.0, top_k=9))


def test_peft_adapter_disabled_teacher_starts_at_zero_kl(tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    student = get_peft_model(_tiny_llama(), lora)
    trainer = SelfDistillationTrainer(
        student, _args(tmp_path, max_steps=2, learning_rate=1e-2), teacher=None,
        train_dataset=_rows(), data_collator=TeacherTopKCollator(),
    )
    logs = _train_logs(trainer)
    assert logs[0]["kl"] == 0.0  # LoRA B starts at zero: the student is its base model
    assert logs[1]["kl"] > 1e-6  # after one step the adapters move the student, not the teacher
    assert student.training


def test_batch_and_accumulation_take_the_same_step(tmp_path):
    rows = _rows(8)

    def run(batch_size, accumulation):
        student = _tiny_llama()
        args = _args(
            tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            max_steps=2, optim="sgd", learning_rate=0.5,
        )
        trainer = SelfDistillationTrainer(
            student, args, teacher=_other_teacher(), train_dataset=rows, data_collator=TeacherTopKCollator()
        )
        return _train_logs(trainer), student

    (logs_a, model_a), (logs_b, model_b) = run(4, 1), run(2, 2)
    for a, b in zip(logs_a, logs_b):
        for key in ("loss", "ce", "kl"):
            assert a[key] == pytest.approx(b[key], abs=2e-4)
    for (name, p_a), p_b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(p_a, p_b, rtol=0, atol=1e-5, msg=name)


def test_config_rejects_unknown_and_invalid_values():
    with pytest.raises(ValueError, match="lambda_typo"):
        SelfDistillationConfig(lambda_typo=1.0)
    with pytest.raises(ValueError, match="direction"):
        SelfDistillationConfig(direction="sideways")
    with pytest.raises(ValueError, match="temperature"):
        SelfDistillationConfig(temperature=0)


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kl_tokens", ["answer", "sequence"])
@pytest.mark.parametrize("teacher_kind", ["live", "peft", "cached"])
def test_logits_at_target_positions_give_the_full_logits_loss_and_gradients(tmp_path, teacher_kind, kl_tokens):
    config = SelfDistillationConfig(temperature=0.5, top_k=8 if teacher_kind == "cached" else None, kl_tokens=kl_tokens)
    rows, teacher = _rows(5), _other_teacher()
    student = _tiny_llama()
    if teacher_kind == "peft":
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
        student = get_peft_model(student, lora)
        with torch.no_grad():  # move the adapters off zero, so the student is not its own teacher
            for name, p in student.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.5)
        teacher = None
    if teacher_kind == "cached":
        cache = precompute_teacher_topk(teacher, rows, k=8, batch_size=5, temperature=0.5)
        rows, teacher = with_teacher_topk(rows, cache, config), None
    batch = TeacherTopKCollator()(rows)
    trainer = SelfDistillationTrainer(student, _args(tmp_path), teacher=teacher, distill_config=config)
    student.train()

    fast = trainer.compute_loss(student, dict(batch), num_items_in_batch=torch.tensor(15))
    fast.backward()
    fast_grads = _grads(student)
    student.zero_grad()

    # Direct computation: full (B, T, V) logits of student and teacher, SelfDistillationLoss.forward.
    plain = {k: batch[k] for k in ("input_ids", "attention_mask")}
    logits = student(**plain).logits  # (B, T, V)
    if teacher_kind == "live":
        teacher_side = {"teacher_logits": teacher(**plain).logits.detach()}
    elif teacher_kind == "peft":
        with torch.no_grad(), student.disable_adapter():
            student.eval()
            teacher_side = {"teacher_logits": student(**plain).logits}
            student.train()
    else:
        teacher_side = {k: batch[k] for k in (TEACHER_TOPK_LOGPROBS, "teacher_topk_indices")}
    direct = trainer.distill_loss(logits, batch["labels"], num_items_in_batch=torch.tensor(15), attention_mask=batch["attention_mask"],
                                  **teacher_side)
    direct.total.backward()
    torch.testing.assert_close(fast, direct.total, rtol=0, atol=1e-6)
    assert float(direct.kl.detach()) > 0.01  # the KL term is really there
    direct_grads = _grads(student)
    assert fast_grads.keys() == direct_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, direct_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_logits_at_computes_the_output_layer_at_the_masked_positions_only():
    model, batch = _tiny_llama(), TeacherTopKCollator()(_rows(5))
    mask = target_mask(batch["labels"])
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    with logits_at(model, mask) as select:
        picked = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert picked.shape == (int(mask.sum()), VOCAB)  # (N, V): the hook handed lm_head N rows
    torch.testing.assert_close(select(picked), full[mask])
    assert select(full).shape == picked.shape  # (B, T, V) logits are picked out afterwards
    assert model(input_ids=batch["input_ids"]).logits.shape == full.shape  # the hook is gone


def test_return_outputs_keeps_the_full_logits(tmp_path):
    student, batch = _tiny_llama(), TeacherTopKCollator()(_rows())
    trainer = SelfDistillationTrainer(student, _args(tmp_path), teacher=_other_teacher())
    loss, outputs = trainer.compute_loss(student, dict(batch), return_outputs=True)
    assert outputs.logits.shape == (*batch["input_ids"].shape, VOCAB)
    torch.testing.assert_close(loss, trainer.compute_loss(student, dict(batch)), rtol=0, atol=1e-6)
