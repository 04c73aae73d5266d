"""Per-epoch evaluation, early stopping on dev exact match, and the best-dev checkpoint.

Gekhman et al., EMNLP 2024 (arXiv 2405.05904), section 4: the model is evaluated on the dev
set after every epoch; EARLY_STOP is the epoch with the best dev accuracy. Training
dynamics track the share of training examples the model has *fitted* (its greedy answer
to the training question is correct), per SliCK category. :class:`EpochEvalCallback`
writes one JSON line per evaluation to ``metrics.jsonl`` (keys in docs/train.md), starting
with epoch 0 (the model before training), so every curve starts at the base model.
With a :class:`DriftTracker` it also writes the representation drift of held-out entities
(Kaplan, Gekhman et al., arXiv 2604.15574, 2026; :mod:`knowtune.drift`).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from knowtune.data.schema import QAExample
from knowtune.drift import DEFAULT_LAYER, cosine_drift, entity_states
from knowtune.errors import ConfigError
from knowtune.evaluate import KNOWN_GROUP, evaluate_examples, flat_metrics
from knowtune.io import atomic_write_jsonl
from knowtune.slick.categories import CATEGORIES, KNOWN
from knowtune.task import DEFAULT_TASK, DEFAULT_TEMPLATE, TaskSpec
from knowtune.train import distributed

METRICS_FILE = "metrics.jsonl"
EVAL_SETS = ("train", "dev", "test", "ood")


class EarlyStopping:
    """Best dev exact match so far, its epoch, and how many evaluations since it improved.

    An evaluation improves when its value is strictly greater than the best so far; with
    ``patience`` p, training stops after p evaluations in a row without improvement.
    A ``None`` value (no dev examples) never improves.
    """

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_evaluations = 0

    def update(self, epoch: int, value: float | None) -> bool:
        """Record an evaluation; True when it is a new best."""
        if value is not None and (self.best is None or value > self.best):
            self.best, self.best_epoch, self.bad_evaluations = value, epoch, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evaluations >= self.patience


def eval_subset(examples: Sequence[QAExample], cap: int | None, seed: int) -> list[QAExample]:
    """At most ``cap`` examples, a seeded sample kept in the original order (all when ``cap`` is None)."""
    if cap is None or len(examples) <= cap:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), cap))
    return [examples[i] for i in keep]


def select_drift_examples(split: str, examples: Sequence[QAExample], categories: Mapping[str, str] | None,
                          groups: Sequence[str] | None, cap: int | None, seed: int) -> list[QAExample]:
    """The examples whose drift is tracked: those of ``split`` in ``groups`` (SliCK categories
    or ``Known``; ``None`` = Known when there are categories, else all), capped by a seeded sample."""
    if not examples:
        raise ConfigError(f"drift.split is {split} but there are no {split} examples",
                          fix=f"pass {split} examples (--{split} PATH or a dataset with a {split} split), or set drift.split to a split you have")
    if groups is not None and categories is None:
        raise ConfigError(f"drift.categories {list(groups)} needs SliCK categories", fix="pass --annotations DIR, or unset drift.categories")
    if categories is not None:
        wanted = set(groups if groups is not None else [KNOWN_GROUP])
        keep = (set(CATEGORIES) & wanted) | (set(KNOWN) if KNOWN_GROUP in wanted else set())
        examples = [ex for ex in examples if categories.get(ex.id) in keep]
        if not examples:
            raise ConfigError(f"no {split} example is in the drift groups {sorted(wanted)}",
                              fix="set drift.categories to groups your data has (e.g. [Unknown]), or another drift.split")
    return eval_subset(examples, cap, seed)


@dataclass
class DriftTracker:
    """Representation drift of ``examples`` from the base model (Kaplan, Gekhman et al. 2026):

        drift/cosine = (1/n) sum_i (1 - cos(h_i^base, h_i^now))

    with h_i the hidden state at ``layer`` of the last subject token of example i's prompt
    (:func:`knowtune.drift.entity_states`); ``reference`` (n, hidden) holds the base model's
    states. ``groups`` maps a SliCK group to its rows, reported as ``drift/cosine/<group>``.
    """

    examples: list[QAExample]
    reference: torch.Tensor  # (n, H)
    layer: int = DEFAULT_LAYER
    template: str = DEFAULT_TEMPLATE
    groups: dict[str, list[int]] = field(default_factory=dict)
    batch_size: int = 64

    @classmethod
    def from_base(cls, model, tokenizer, examples: Sequence[QAExample], *, categories: Mapping[str, str] | None = None,
                  layer: int = DEFAULT_LAYER, template: str = DEFAULT_TEMPLATE, batch_size: int = 64) -> "DriftTracker":
        """Read the reference states from ``model``, which must be the base model (before any training)."""
        examples = list(examples)
        reference = entity_states(model, tokenizer, examples, layer=layer, template=template, batch_size=batch_size)
        groups: dict[str, list[int]] = {}
        if categories is not None:
            for name in CATEGORIES:
                groups[name] = [i for i, ex in enumerate(examples) if categories.get(ex.id) == name]
            groups[KNOWN_GROUP] = [i for i, ex in enumerate(examples) if categories.get(ex.id) in KNOWN]
        return cls(examples, reference, layer, template, {k: rows for k, rows in groups.items() if rows}, batch_size)

    def measure(self, model, tokenizer) -> dict[str, float | int]:
        """``drift/n``, ``drift/cosine`` and ``drift/cosine/<group>`` of ``model`` now."""
        current = entity_states(model, tokenizer, self.examples, layer=self.layer, template=self.template, batch_size=self.batch_size)
        record: dict[str, float | int] = {"drift/n": len(self.examples), "drift/cosine": cosine_drift(self.reference, current)}
        for name, rows in self.groups.items():
            record[f"drift/cosine/{name}"] = cosine_drift(self.reference[rows], current[rows])
        return record


def save_model_dir(model, tokenizer, directory: Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
    """Save a loadable model (``from_pretrained``) to ``directory``, replacing it whole.

    A PEFT model is saved merged (a copy is merged, the training model is untouched), so
    the directory always holds a plain checkpoint. Written to a temporary sibling first.
    ``state_dict``: the weights to save instead of the model's own (an FSDP model's gathered
    :func:`~knowtune.train.distributed.full_state_dict`).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True, **({"state_dict": dict(state_dict)} if state_dict is not None else {}))
        if state_dict is not None:  # FSDP made the model's class torch's FSDP<Model> subclass, which 4.x saves as its architecture
            config = copy.deepcopy(plain.config)
            config.architectures = [next(c.__name__ for c in type(plain).__mro__ if not c.__name__.startswith("FSDP"))]
            config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_best(model, tokenizer, directory: Path, new_best: bool, sharded: bool) -> None:
    """Save ``model`` to ``directory`` when the main process found a new best (``new_best``); with FSDP every
    rank calls this, learns the main process's decision, and takes part in gathering the weights."""
    if not sharded:
        if new_best:
            save_model_dir(model, tokenizer, directory)
        return
    if distributed.broadcast(new_best):
        weights = distributed.full_state_dict(model)
        if distributed.is_main():
            save_model_dir(model, tokenizer, directory, weights)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (empty when it does not exist)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class EpochEvalCallback(TrainerCallback):
    """Evaluate train fit, dev, test and OOD test at epoch 0 and after every epoch.

    Each evaluation set is capped at ``max_examples`` (a seeded sample). ``categories`` maps
    example ids to SliCK categories: train fit, dev and test accuracy are then reported per
    category and for ``Known`` (on the test set: held-out Known accuracy). With
    ``early_stopping_patience`` the run stops when dev exact match has not improved for that
    many epochs (epoch 0 is a reference, not a candidate); with ``best_dir`` the best-dev
    model is saved there. ``every_epoch=False`` evaluates only before and after training.
    Prompts, their token ids, the stop rule and matching are those of ``task`` (the run's
    task spec, as its training rows): :func:`knowtune.evaluate.evaluate_examples`. ``drift`` adds the representation drift from the base model to every record.
    ``contexts`` (examples -> one passages block each, the run's retrieval) puts passages before every prompt, as in training.
    With FSDP (:func:`knowtune.train.distributed.shards_parameters`) it runs on every rank:
    each generates for its share (``evaluate_examples(sharded=True)``), and only the main process scores,
    decides, writes and logs; the other ranks follow its decisions.
    """

    def __init__(
        self,
        tokenizer,
        *,
        metrics_path: str | Path,
        train: Sequence[QAExample] = (),
        dev: Sequence[QAExample] = (),
        test: Sequence[QAExample] = (),
        ood: Sequence[QAExample] = (),
        categories: Mapping[str, str] | None = None,
        task: TaskSpec = DEFAULT_TASK,
        batch_size: int = 64,
        max_examples: int | None = 1000,
        seed: int = 0,
        early_stopping_patience: int | None = None,
        best_dir: str | Path | None = None,
        every_epoch: bool = True,
        drift: DriftTracker | None = None,
        contexts: Callable[[Sequence[QAExample]], list[str]] | None = None,
        log: Callable[[str], None] = print,
    ):
        self.tokenizer = tokenizer
        self.metrics_path = Path(metrics_path)
        given = {"train": train, "dev": dev, "test": test, "ood": ood}
        self.sets = {name: eval_subset(given[name], max_examples, seed) for name in EVAL_SETS if given[name]}
        self.contexts = {name: contexts(examples) for name, examples in self.sets.items()} if contexts is not None else {}
        self.categories = categories
        self.task = task
        self.batch_size = batch_size
        self.stopper = EarlyStopping(early_stopping_patience)
        self.best_dir = Path(best_dir) if best_dir is not None else None
        self.every_epoch = every_epoch
        self.drift = drift
        self.log = log
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self.sharded = distributed.shards_parameters()

    def evaluate(self, model) -> dict[str, Any]:
        """Flat metrics of every evaluation set (``<set>/<metric>[/<group>]``) and, with a tracker, ``drift/...``."""
        record: dict[str, Any] = {}
        for name, examples in self.sets.items():
            result = evaluate_examples(model, self.tokenizer, examples, task=self.task, categories=self.categories,
                                       batch_size=self.batch_size, sharded=self.sharded, contexts=self.contexts.get(name))
            if result is not None:  # None on the ranks that only generated their share
                record.update(flat_metrics(name, result))
        if self.drift is not None:
            record.update(self.drift.measure(model, self.tokenizer))
        return record

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:
            if distributed.is_main():
                self._restore(round(state.epoch))
            return
        if distributed.is_main():
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            self.metrics_path.write_text("", encoding="utf-8")
            self.history = []
        record = self._record(model, epoch=0, step=0)
        if distributed.is_main():
            self._write(record)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._flush_pending()
        epoch = round(state.epoch)
        if not self.every_epoch and epoch < args.num_train_epochs:
            return
        record = self._record(model, epoch=epoch, step=state.global_step)
        if self.every_epoch:
            new_best = distributed.is_main() and self.stopper.update(epoch, record.get("dev/exact_match"))
            if self.best_dir is not None:
                save_best(model, self.tokenizer, self.best_dir, new_best, self.sharded)
            if self.stopper.should_stop:
                control.should_training_stop = True
        if not distributed.is_main():
            return control  # SyncStop gives every rank the main process's decision
        record.update(best_epoch=self.stopper.best_epoch, best_dev_exact_match=self.stopper.best, stop=self.stopper.should_stop)
        self._pending = record  # written at the epoch's log, which carries the epoch's train loss
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or logs is None or "loss" not in logs:
            return
        self._pending["train_loss"] = logs["loss"]
        for key in ("learning_rate", "grad_norm", "ce", "kl"):
            if key in logs:
                self._pending[key] = logs[key]
        record = self._pending
        self._flush_pending()
        logs.update({k: v for k, v in record.items() if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)})

    def on_train_end(self, args, state, control, **kwargs):
        self._flush_pending()

    def _record(self, model, *, epoch: int, step: int) -> dict[str, Any]:
        start = time.monotonic()
        record: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": None}
        record.update(self.evaluate(model))
        record.update(best_epoch=self.stopper.best_epoch, best_dev_exact_match=self.stopper.best, stop=False)
        record["eval_seconds"] = round(time.monotonic() - start, 3)
        return record

    def _flush_pending(self) -> None:
        if self._pending is not None:
            record, self._pending = self._pending, None
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        """Append one line and make it durable (flush + fsync) before training goes on."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.history.append(record)
        self.log(_progress_line(record))

    def _restore(self, epoch: int) -> None:
        """On resume: keep the lines up to the checkpoint's epoch and replay early stopping."""
        self.history = [r for r in read_metrics(self.metrics_path) if r["epoch"] <= epoch]
        atomic_write_jsonl(self.metrics_path, self.history)
        for record in self.history:
            if record["epoch"] > 0 and self.every_epoch:
                self.stopper.update(record["epoch"], record.get("dev/exact_match"))


def _progress_line(record: Mapping[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}"]
    for key, label in (("train_loss", "loss"), ("train/exact_match", "train fit"), ("dev/exact_match", "dev EM"),
                       ("test/exact_match", "test EM"), ("ood/exact_match", "OOD EM"), ("drift/cosine", "drift")):
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:.3f}")
    return "  ".join(parts)
