"""Supervised fine-tuning on closed-book QA, plain or with self-distillation, on transformers ``Trainer``.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 2: the input is
``Answer the following question. <question>`` and the target is the answer. Here a row is
``prompt + answer + terminator`` (a newline, as in the pretraining corpus, or EOS) with
labels -100 on the prompt, so the loss is the cross-entropy of the answer tokens only:

    L_SFT = -(1/N) sum_{t in answer} log p(y_t | y_<t)

``method: selfdistill`` adds a KL term to a teacher (Kaplan, Gekhman et al., arXiv
2604.15574, 2026; formula in :mod:`knowtune.train.losses`). Outputs of :func:`train_model`
under ``out_dir``: ``model/`` (final model, LoRA merged), ``adapter/`` (the LoRA adapter
alone), ``best/`` (best-dev model, with ``save_best``), ``teacher/`` (the format-stage
teacher), ``checkpoints/`` (Trainer checkpoints, for resuming), ``metrics.jsonl``,
``config.yaml``, ``run.json`` and ``provenance.json`` (written last: the run is complete).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from knowtune.config import save_config
from knowtune.data.schema import QAExample
from knowtune.data.splits import Splits
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.io import atomic_write_json
from knowtune.models import pad_token_id
from knowtune.provenance import config_hash
from knowtune.slick.categories import KNOWN
from knowtune.task import DEFAULT_TASK, TaskSpec, resolve_task
from knowtune.train import distributed
from knowtune.train.callbacks import METRICS_FILE, DriftTracker, EpochEvalCallback, read_metrics, save_model_dir, select_drift_examples
from knowtune.train.config import TrainConfig

_RUN_FILES = ("provenance.json", "run.json", "config.yaml", METRICS_FILE, "teacher_topk.safetensors")
_RUN_DIRS = ("checkpoints", "model", "adapter", "best", "teacher", "format_stage", "runs")


#: TrainConfig keys that are task-spec keys (:data:`knowtune.task.FLAT_KEYS`).
TRAIN_TASK_KEYS = ("prompt_template", "answer_prefix", "idk_phrase", "max_new_tokens")


def training_task(config: TrainConfig) -> TaskSpec:
    """The run's task: its ``task`` file (if any) with the config's prompt keys on top."""
    return resolve_task(config, TRAIN_TASK_KEYS)


def build_sft_rows(
    examples: Sequence[QAExample], tokenizer, task: TaskSpec = DEFAULT_TASK, *, terminator: str = "newline", contexts: Sequence[str] | None = None
) -> list[dict[str, list[int]]]:
    """``input_ids`` = prompt + answer + terminator, ``labels`` = -100 on the prompt, ids on the rest.

    The prompt is the task's fine-tuning prompt, encoded exactly as evaluation and the audit
    encode prompts (:meth:`knowtune.task.Prompts.encode`: with the tokenizer's BOS where it
    adds one); the answer is tokenized separately without special tokens, so the label
    boundary is exact. The target is ``finetune.answer_prefix`` + the first gold answer: with
    a byte-level BPE, ``" Paris"`` after ``"?"`` and ``"Paris"`` after a newline are different
    tokens, and the prefix picks the one the base model learned its facts in. ``contexts`` (one
    text per example: retrieved passages, :func:`knowtune.retrieval.retrieval_contexts`) go
    before the prompts, as evaluation puts them, and are part of the prompt (no loss on them).
    """
    if terminator == "eos" and tokenizer.eos_token_id is None:
        raise ConfigError("answer_terminator is eos but the tokenizer has no EOS token", fix="set answer_terminator: newline")
    encoder = task.prompts(tokenizer)
    texts = [encoder.finetune(ex.question) for ex in examples]
    if contexts is not None:
        texts = [context + text for context, text in zip(contexts, texts, strict=True)]
    prompts = encoder.encode(texts)
    suffix = "\n" if terminator == "newline" else ""
    answers = encoder.encode_answers([task.finetune.answer_prefix + ex.answers[0] + suffix for ex in examples])
    rows = []
    for prompt, answer in zip(prompts, answers):
        answer = list(answer) + ([tokenizer.eos_token_id] if terminator == "eos" else [])
        ids = list(prompt) + answer
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + answer})
    return rows


@dataclass
class SFTCollator:
    """Pads ``input_ids`` (with ``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100)
    to the longest row, on the right or the left; left padding adds ``position_ids`` so
    that every row's first real token is at position 0."""

    pad_token_id: int
    padding_side: str = "right"
    label_pad_id: int = -100

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": self.label_pad_id}
        batch = {}
        for key, pad in pads.items():
            values = [torch.as_tensor(row[key], dtype=torch.long) for row in rows]
            if self.padding_side == "left":
                values = [v.flip(0) for v in values]
            padded = pad_sequence(values, batch_first=True, padding_value=pad)  # (B, T)
            batch[key] = padded.flip(1) if self.padding_side == "left" else padded
        if self.padding_side == "left":
            batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)  # (B, T)
        return batch


