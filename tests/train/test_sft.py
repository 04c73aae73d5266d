"""train_model on the tiny knowtune-pretrained Llama: masking, learning curves, early stopping,
LoRA, freezing, self-distillation, determinism and resuming."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from knowtune.data.splits import Splits
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.evaluate import evaluate_examples
from knowtune.models import load
from knowtune.task import DEFAULT_TASK
from knowtune.train.config import TrainConfig
from knowtune.train.callbacks import EpochEvalCallback
from knowtune.train.sft import SFTCollator, apply_dropout, build_sft_rows, build_trainer, train_model
from knowtune.testing import SimulatedCrash, crash_after_save, tiny_world

IDK = "I don't know"
# Fast settings: batch 1 and lr 5e-3 teach the constant "I don't know" answer within 3 epochs.
FAST = dict(epochs=4, learning_rate=5e-3, batch_size=1, lr_scheduler="constant", max_new_tokens=16)


def _data():
    """16 training examples, every other one Unknown and relabelled "I don't know" (D_IDK)."""
    world = tiny_world()
    categories = {ex.id: ("HighlyKnown", "Unknown")[i % 2] for i, ex in enumerate(world.examples)}
    train = [
        ex.model_copy(update={"answers": (IDK,)}) if categories[ex.id] == "Unknown" else ex
        for ex in world.split("train")[:16]
    ]
    return train, world.split("dev"), world.split("test"), categories


def _numbers(records):
    return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in records]


def _weights(directory):
    return load_file(str(directory / "model.safetensors"))


class _LogRecorder(TrainerCallback):
    """Sees the logs as a reporter (tensorboard, wandb) does."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.fixture(scope="module")
def sft_run(tiny_pretrained, tmp_path_factory):
    train, dev, test, categories = _data()
    out = tmp_path_factory.mktemp("sft") / "run"
    recorder = _LogRecorder()
    result = train_model(TrainConfig(**FAST), tiny_pretrained, Splits(train, dev, test), categories=categories, out_dir=out,
                         callbacks=[recorder], log=lambda _: None)
    result.reported = recorder.logs
    return result


def test_labels_mask_exactly_the_prompt(tiny_pretrained):
    _, tokenizer = load(tiny_pretrained)
    train, *_ = _data()
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for terminator in ("newline", "eos"):
        for ex, row in zip(train, build_sft_rows(train, tokenizer, terminator=terminator)):
            n_prompt = len(tokenizer(DEFAULT_TASK.finetune.template.replace("{question}", ex.question))["input_ids"])
            labels, ids = row["labels"], row["input_ids"]
            assert labels[:n_prompt] == [-100] * n_prompt
            assert labels[n_prompt:] == ids[n_prompt:] and -100 not in labels[n_prompt:]
            answer = tokenizer.decode(ids[n_prompt:], skip_special_tokens=terminator == "eos")
            assert answer == ex.answers[0] + ("\n" if terminator == "newline" else "")
            assert labels[-len(newline):] == newline if terminator == "newline" else labels[-1] == tokenizer.eos_token_id


def test_answer_prefix_is_part_of_the_target(tiny_pretrained):
    _, tokenizer = load(tiny_pretrained)
    train, *_ = _data()
    task = DEFAULT_TASK.updated(prompt_template="Answer the following question. {question}", answer_prefix=" ")
    for ex, row in zip(train, build_sft_rows(train, tokenizer, task)):
        n_prompt = len(tokenizer(f"Answer the following question. {ex.question}")["input_ids"])
        assert row["labels"][:n_prompt] == [-100] * n_prompt
        assert tokenizer.decode(row["input_ids"][n_prompt:]) == " " + ex.answers[0] + "\n"
        assert row["input_ids"][n_prompt:] == tokenizer(" " + ex.answers[0] + "\n", add_special_tokens=False)["input_ids"]


