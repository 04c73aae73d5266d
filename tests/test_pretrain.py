import json
import shutil

import accelerate
import pytest
import torch
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from knowtune.errors import KnowtuneError
from knowtune.testing import tiny_pretrain_config, tiny_world
from knowtune.pretrain import RENEWED_RESUME_ACCELERATE, PackedBlocks, load_exposures, pretrain, train_tokenizer
from knowtune.provenance import model_fingerprint


def test_pretrained_dir_loads_with_auto_classes(tiny_pretrained):
    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained)
    tokenizer = AutoTokenizer.from_pretrained(tiny_pretrained)
    assert model.config.model_type == "llama"
    ids = tokenizer("Q: Where does x work?\nA:", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    assert tokenizer.decode(tokenizer("Hello, world!\nA: x")["input_ids"]) == "Hello, world!\nA: x"
    for name in ("exposures.jsonl", "pretrain_config.yaml", "provenance.json", "tokenizer.json", "model.safetensors"):
        assert (tiny_pretrained / name).is_file(), name
    provenance = json.loads((tiny_pretrained / "provenance.json").read_text())
    assert provenance["model_fingerprint"] == model_fingerprint(tiny_pretrained)
    assert provenance["knowtune_version"] and provenance["seed"] == 0


def test_exposure_ground_truth_covers_every_fact(tiny_pretrained):
    exposures = load_exposures(tiny_pretrained)
    world = tiny_world()
    assert set(exposures) == {ex.id for ex in world.examples}
    assert any(r["exposures"] == 0 for r in exposures.values()) and any(r["exposures"] > 3 for r in exposures.values())


def test_same_seed_same_weights(tmp_path, tiny_pretrained):
    pretrain(tiny_world(), tiny_pretrain_config(), tmp_path / "again", log=lambda _: None)
    assert model_fingerprint(tmp_path / "again") == model_fingerprint(tiny_pretrained)
    pretrain(tiny_world(), tiny_pretrain_config(seed=1), tmp_path / "other", log=lambda _: None)
    assert model_fingerprint(tmp_path / "other") != model_fingerprint(tiny_pretrained)


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise KeyboardInterrupt


def test_resume_after_interruption_gives_the_same_model(tmp_path, tiny_pretrained):
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_world(), tiny_pretrain_config(), out, log=lambda _: None, callbacks=[_Crash()])
    assert (out / "checkpoints" / "checkpoint-5").is_dir() and not (out / "model.safetensors").exists()
    # A kill while the next checkpoint was written: its copy lacks the optimizer state and the manifest.
    partial = out / "checkpoints" / "checkpoint-6"
    shutil.copytree(out / "checkpoints" / "checkpoint-5", partial)
    (partial / "knowtune-checkpoint.json").unlink()
    (partial / "optimizer.pt").unlink()
    lines = []
    pretrain(tiny_world(), tiny_pretrain_config(), out, log=lines.append)
    assert any("removed the incomplete checkpoint checkpoint-6" in line for line in lines), lines
    assert any("resuming from" in line and line.endswith("checkpoint-5") for line in lines), lines
    assert not (out / "checkpoints").exists()
    a = AutoModelForCausalLM.from_pretrained(out).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tiny_pretrained).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_packed_blocks_cover_the_corpus_in_equal_blocks():
    documents = ["Q: a?\nA: b", "c is d.", "Answer the following question. e?\nf"] * 30
    tokenizer = train_tokenizer(documents, 300)
    blocks = PackedBlocks(documents, tokenizer, seq_len=16)
    assert blocks.blocks.shape[1] == 16 and len(blocks) == blocks.num_tokens // 16
    item = blocks[0]
    assert torch.equal(item["input_ids"], item["labels"])


class _LessonBlocksSeen(TrainerCallback):
    """The reading-lesson blocks the dataset holds at each step (by epoch)."""

    def __init__(self):
        self.seen = {}

    def on_step_begin(self, args, state, control, train_dataloader=None, **kwargs):
        blocks = train_dataloader.dataset.lesson_blocks
        self.seen.setdefault(int(state.epoch), blocks.clone())
        assert torch.equal(self.seen[int(state.epoch)], blocks)