@dataclass
class TrainResult:
    """What :func:`train_model` produced; ``metrics`` holds the ``metrics.jsonl`` records."""

    out_dir: Path
    model_dir: Path
    metrics: list[dict[str, Any]]
    best_epoch: int | None
    best_dev_exact_match: float | None
    epochs_run: int
    stopped_early: bool
    trainable: str | None = None
    best_dir: Path | None = None

    def at_epoch(self, epoch: int) -> dict[str, Any]:
        """The metrics record of ``epoch`` (0 = before training)."""
        for record in self.metrics:
            if record["epoch"] == epoch:
                return record
        raise KeyError(f"no evaluation at epoch {epoch}")


def apply_dropout(model, p: float) -> None:
    """Set ``attention_dropout`` on the model config and on every module that reads it (Llama family)."""
    if not hasattr(model.config, "attention_dropout"):
        raise ConfigError(f"dropout is set but {type(model).__name__}'s config has no attention_dropout", fix="unset dropout for this model")
    model.config.attention_dropout = p
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p


def prepare_model(model, config: TrainConfig, log: Callable[[str], None] = print):
    """Dropout, LoRA adapters and freezing, in that order; returns ``(model, trainable description)``."""
    from peft import LoraConfig, get_peft_model

    from knowtune.train.freezing import set_trainable

    if config.dropout is not None:
        apply_dropout(model, config.dropout)
    if config.lora is not None:
        lora = config.lora
        try:
            peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM")
            model = get_peft_model(model, peft_config)
        except ValueError as error:
            raise ConfigError(f"lora.target_modules: {error}", fix="name modules of this model (e.g. q_proj, v_proj) or use all-linear") from None
    description = None
    if config.train_only is not None:
        description = set_trainable(model, config.train_only).describe()
    elif config.lora is not None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        description = f"trainable {trainable:,} / {total:,} parameters ({100 * trainable / total:.1f}%), LoRA r={config.lora.r}"
    if description:
        log(description)
    return model, description


def _use_cpu(config: TrainConfig) -> bool:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but no CUDA device is available", fix="set device: auto or cpu")
    return config.device == "cpu" or not torch.cuda.is_available()