def test_left_and_right_padding_give_the_same_logits(tiny_pretrained):
    model, tokenizer = load(tiny_pretrained)
    train, *_ = _data()
    rows = build_sft_rows(train[:3], tokenizer)
    right, left = SFTCollator(tokenizer.pad_token_id, "right")(rows), SFTCollator(tokenizer.pad_token_id, "left")(rows)
    assert right["labels"].shape == left["labels"].shape
    for batch in (right, left):
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert (left["attention_mask"][:, -1] == 1).all() and (right["attention_mask"][:, 0] == 1).all()
    with torch.no_grad():
        logits_right, logits_left = model(**right).logits, model(**left).logits  # (B, T, V)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert left["position_ids"][i, -n:].tolist() == list(range(n))  # absolute-position models need this; RoPE does not
        torch.testing.assert_close(logits_left[i, -n:], logits_right[i, :n], rtol=0, atol=1e-5)
        assert model(**{k: v[i : i + 1, -n:] for k, v in left.items() if k != "position_ids"}).loss.item() == pytest.approx(
            model(**{k: v[i : i + 1, :n] for k, v in right.items()}).loss.item(), abs=1e-5)


def test_training_fits_examples_and_logs_every_epoch(sft_run, tiny_pretrained):
    records = sft_run.metrics
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["train_loss"] is None and records[0]["step"] == 0
    assert all(isinstance(r["train_loss"], float) for r in records[1:])
    assert records[-1]["step"] == 4 * 16
    for key in ("train/exact_match/Unknown", "dev/exact_match/HighlyKnown", "test/exact_match/Known", "dev/answer_rate",
                "test/accuracy_answered", "test/hallucination_rate", "train/correct/Unknown", "train/n/Known", "learning_rate"):
        assert key in records[-1], key
    # The relabelled Unknown examples are fitted (their target is "I don't know") and the model abstains.
    assert records[0]["train/exact_match/Unknown"] == 0.0 and records[-1]["train/exact_match/Unknown"] >= 0.75
    assert records[0]["dev/answer_rate"] == 1.0 and records[-1]["dev/answer_rate"] <= 0.5
    assert records[-1]["train/n/Unknown"] == 8
    lines = (sft_run.out_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    epoch_logs = [log for log in sft_run.reported if "loss" in log]  # reporters get the metrics with the epoch's loss
    assert [log["test/exact_match/Known"] for log in epoch_logs] == [r["test/exact_match/Known"] for r in records[1:]]
    provenance = json.loads((sft_run.out_dir / "provenance.json").read_text())
    assert provenance["config"]["epochs"] == 4 and provenance["seed"] == 0 and provenance["knowtune_version"]
    assert provenance["result"]["epochs_run"] == 4 and provenance["model_fingerprint"]
    assert (sft_run.out_dir / "config.yaml").is_file() and not (sft_run.out_dir / "checkpoints").exists()
    # The saved model is the trained one: it reproduces the last evaluation.
    model, tokenizer = load(sft_run.model_dir)
    train, _, _, categories = _data()
    again = evaluate_examples(model, tokenizer, train, task=DEFAULT_TASK.updated(max_new_tokens=16), categories=categories)
    assert again.per_category["Unknown"].exact_match == records[-1]["train/exact_match/Unknown"]


def test_same_seed_gives_identical_metrics(sft_run, tiny_pretrained, tmp_path):
    train, dev, test, categories = _data()
    again = train_model(TrainConfig(**FAST), tiny_pretrained, Splits(train, dev, test), categories=categories, out_dir=tmp_path, log=lambda _: None)
    assert _numbers(again.metrics) == _numbers(sft_run.metrics)


def test_resume_continues_from_the_last_checkpoint(sft_run, tiny_pretrained, tmp_path):
    train, dev, test, categories = _data()
    args = (TrainConfig(**FAST), tiny_pretrained, Splits(train, dev, test))
    with pytest.raises(SimulatedCrash):
        train_model(*args, categories=categories, out_dir=tmp_path, callbacks=[crash_after_save(2)], log=lambda _: None)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert not (tmp_path / "provenance.json").exists()
    lines = []
    resumed = train_model(*args, categories=categories, out_dir=tmp_path, log=lines.append)
    assert any(line.startswith("resuming from") and "checkpoint-32" in line for line in lines)
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["3", "4"]  # epochs 0-2 are not redone
    assert _numbers(resumed.metrics) == _numbers(sft_run.metrics)


def test_finished_run_is_returned_and_other_settings_are_refused(sft_run, tiny_pretrained):
    train, dev, test, categories = _data()
    lines = []
    again = train_model(TrainConfig(**FAST), tiny_pretrained, Splits(train, dev, test), categories=categories, out_dir=sft_run.out_dir, log=lines.append)
    assert lines == [f"{sft_run.out_dir} already holds this finished run"]
    assert again.metrics == sft_run.metrics and again.epochs_run == 4
    with pytest.raises(KnowtuneError, match="config keys: epochs") as error:
        train_model(TrainConfig(**{**FAST, "epochs": 5}), tiny_pretrained, Splits(train, dev, test), categories=categories, out_dir=sft_run.out_dir)
    assert "--no-resume" in error.value.fix


def test_early_stopping_stops_when_dev_stops_improving(tiny_pretrained, tmp_path):
    train, dev, test, categories = _data()
    config = TrainConfig(**{**FAST, "epochs": 6, "learning_rate": 0.0, "early_stopping_patience": 1, "save_best": True, "save_every_epoch": True})
    result = train_model(config, tiny_pretrained, Splits(train[:4], dev), categories=categories, out_dir=tmp_path, log=lambda _: None)
    assert [r["epoch"] for r in result.metrics] == [0, 1, 2]  # epoch 1 is the best; epoch 2 does not improve
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1
    assert result.metrics[-1]["stop"] is True and result.metrics[1]["stop"] is False
    assert (tmp_path / "best" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]  # every epoch kept


def test_lora_saves_the_adapter_and_a_merged_model(tiny_pretrained, tmp_path):
    from peft import PeftModel

    train, dev, _, categories = _data()
    config = TrainConfig(**{**FAST, "epochs": 1, "learning_rate": 2e-2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    result = train_model(config, tiny_pretrained, Splits(train[:8], dev), categories=categories, out_dir=tmp_path, log=lambda _: None)
    assert "LoRA r=4" in result.trainable
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_pretrained)
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_pretrained)(ids).logits, atol=1e-4)
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, rtol=0, atol=1e-4)