def test_renewed_reading_lessons_are_new_every_epoch_and_a_resumed_run_sees_the_same(tmp_path):
    """corpus.reading_renew: each epoch trains on lessons of its own (none seen twice), ended by EOS;
    a run stopped mid-epoch resumes with that epoch's lessons and ends with the same weights."""
    config = tiny_pretrain_config(epochs=3.0, corpus={**tiny_pretrain_config().corpus.model_dump(), "reading_lessons": 30, "reading_renew": True})
    seen = _LessonBlocksSeen()
    pretrain(tiny_world(), config, tmp_path / "whole", log=lambda _: None, callbacks=[seen])
    assert sorted(seen.seen) == [0, 1, 2]
    blocks = list(seen.seen.values())
    assert all(len(b) == len(blocks[0]) > 0 for b in blocks)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "whole")
    texts = [tokenizer.decode(b.flatten()) for b in blocks]
    assert len(set(texts)) == 3 and all(text.count(tokenizer.eos_token) >= 5 for text in texts)
    lessons = [set(t.split(tokenizer.eos_token)[1:-1]) for t in texts]  # whole lessons (the first and last may be cut)
    assert not lessons[0] & lessons[1] and not lessons[1] & lessons[2]
    assert tiny_pretrain_config().corpus.reading_renew is False

    out = tmp_path / "resumed"

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.epoch > 1.3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_world(), config, out, log=lambda _: None, callbacks=[Crash()])
    resumed = _LessonBlocksSeen()
    if Version(accelerate.__version__) < Version(RENEWED_RESUME_ACCELERATE):  # measured not to reproduce there: refused
        with pytest.raises(KnowtuneError, match="accelerate >= "):
            pretrain(tiny_world(), config, out, log=lambda _: None, callbacks=[resumed])
        assert not (out / "model.safetensors").exists()
        return
    pretrain(tiny_world(), config, out, log=lambda _: None, callbacks=[resumed])
    assert min(resumed.seen) == 1 and all(torch.equal(resumed.seen[e], seen.seen[e]) for e in resumed.seen)
    a = AutoModelForCausalLM.from_pretrained(out).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # as the resume test above


def test_lessons_only_epochs_fill_every_block_with_lessons_then_the_corpus_returns():
    documents = ["Q: a?\nA: b", "c is d.", "Answer the following question. e?\nf"] * 30
    tokenizer = train_tokenizer(documents + ["x y z w"], 300)
    lessons = lambda epoch, part: tokenizer(f"x{epoch} y{part} z w", add_special_tokens=False)["input_ids"] * 5  # noqa: E731
    blocks = PackedBlocks(documents, tokenizer, seq_len=8, lessons=lessons, lessons_only_epochs=1)
    corpus = {tuple(block.tolist()) for block in blocks.blocks}
    size = len(blocks)
    assert size == len(blocks.blocks) + blocks.lesson_count and blocks.lesson_count > 0
    first = [tuple(blocks[i]["input_ids"].tolist()) for i in range(size)]
    assert not corpus & set(first) and all("x0" in tokenizer.decode(list(b)) or "y" in tokenizer.decode(list(b)) for b in first)
    blocks.set_epoch(1)
    second = [tuple(blocks[i]["input_ids"].tolist()) for i in range(size)]
    assert len(blocks) == size and set(second[: len(blocks.blocks)]) == corpus
    assert not set(second[len(blocks.blocks):]) & set(first)
    with pytest.raises(ValueError, match="reading_renew"):
        tiny_pretrain_config(corpus={"reading_lessons_only_epochs": 1})


def test_adam_beta2_reaches_the_optimizer_and_is_recorded_only_when_set(tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Betas(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen.append(optimizer.param_groups[0]["betas"])

    assert "adam_beta2" not in tiny_pretrain_config().model_dump()
    config = tiny_pretrain_config(adam_beta2=0.95, epochs=0.2)
    pretrain(tiny_world(), config, tmp_path / "run", log=lambda _: None, callbacks=[Betas()])
    assert seen and seen[0] == (0.9, 0.95)
    assert "adam_beta2: 0.95" in (tmp_path / "run" / "pretrain_config.yaml").read_text()