def build_trainer(config: TrainConfig, model, tokenizer, rows: Sequence[Mapping[str, Any]], output_dir: str | Path, *,
                  callbacks: Sequence[Any] = (), teacher=None, method: str | None = None, epochs: int | None = None, save: bool = True):
    """A ``Trainer`` (``method: sft``) or ``SelfDistillationTrainer`` (``selfdistill``) over ``rows``.

    Checkpoints go to ``output_dir`` at every epoch end when ``save`` (all of them kept
    with ``save_every_epoch``, else the last), each completed by a manifest
    (:mod:`knowtune.train.checkpoints`). An :class:`EpochEvalCallback` among
    ``callbacks`` is placed before the reporters so they log its metrics.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from knowtune.compat import enable_fsdp_on_cpu, reporter_logging_dir, warmup_arguments
    from knowtune.train.checkpoints import checkpoint_callbacks
    from knowtune.train.selfdistill import TEACHER_TOPK_LOGPROBS, SelfDistillationTrainer, TeacherTopKCollator

    method = method or config.method
    pad_id = pad_token_id(tokenizer)
    cached = bool(rows) and TEACHER_TOPK_LOGPROBS in rows[0]
    collator = TeacherTopKCollator(pad_id) if cached else SFTCollator(pad_id, config.padding_side)
    with reporter_logging_dir(Path(output_dir).parent / "runs") as logging_dir:
        args = TrainingArguments(
            output_dir=str(output_dir), num_train_epochs=epochs or config.epochs, learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
            weight_decay=config.weight_decay, **warmup_arguments(config.warmup_ratio), lr_scheduler_type=config.lr_scheduler,
            logging_strategy="epoch", save_strategy="epoch" if save else "no", save_total_limit=None,
            report_to=config.report_to or "none", seed=config.seed, data_seed=config.seed, remove_unused_columns=False,
            disable_tqdm=True, dataloader_num_workers=0, use_cpu=_use_cpu(config), **logging_dir,
        )
        common = dict(model=model, args=args, train_dataset=list(rows), data_collator=collator,
                      processing_class=tokenizer, callbacks=[*callbacks, *(checkpoint_callbacks(config.save_every_epoch) if save else [])])
        if method == "selfdistill":
            trainer = SelfDistillationTrainer(teacher=teacher, distill_config=config.selfdistill.loss_config(), **common)
        else:
            trainer = Trainer(**common)
    if distributed.shards_parameters() and _use_cpu(config):
        enable_fsdp_on_cpu(trainer)  # accelerate would run the FSDP config as DDP on CPU
    trainer.remove_callback(PrinterCallback)
    handler = trainer.callback_handler.callbacks
    for callback in [cb for cb in handler if isinstance(cb, EpochEvalCallback)]:
        handler.remove(callback)  # after the ce/kl metrics (selfdistill), before the reporters
        distill = getattr(trainer, "distill_metrics", None)
        handler.insert(handler.index(distill) + 1 if distill in handler else 0, callback)
    return trainer


def _format_stage(config: TrainConfig) -> bool:
    return config.method == "selfdistill" and config.selfdistill.teacher == "format_stage"


def _check_inputs(config: TrainConfig, train: Sequence[QAExample], dev: Sequence[QAExample], categories: Mapping[str, str] | None) -> None:
    if not train:
        raise KnowtuneError("no training examples", fix="pass a dataset with a train split to --data")
    if (config.early_stopping_patience is not None or config.save_best) and not dev:
        raise ConfigError("early_stopping_patience and save_best select epochs by dev exact match, but there are no dev examples",
                          fix="pass --dev PATH (or a dataset with a dev split), or unset early_stopping_patience and save_best")
    if _format_stage(config):
        if not categories or not any(categories.get(ex.id) in KNOWN for ex in train):
            raise ConfigError("selfdistill.teacher is format_stage: the format stage trains on the Known training examples, "
                              "but no training example has a Known category",
                              fix="pass --annotations DIR (a `knowtune annotate` output), or set selfdistill.teacher: base")


def check_reporters(report_to: Sequence[str]) -> None:
    """Fail early (ConfigError) for a reporter transformers does not know or cannot start."""
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        reporters = get_reporting_integration_callbacks(list(report_to))
        for reporter in reporters:
            reporter()
    except (ValueError, RuntimeError, ImportError) as error:
        raise ConfigError(f"report_to {list(report_to)}: {error}", fix="install the reporter's package, or set report_to: [] (none)") from None


def _data_hash(*splits: Sequence[QAExample]) -> str:
    return config_hash([[(ex.id, ex.question, list(ex.answers)) for ex in split] for split in splits])


def _check_resumable(out_dir: Path, run: dict[str, Any]) -> bool:
    """Refuse to resume a run with other settings; True when ``out_dir`` holds this run, finished."""
    saved_run = out_dir / "run.json"
    if saved_run.is_file():
        saved = json.loads(saved_run.read_text(encoding="utf-8"))
        differing = sorted(k for k in set(saved) | set(run) if saved.get(k) != run.get(k))
        if differing:
            detail = ", ".join(differing)
            if "config" in differing:
                old, new = saved.get("config") or {}, run["config"]
                detail += " (config keys: " + ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))) + ")"
            raise KnowtuneError(f"{out_dir} holds a run with other settings: {detail} differ",
                                fix="pass a new --out directory, rerun with the same settings to resume, or add --no-resume to start over")
        return (out_dir / "provenance.json").is_file()
    return False


def _clear_run(out_dir: Path) -> None:
    """Delete the files a previous run left in ``out_dir`` (only knowtune's own names)."""
    for name in _RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in _RUN_DIRS:
        shutil.rmtree(out_dir / name, ignore_errors=True)


def _load_finished(out_dir: Path) -> TrainResult:
    info = json.loads((out_dir / "provenance.json").read_text(encoding="utf-8"))["result"]
    best = out_dir / "best"
    return TrainResult(out_dir, out_dir / "model", read_metrics(out_dir / METRICS_FILE), info["best_epoch"], info["best_dev_exact_match"],
                       info["epochs_run"], info["stopped_early"], info.get("trainable"), best if best.is_dir() else None)


def _make_teacher(config, model, tokenizer, train, categories, out_dir: Path, log):
    """``(teacher, student)`` for ``method: selfdistill``; the teacher is frozen and never trained."""
    from knowtune.models import load

    choice = config.selfdistill.teacher
    if choice == "base":
        return (None if config.lora is not None else copy.deepcopy(model)), model
    if choice != "format_stage":
        teacher, _ = load(choice, device="cpu", dtype="float32")
        if teacher.get_output_embeddings().weight.shape[0] != model.get_output_embeddings().weight.shape[0]:
            raise ConfigError(f"selfdistill.teacher {choice!r} has another vocabulary than the student", fix="use a teacher fine-tuned from the same base model")
        return teacher, model
    teacher_dir = out_dir / "teacher"
    if (teacher_dir / "config.json").is_file():
        log(f"format stage: reusing the teacher in {teacher_dir}")
        teacher, _ = load(teacher_dir, device="cpu", dtype="float32")
    else:
        known = [ex for ex in train if categories.get(ex.id) in KNOWN]
        log(f"format stage: {config.selfdistill.format_stage_epochs} epoch(s) of SFT on {len(known)} Known training examples")
        from transformers import set_seed

        set_seed(config.seed)
        stage, _ = prepare_model(copy.deepcopy(model), config, log=lambda _: None)
        rows = build_sft_rows(known, tokenizer, training_task(config), terminator=config.answer_terminator)
        build_trainer(config, stage, tokenizer, rows, out_dir / "format_stage", method="sft", epochs=config.selfdistill.format_stage_epochs, save=False).train()
        teacher = stage.merge_and_unload() if hasattr(stage, "merge_and_unload") else stage
        if distributed.is_main():
            save_model_dir(teacher, tokenizer, teacher_dir)
            shutil.rmtree(out_dir / "format_stage", ignore_errors=True)
    teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True) if config.selfdistill.student_from_format_stage else model
    return teacher, student