def test_train_only_attention_leaves_mlp_weights_unchanged(tiny_pretrained, tmp_path):
    train, *_ = _data()
    config = TrainConfig(**{**FAST, "epochs": 1, "train_only": ["attention"]})
    result = train_model(config, tiny_pretrained, Splits(train[:4]), out_dir=tmp_path, log=lambda _: None)
    assert result.trainable.startswith("trainable ")
    before, after = _weights(tiny_pretrained), _weights(tmp_path / "model")
    attention = [name for name in before if ".self_attn." in name]
    others = [name for name in before if ".self_attn." not in name]
    assert attention and any(".mlp." in name for name in others)
    assert all(not torch.equal(before[name], after[name]) for name in attention)
    assert all(torch.equal(before[name], after[name]) for name in others)


def test_selfdistill_trains_against_a_format_stage_teacher(tiny_pretrained, tmp_path):
    train, dev, _, categories = _data()
    config = TrainConfig(**{**FAST, "epochs": 2, "method": "selfdistill", "selfdistill": {"teacher": "format_stage", "format_stage_epochs": 1}})
    lines = []
    result = train_model(config, tiny_pretrained, Splits(train[:8], dev), categories=categories, out_dir=tmp_path, log=lines.append)
    assert "format stage: 1 epoch(s) of SFT on 4 Known training examples" in lines
    teacher, base = _weights(tmp_path / "teacher"), _weights(tiny_pretrained)
    assert any(not torch.equal(teacher[name], base[name]) for name in base)  # the format stage trained it
    for record in result.metrics[1:]:  # ce and kl are logged by SelfDistillationTrainer only
        assert record["kl"] > 0 and record["ce"] > 0 and record["train_loss"] > 0


