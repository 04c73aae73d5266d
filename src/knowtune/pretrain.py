"""Pretraining knowtune's tiny base model on a world's corpus, on CPU, with transformers.

A byte-level BPE tokenizer is trained with ``tokenizers`` on the corpus and saved as a
transformers fast tokenizer; a small ``LlamaForCausalLM`` is trained with ``Trainer`` on
packed fixed-length blocks of the corpus (causal LM loss on every token), and saved with
``save_pretrained`` beside the resolved config, the exposure ground truth and provenance,
so that ``AutoModelForCausalLM.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from pydantic import Field

from knowtune.config import StageConfig, save_config
from knowtune.errors import KnowtuneError
from knowtune.io import atomic_write_json, atomic_write_jsonl
from knowtune.world.corpus import CorpusConfig, assign_exposures, render_corpus
from knowtune.world.spec import World

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
EXPOSURES_FILE = "exposures.jsonl"


class PretrainConfig(StageConfig):
    """Model size, corpus schedule and optimisation of the base-model pretraining."""

    ADDED_DEFAULTS = {"adam_beta2": 0.999}

    seed: int = 0
    """Seed of the corpus order, initialisation and data order."""
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    """The pretraining corpus and its exposure schedule."""
    vocab_size: int = Field(4096, ge=300)
    """BPE vocabulary size."""
    hidden_size: int = Field(128, ge=8)
    """Model width."""
    num_layers: int = Field(4, ge=1)
    """Transformer layers."""
    num_heads: int = Field(4, ge=1)
    """Attention heads."""
    intermediate_size: int = Field(512, ge=8)
    """MLP width."""
    seq_len: int = Field(128, ge=16)
    """Tokens per training block."""
    batch_size: int = Field(16, ge=1)
    """Blocks per step."""
    epochs: float = Field(4.0, gt=0)
    """Passes over the corpus."""
    learning_rate: float = Field(3e-3, gt=0)
    """Peak learning rate (cosine schedule)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a share of the peak."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warmup steps."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    """AdamW's second-moment decay (0.95 keeps steps steadier at a high learning rate)."""
    save_every_steps: int = Field(500, ge=1)
    """Checkpoint interval in steps (resume)."""