def _with_cached_teacher(config: TrainConfig, teacher, tokenizer, rows, out_dir: Path, log) -> list[dict[str, Any]]:
    """``rows`` with the teacher's top-k log-probs (``selfdistill.cache_teacher``), computed once into
    ``OUT/teacher_topk.safetensors`` and read back on resume; the live teacher is then not needed.
    With several processes the main process computes it and the others read it."""
    from knowtune.train.selfdistill import CACHE_FILE, load_teacher_topk, precompute_teacher_topk, save_teacher_topk, with_teacher_topk

    settings = config.selfdistill
    with distributed.main_first():
        if (out_dir / CACHE_FILE).is_file():
            log(f"teacher cache: reusing {out_dir / CACHE_FILE}")
            cache = load_teacher_topk(out_dir)
        else:
            start = time.monotonic()
            pad_id = pad_token_id(tokenizer)
            device = "cpu" if _use_cpu(config) else "cuda"
            cache = precompute_teacher_topk(teacher.to(device), rows, settings.top_k, config.eval_batch_size,
                                            temperature=settings.temperature, pad_token_id=pad_id)
            save_teacher_topk(cache, out_dir)
            log(f"teacher cache: top-{settings.top_k} log-probs of {len(rows)} rows in {time.monotonic() - start:.1f} s ({out_dir / CACHE_FILE})")
    return with_teacher_topk(rows, cache, settings.loss_config())