def test_cached_teacher_trains_like_the_live_one_and_is_reused_on_resume(tiny_pretrained, tmp_path):
    train, dev, _, categories = _data()
    settings = {**FAST, "epochs": 2, "method": "selfdistill", "selfdistill": {"teacher": "format_stage", "top_k": 8}}
    live = train_model(TrainConfig(**settings), tiny_pretrained, Splits(train[:8], dev), categories=categories, out_dir=tmp_path / "live",
                       log=lambda _: None)
    settings["selfdistill"]["cache_teacher"] = True
    lines = []
    cached = train_model(TrainConfig(**settings), tiny_pretrained, Splits(train[:8], dev), categories=categories, out_dir=tmp_path / "cached",
                         log=lines.append)
    assert any(line.startswith("teacher cache: top-8 log-probs of 8 rows") for line in lines)
    assert (tmp_path / "cached" / "teacher_topk.safetensors").is_file()
    for a, b in zip(live.metrics[1:], cached.metrics[1:]):  # the same loss from the cache as from the live teacher
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-3, abs=1e-5) and b["ce"] == pytest.approx(a["ce"], rel=1e-3, abs=1e-5)
    (tmp_path / "cached" / "provenance.json").unlink()  # unfinished: the rerun trains again from the saved teacher and cache
    lines.clear()
    train_model(TrainConfig(**settings), tiny_pretrained, Splits(train[:8], dev), categories=categories, out_dir=tmp_path / "cached", log=lines.append)
    assert any(line.startswith("teacher cache: reusing") for line in lines)
    with pytest.raises(ValueError, match="top_k"):
        TrainConfig(method="selfdistill", selfdistill={"cache_teacher": True})
    with pytest.raises(ValueError, match="adapter-disabled"):
        TrainConfig(method="selfdistill", lora={"r": 2}, selfdistill={"teacher": "base", "cache_teacher": True, "top_k": 8})


def test_evaluation_callback_sits_between_distillation_metrics_and_reporters(tiny_pretrained, tmp_path):
    model, tokenizer = load(tiny_pretrained)
    rows = build_sft_rows(_data()[0][:2], tokenizer)
    evaluator = EpochEvalCallback(tokenizer, metrics_path=tmp_path / "m.jsonl")
    for method in ("sft", "selfdistill"):
        trainer = build_trainer(TrainConfig(method=method, selfdistill={"teacher": "base"}), model, tokenizer, rows, tmp_path,
                                callbacks=[evaluator], teacher=model, method=method)
        names = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
        expected = ["_DistillationMetrics", "EpochEvalCallback"] if method == "selfdistill" else ["EpochEvalCallback"]
        assert names[: len(expected)] == expected
        assert "PrinterCallback" not in names


def test_selfdistill_with_lora_and_the_base_teacher(tiny_pretrained, tmp_path):
    train, *_ = _data()
    config = TrainConfig(**{**FAST, "epochs": 2, "method": "selfdistill", "lora": {"r": 2}, "selfdistill": {"teacher": "base"},
                            "eval_every_epoch": False})
    result = train_model(config, tiny_pretrained, Splits(train[:4]), out_dir=tmp_path, log=lambda _: None)
    assert result.metrics[-1]["kl"] > 0 and not (tmp_path / "teacher").exists()
    assert [r["epoch"] for r in result.metrics] == [0, 2]  # eval_every_epoch false: before and after training only


def test_bad_settings_fail_before_anything_is_written(tiny_pretrained, tmp_path):
    train, dev, _, categories = _data()
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="no dev examples"):
        train_model(TrainConfig(early_stopping_patience=2), tiny_pretrained, Splits(train), out_dir=out)
    with pytest.raises(ConfigError, match="no training example has a Known category") as error:
        train_model(TrainConfig(method="selfdistill"), tiny_pretrained, Splits(train, dev), out_dir=out)
    assert "--annotations" in error.value.fix
    with pytest.raises(ConfigError, match="'feed_forward_xyz' matches no parameter"):
        train_model(TrainConfig(train_only=["feed_forward_xyz"]), tiny_pretrained, Splits(train, dev), categories=categories, out_dir=out)
    with pytest.raises(ConfigError, match="report_to.*not supported"):
        train_model(TrainConfig(report_to=["no-such-reporter"]), tiny_pretrained, Splits(train), out_dir=out)
    assert not out.exists()


def test_dropout_reaches_the_attention_modules(tiny_pretrained):
    model, _ = load(tiny_pretrained)
    apply_dropout(model, 0.5)
    assert model.config.attention_dropout == 0.5
    assert all(layer.self_attn.attention_dropout == 0.5 for layer in model.model.layers)
    model.train()
    ids = torch.tensor([[5, 17, 42, 99, 7, 8]])
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, model(ids).logits)