def train_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) trained on the corpus, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def build_model(config: PretrainConfig, tokenizer):
    """A freshly initialised ``LlamaForCausalLM`` sized by ``config`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    set_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=max(512, config.seq_len),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(model_config)


class PackedBlocks(torch.utils.data.Dataset):
    """The corpus as one token stream (documents joined by newlines) cut into equal blocks.

    ``lessons`` (renewed reading lessons, ``corpus.reading_renew``): a function from (epoch, part)
    to the tokens of that part of the epoch's lessons. Epoch 0's part 0 sets how many lesson
    blocks every epoch adds; an epoch takes parts until it fills them (lessons vary in length),
    and :meth:`set_epoch` (called at every epoch's start, :func:`renew_lessons_callback`) swaps
    them in. In the first ``lessons_only_epochs`` epochs the corpus's own blocks hold lessons too.
    """

    def __init__(self, documents: list[str], tokenizer, seq_len: int, lessons: Callable[[int, int], list[int]] | None = None,
                 lessons_only_epochs: int = 0):
        ids = tokenizer("\n".join(documents) + "\n", add_special_tokens=False)["input_ids"]
        usable = (len(ids) // seq_len) * seq_len
        if usable == 0:
            raise KnowtuneError(f"the corpus has {len(ids)} tokens, fewer than one block of seq_len={seq_len}", fix="lower seq_len or grow the world")
        self.blocks = torch.tensor(ids[:usable], dtype=torch.long).view(-1, seq_len)  # (N, T)
        self.seq_len = seq_len
        self.lessons = lessons
        self.lessons_only_epochs = lessons_only_epochs if lessons is not None else 0
        first = lessons(0, 0) if lessons is not None else []
        self.lesson_count = len(first) // seq_len
        self.lesson_blocks = torch.empty(0, seq_len, dtype=torch.long)
        self.epoch = -1
        self.set_epoch(0, first)

    def set_epoch(self, epoch: int, first_part: list[int] | None = None) -> None:
        """Use epoch ``epoch``'s reading lessons (a no-op without renewed lessons); ``first_part``: its part 0, already rendered."""
        if self.lessons is not None and epoch != self.epoch:
            count = self.lesson_count + (len(self.blocks) if epoch < self.lessons_only_epochs else 0)
            ids: list[int] = []
            for part in itertools.count():
                ids += first_part if part == 0 and first_part is not None else self.lessons(epoch, part)
                if len(ids) >= count * self.seq_len:
                    break
            self.lesson_blocks = torch.tensor(ids[: count * self.seq_len], dtype=torch.long).view(count, self.seq_len)
        self.epoch = epoch

    @property
    def num_tokens(self) -> int:
        """Tokens of one epoch (the corpus's blocks and the lesson blocks)."""
        return len(self) * self.seq_len

    def __len__(self) -> int:
        return self.blocks.shape[0] + self.lesson_count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if len(self.lesson_blocks) == len(self):  # a lessons-only epoch
            block = self.lesson_blocks[index]
        else:
            block = self.blocks[index] if index < len(self.blocks) else self.lesson_blocks[index - len(self.blocks)]
        return {"input_ids": block, "labels": block}


def renewed_lessons(world: World, corpus: CorpusConfig, epoch: int, part: int = 0) -> list[str]:
    """``corpus.reading_lessons`` renewed reading lessons (``corpus.reading_renew``) for part ``part``
    of epoch ``epoch``, seeded by the corpus seed, the epoch and the part, so a resumed run renders the same."""
    from knowtune.world.reading import reading_lessons

    qa, instruction = corpus.lesson_form_weights()
    return reading_lessons(world, corpus.reading_lessons, corpus.reading_passages, seed=f"{corpus.seed}-epoch-{epoch}-{part}",
                           qa_weight=qa, instruction_weight=instruction, subjects_shared=corpus.reading_subjects,
                           objects=corpus.reading_objects)


def lesson_tokens(lessons: list[str], tokenizer) -> list[int]:
    """The lessons' token ids, each lesson ended by EOS: packed together, a lesson's passages
    must not read as lines of the lesson before."""
    ids: list[int] = []
    for encoded in tokenizer(lessons, add_special_tokens=False)["input_ids"]:
        ids += encoded + [tokenizer.eos_token_id]
    return ids


#: The oldest accelerate with which a resumed run with renewed lessons was checked to end as the uninterrupted one.
RENEWED_RESUME_ACCELERATE = "1.15.0"


def check_renewed_resume() -> None:
    """Refuse to resume a run with renewed lessons on an accelerate older than :data:`RENEWED_RESUME_ACCELERATE`:
    with 1.10.1 (transformers 4.56.2) the resumed run was measured to end up to 0.04 away in weight from the
    uninterrupted one, so it would not reproduce; with 1.15 it ends bit-identical."""
    import accelerate
    from packaging.version import Version

    if Version(accelerate.__version__) < Version(RENEWED_RESUME_ACCELERATE):
        raise KnowtuneError(f"resuming a pretraining run with corpus.reading_renew needs accelerate >= {RENEWED_RESUME_ACCELERATE} "
                            f"(installed: {accelerate.__version__}); with older versions the resumed run does not reproduce the uninterrupted one",
                            fix=f"pip install 'accelerate>={RENEWED_RESUME_ACCELERATE}', or delete the run's checkpoints/ and start it afresh")


def renew_lessons_callback(dataset: PackedBlocks):
    """A TrainerCallback that gives ``dataset`` the epoch's reading lessons as the epoch starts (and
    as a resumed run re-enters its epoch: ``state.epoch`` then holds the fraction done)."""
    from transformers import TrainerCallback

    class RenewLessons(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            dataset.set_epoch(int(state.epoch or 0))

    return RenewLessons()


def _progress_callback(total_steps: int, tokens_per_step: int, log: Callable[[str], None]):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Prints step, loss, tokens/s and ETA at every logging step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.start_step = time.monotonic(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            done = max(1, state.global_step - self.start_step)
            elapsed = time.monotonic() - self.start
            rate = done * tokens_per_step / elapsed
            eta = (total_steps - state.global_step) * elapsed / done
            log(f"step {state.global_step}/{total_steps}  loss {logs['loss']:.3f}  lr {logs.get('learning_rate', 0):.2e}  {rate:,.0f} tok/s  ETA {eta:.0f}s")

    return ProgressCallback()


def pretrain(world: World, config: PretrainConfig, out_dir: str | Path, *, log: Callable[[str], None] = print, resume: bool = True, callbacks: list | None = None) -> Path:
    """Build the corpus, train tokenizer and model, and save everything under ``out_dir``.

    Trainer checkpoints go to ``out_dir/checkpoints`` every ``save_every_steps``; a rerun
    with the same config resumes from the newest *complete* one (a manifest written last,
    :mod:`knowtune.train.checkpoints`; a half-written one is removed). The final model is
    written only at the end (``out_dir`` then holds a loadable model and ``exposures.jsonl``).
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    from knowtune.provenance import model_fingerprint, provenance
    from knowtune.train.checkpoints import CheckpointManifest, resume_checkpoint

    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = assign_exposures(world, config.corpus)
    documents = render_corpus(world, schedule, config.corpus)
    renew = config.corpus.reading_lessons > 0 and config.corpus.reading_renew
    first_lessons = renewed_lessons(world, config.corpus, 0) if renew else []
    tokenizer = train_tokenizer(documents + first_lessons, config.vocab_size)
    lessons = None
    if renew:
        lessons = lambda epoch, part: lesson_tokens(first_lessons if (epoch, part) == (0, 0) else renewed_lessons(world, config.corpus, epoch, part), tokenizer)  # noqa: E731
    dataset = PackedBlocks(documents, tokenizer, config.seq_len, lessons, config.corpus.reading_lessons_only_epochs)
    model = build_model(config, tokenizer)
    steps_per_epoch = -(-len(dataset) // config.batch_size)
    total_steps = int(steps_per_epoch * config.epochs)
    log(f"corpus: {len(documents):,} lines, {dataset.num_tokens:,} tokens; model: {model.num_parameters():,} parameters; {total_steps} steps")
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        logging_steps=max(1, min(100, total_steps // 20)),
        save_strategy="steps",
        save_steps=config.save_every_steps,
        save_total_limit=None,  # CheckpointManifest deletes the older checkpoint once the newer one is complete
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    set_seed(config.seed)
    progress = _progress_callback(total_steps, config.batch_size * config.seq_len, log)
    renewal = [renew_lessons_callback(dataset)] if renew else []
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[progress, *renewal, *(callbacks or []), CheckpointManifest()])
    trainer.remove_callback(PrinterCallback)
    last = resume_checkpoint(checkpoints, log) if resume else None
    if last is not None:
        if renew:
            check_renewed_resume()
        log(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    atomic_write_jsonl(out_dir / EXPOSURES_FILE, [item.to_record() for item in schedule])
    save_config(config, out_dir / "pretrain_config.yaml")
    atomic_write_json(
        out_dir / "provenance.json",
        provenance(config.model_dump(mode="json"), seed=config.seed, model_fingerprint=model_fingerprint(out_dir), world=world.name, corpus_tokens=dataset.num_tokens, epochs=config.epochs),
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    return out_dir



def load_exposures(model_dir: str | Path) -> dict[str, dict]:
    """The exposure ground truth saved beside a knowtune-pretrained model, keyed by fact id."""
    path = Path(model_dir) / EXPOSURES_FILE
    if not path.is_file():
        raise KnowtuneError(f"{path} not found: exposure ground truth exists only for models pretrained by knowtune")
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