def train_model(
    config: TrainConfig,
    model_spec: str | Path,
    splits: Splits,
    categories: Mapping[str, str] | None = None,
    out_dir: str | Path = "train-out",
    *,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
    log: Callable[[str], None] = print,
    console=None,
) -> TrainResult:
    """Fine-tune ``model_spec`` (a directory, hub id or ``default``) on ``splits.train``, evaluating
    ``splits`` (train fit, dev, test, OOD) every epoch.

    Validates everything before writing; resumes from the last checkpoint in
    ``out_dir/checkpoints`` when ``resume`` (a finished run with the same settings is
    returned as is). ``categories`` (example id -> SliCK category) enable per-category
    metrics and the format-stage teacher. With ``config.drift`` the base model's hidden
    states of the drift examples are read right after loading it (before any format stage,
    adapter or freezing, and again on resume), and every record gets ``drift/cosine``.
    The same config, data and seed give the same metrics. Progress within each epoch goes to
    ``log`` as plain lines, or is a bar on ``console`` (a rich ``Console``) when that is a terminal.
    """
    from knowtune.models import fingerprint_of
    from knowtune.train.checkpoints import resume_checkpoint
    from knowtune.train.progress import TrainProgress

    out_dir = Path(out_dir)
    _check_inputs(config, splits.train, splits.dev, categories)
    distributed.init(config.device)
    distributed.check_sharding(config, _use_cpu(config))
    check_reporters(config.report_to)
    if not distributed.is_main():  # with several processes the main one logs and writes
        log, console = (lambda _: None), None
    progress = TrainProgress(log, console)
    drift, drift_examples = config.drift, None
    if drift is not None:
        drift_examples = select_drift_examples(drift.split, splits[drift.split], categories, drift.categories, drift.max_examples, config.seed)
    run = {"config": config.model_dump(mode="json"), "base_model": str(model_spec), "base_model_fingerprint": fingerprint_of(model_spec),
           "data_hash": _data_hash(*(examples for _, examples in splits.items())), "categories_hash": config_hash(sorted((categories or {}).items()))}
    task = training_task(config)
    train_contexts = contexts = None
    if config.retrieval is not None:
        train_contexts, contexts, run["retrieval"] = _retrieval(config, task, splits.train)
    if resume and _check_resumable(out_dir, run):
        log(f"{out_dir} already holds this finished run")
        return _load_finished(out_dir)
    distributed.barrier()  # every rank has read run.json before the main process rewrites it

    model, tokenizer, teacher, trainable, tracker = _setup(config, model_spec, splits.train, categories, out_dir, run, resume, log, drift_examples)
    rows = build_sft_rows(splits.train, tokenizer, task, terminator=config.answer_terminator, contexts=train_contexts)
    evaluator = EpochEvalCallback(
        tokenizer, metrics_path=out_dir / METRICS_FILE, **dict(splits.items()), categories=categories, task=task,
        batch_size=config.eval_batch_size, max_examples=config.max_eval_examples, seed=config.seed, early_stopping_patience=config.early_stopping_patience,
        best_dir=out_dir / "best" if config.save_best else None, every_epoch=config.eval_every_epoch, drift=tracker, contexts=contexts, log=log,
    )
    if config.method == "selfdistill" and config.selfdistill.cache_teacher:
        rows, teacher = _with_cached_teacher(config, teacher, tokenizer, rows, out_dir, log), None
    checkpoints = out_dir / "checkpoints"
    trainer = build_trainer(config, model, tokenizer, rows, checkpoints, callbacks=distributed.rank_callbacks(evaluator, [*callbacks, progress]), teacher=teacher)
    last = distributed.broadcast(resume_checkpoint(checkpoints, log) if resume and distributed.is_main() else None)
    if last:
        log(f"resuming from {last}")
    try:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    finally:
        progress.close()
    weights = distributed.full_state_dict(trainer.model) if distributed.shards_parameters() else None  # FSDP: gathered from every rank
    if not distributed.is_main():
        distributed.barrier()  # while the main process writes the model and provenance.json
        return _load_finished(out_dir)
    result = _finish(config, trainer.model, tokenizer, evaluator, out_dir, run, trainable, splits.counts(), weights)
    distributed.barrier()
    return result


def _retrieval(config: TrainConfig, task: TaskSpec, train: Sequence[QAExample]):
    """``retrieval``: the training examples' passages blocks, the evaluation's (examples -> blocks: each
    question's top k), and the run's ``retrieval`` record (the store's path, size, k, a hash of its
    ``store.json``, so a rebuilt store is another run, and with ``retrieval_oracle_share`` how many
    training questions were given their own passage)."""
    import random

    from knowtune.retrieval import RetrievalStore, context_text, retrieval_contexts, retrieval_provenance

    store = RetrievalStore.load(config.retrieval)
    k = config.retrieval_k
    retrieval_contexts(store, [], k, task)  # refuses a chat-template task before any model loads
    record = {**retrieval_provenance(config.retrieval, store, k), "store_hash": config_hash(store.record)}
    share = config.retrieval_oracle_share
    evaluation = lambda examples: retrieval_contexts(store, examples, k)  # noqa: E731
    if share is None:
        return evaluation(train), evaluation, record
    stored = {passage.id for passage in store.passages}
    if not any(ex.id in stored for ex in train):
        raise ConfigError(f"retrieval_oracle_share: no training fact is in the store {config.retrieval} (by example id)",
                          fix="build the store from the training facts too (`knowtune data store`), or leave retrieval_oracle_share unset")
    oracle = [random.Random(f"{config.seed}-oracle-{ex.id}").random() < share for ex in train]
    found = store.search([ex.question for ex in train], k + 1)
    blocks = [context_text(top[:k] if keep else [p for p in top if p.id != ex.id][:k]) for ex, top, keep in zip(train, found, oracle)]
    record["oracle_questions"] = sum(oracle)
    return blocks, evaluation, record