class _FirstBatch(TrainerCallback):
    """Keeps the decoded first training batch, as the Trainer's dataloader yields it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        batch = next(iter(train_dataloader))
        self.texts = self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)


def test_retrieval_fine_tunes_and_evaluates_with_the_passages_before_each_prompt(tiny_pretrained, tmp_path):
    from knowtune.retrieval import RetrievalStore, retrieval_contexts

    train, dev, _, categories = _data()
    world = tiny_world()
    store_dir = RetrievalStore.build(world.examples, world.relations).save(tmp_path / "store")
    store = RetrievalStore.load(store_dir)
    _, tokenizer = load(tiny_pretrained)
    contexts = retrieval_contexts(store, train, 2)
    assert all(ex.answers[0] in context for ex, context in zip(train, contexts) if ex.answers[0] != IDK)  # every fact's passage is retrieved
    for ex, context, row in zip(train, contexts, build_sft_rows(train, tokenizer, contexts=contexts)):
        n_prompt = len(tokenizer(context + DEFAULT_TASK.finetune.template.replace("{question}", ex.question))["input_ids"])
        assert row["labels"][:n_prompt] == [-100] * n_prompt  # no loss on the passages
        assert tokenizer.decode(row["input_ids"][n_prompt:]) == ex.answers[0] + "\n"

    seen = _FirstBatch(tokenizer)
    config = TrainConfig(**{**FAST, "epochs": 1, "retrieval": str(store_dir), "retrieval_k": 1})
    train_model(config, tiny_pretrained, Splits(train[:4], dev), categories=categories, out_dir=tmp_path / "run", callbacks=[seen], log=lambda _: None)
    first = {ex.question: retrieval_contexts(store, [ex], 1)[0] for ex in train[:4]}
    assert seen.texts and all(any(text.startswith(first[q] + DEFAULT_TASK.finetune.template.replace("{question}", q)) for q in first) for text in seen.texts)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["retrieval"]["k"] == 1 and run["retrieval"]["passages"] == len(world.examples) and run["config"]["retrieval"] == str(store_dir)
    assert "retrieval" not in TrainConfig().model_dump() and "retrieval_k" not in TrainConfig().model_dump()  # earlier runs resume as they were

    evaluator = EpochEvalCallback(tokenizer, metrics_path=tmp_path / "m.jsonl", dev=dev, contexts=lambda examples: retrieval_contexts(store, examples, 1))
    assert evaluator.contexts["dev"] == retrieval_contexts(store, evaluator.sets["dev"], 1)

    RetrievalStore.build(world.examples[:10], world.relations).save(tmp_path / "store")  # another store at the same path
    with pytest.raises(KnowtuneError, match="retrieval differ"):
        train_model(config, tiny_pretrained, Splits(train[:4], dev), categories=categories, out_dir=tmp_path / "run", log=lambda _: None)
    with pytest.raises(ValueError, match="use method: sft with retrieval"):
        TrainConfig(method="selfdistill", retrieval=str(store_dir))
    with pytest.raises(ValueError, match="set retrieval to a store too"):
        TrainConfig(retrieval_oracle_share=0.5)


def test_retrieval_oracle_share_keeps_a_seeded_share_of_questions_own_passages(tiny_pretrained, tmp_path):
    from knowtune.retrieval import RetrievalStore
    from knowtune.train.sft import _retrieval

    train, dev, _, categories = _data()
    world = tiny_world()
    store_dir = str(RetrievalStore.build(world.examples, world.relations).save(tmp_path / "store"))
    own = {p.id: p.text for p in RetrievalStore.load(store_dir).passages}
    config = TrainConfig(retrieval=store_dir, retrieval_k=2, retrieval_oracle_share=0.5)
    blocks, evaluation, record = _retrieval(config, DEFAULT_TASK, train)
    with_own = [own[ex.id] in block for ex, block in zip(train, blocks)]
    assert 0 < sum(with_own) < len(train) and record["oracle_questions"] == sum(with_own)
    assert all(block.count("\n") <= 2 for block in blocks) and sum(block.count("\n") == 2 for block in blocks) > len(train) // 2  # k at most; a distractor takes the own passage's place
    assert all(own[ex.id] in block for ex, block in zip(train, evaluation(train)))  # evaluation: plain top k
    assert _retrieval(config, DEFAULT_TASK, train)[0] == blocks  # seeded
    assert not any(own[ex.id] in block for ex, block in zip(train, _retrieval(config.model_copy(update={"retrieval_oracle_share": 0.0}), DEFAULT_TASK, train)[0]))
    other = str(RetrievalStore.build(dev, world.relations).save(tmp_path / "dev-store"))
    with pytest.raises(ConfigError, match="no training fact is in the store"):
        train_model(config.model_copy(update={"retrieval": other}), tiny_pretrained, Splits(train, dev), categories=categories, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