def _setup(config: TrainConfig, model_spec, train, categories, out_dir: Path, run: dict[str, Any], resume: bool, log,
           drift_examples: Sequence[QAExample] | None = None):
    """Load the model, read the drift reference, make the teacher, apply dropout/LoRA/freezing; write
    ``config.yaml`` and ``run.json`` only once every setting has been checked.
    Returns ``(model, tokenizer, teacher, trainable, drift tracker or None)``."""
    from transformers import set_seed

    from knowtune.models import load
    from knowtune.task import save_task

    set_seed(config.seed)
    model, tokenizer = load(model_spec, device="cpu", dtype="float32")  # Trainer moves it to the training device
    tracker = _drift_tracker(config, model, tokenizer, drift_examples, categories, log) if drift_examples is not None and (distributed.is_main() or distributed.shards_parameters()) else None
    teacher, trainable = None, None
    if _format_stage(config):  # the format stage needs the unprepared model: check the settings on a copy
        prepare_model(copy.deepcopy(model), config, log=lambda _: None)
    else:
        if config.method == "selfdistill":
            teacher, model = _make_teacher(config, model, tokenizer, train, categories, out_dir, log)
        set_seed(config.seed)
        model, trainable = prepare_model(model, config, log)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _clear_run(out_dir)
        save_config(config, out_dir / "config.yaml")
        save_task(training_task(config), out_dir)
        atomic_write_json(out_dir / "run.json", run)
    distributed.barrier()  # the other ranks read the directory only once it is cleared and written
    if _format_stage(config):
        teacher, model = _make_teacher(config, model, tokenizer, train, categories, out_dir, log)
        set_seed(config.seed)
        model, trainable = prepare_model(model, config, log)
    return model, tokenizer, teacher, trainable, tracker


def _drift_tracker(config: TrainConfig, model, tokenizer, examples: Sequence[QAExample], categories, log) -> DriftTracker:
    """The base model's states of the drift examples, read on the training device (so that an
    untouched model gives exactly 0); the model goes back to where it was."""
    device = torch.device("cpu" if _use_cpu(config) else "cuda")
    origin = next(model.parameters()).device
    model.to(device)
    try:
        tracker = DriftTracker.from_base(model, tokenizer, examples, categories=categories, layer=config.drift.layer,
                                         template=training_task(config).finetune.template, batch_size=config.eval_batch_size)
    finally:
        model.to(origin)
    log(f"drift: base-model states of {len(examples)} {config.drift.split} examples at hidden_states[{config.drift.layer}]")
    return tracker


def _finish(config: TrainConfig, model, tokenizer, evaluator: EpochEvalCallback, out_dir: Path, run: dict[str, Any],
            trainable: str | None, counts: dict[str, int], weights: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Save the final model (and LoRA adapter), then ``provenance.json`` last; drop the checkpoints.
    ``weights``: an FSDP model's gathered weights."""
    from knowtune.provenance import model_fingerprint, provenance

    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(out_dir / "adapter")
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    save_model_dir(model, tokenizer, out_dir / "model", weights)
    stopper = evaluator.stopper
    metrics = read_metrics(out_dir / METRICS_FILE)
    epochs_run = max(r["epoch"] for r in metrics)
    result = TrainResult(out_dir, out_dir / "model", metrics, stopper.best_epoch, stopper.best, epochs_run,
                         stopped_early=epochs_run < config.epochs, trainable=trainable, best_dir=out_dir / "best" if config.save_best else None)
    summary = {"best_epoch": result.best_epoch, "best_dev_exact_match": result.best_dev_exact_match, "epochs_run": epochs_run,
               "stopped_early": result.stopped_early, "trainable": trainable}
    atomic_write_json(out_dir / "provenance.json", provenance(
        run["config"], seed=config.seed, model_fingerprint=run["base_model_fingerprint"], base_model=run["base_model"],
        final_model_fingerprint=model_fingerprint(out_dir / "model"), data_hash=run["data_hash"], result=summary, examples=counts,
    ))
    if not config.save_every_epoch:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return result
