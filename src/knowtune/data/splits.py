"""The training, dev, test and OOD examples of a fine-tuning run, and the one rule that makes them.

Gekhman et al. (EMNLP 2024, arXiv 2405.05904), section 2: the model is fine-tuned on the
train split, early-stopped on dev, and tested in distribution (test questions of the
relations it was fine-tuned on) and out of distribution (test questions of relations
absent from the fine-tuning data). :func:`split_examples` is that rule; ``knowtune train``
and ``knowtune study`` both use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from knowtune.data.schema import QAExample

#: The splits of a run, in the order they are evaluated and hashed.
NAMES = ("train", "dev", "test", "ood")


@dataclass(frozen=True)
class Splits:
    """Examples per split of one run: ``train`` is fine-tuned on; ``dev``, ``test`` and ``ood``
    are evaluated (every epoch, by :class:`~knowtune.train.callbacks.EpochEvalCallback`)."""

    train: tuple[QAExample, ...] = ()
    dev: tuple[QAExample, ...] = ()
    test: tuple[QAExample, ...] = ()
    ood: tuple[QAExample, ...] = ()

    def __post_init__(self) -> None:
        for item in fields(self):  # any sequence in, tuples kept: the object is immutable
            object.__setattr__(self, item.name, tuple(getattr(self, item.name)))

    def __getitem__(self, name: str) -> tuple[QAExample, ...]:
        if name not in NAMES:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(NAMES)}")
        return getattr(self, name)

    def items(self) -> Iterator[tuple[str, tuple[QAExample, ...]]]:
        """``(name, examples)`` per split, in :data:`NAMES` order."""
        return ((name, self[name]) for name in NAMES)

    @property
    def all(self) -> tuple[QAExample, ...]:
        """Every example, split after split."""
        return self.train + self.dev + self.test + self.ood

    @property
    def evaluation(self) -> dict[str, tuple[QAExample, ...]]:
        """The held-out splits (``dev``, ``test``, ``ood``) by name."""
        return {name: self[name] for name in NAMES[1:]}

    def counts(self) -> dict[str, int]:
        """Examples per split, by name."""
        return {name: len(examples) for name, examples in self.items()}

    def describe(self) -> str:
        """``"12 train, 3 dev, 4 test, 2 OOD examples"``."""
        return f"{len(self.train)} train, {len(self.dev)} dev, {len(self.test)} test, {len(self.ood)} OOD examples"

    def with_train(self, examples: Sequence[QAExample]) -> Splits:
        """The same held-out splits with other training examples (a curated variant)."""
        return replace(self, train=tuple(examples))


def split_examples(examples: Sequence[QAExample], *, dev: Sequence[QAExample] | None = None, test: Sequence[QAExample] | None = None,
                   ood: Sequence[QAExample] | None = None) -> Splits:
    """The run's splits from one dataset: ``train``, ``dev`` and ``test`` are its examples of that
    split unless ``dev``/``test`` are given. Without ``ood``, the test examples of relations that
    have no training example are the OOD set and leave the test set (Gekhman et al. 2024, sec. 2)."""
    train = [ex for ex in examples if ex.split == "train"]
    dev = dev if dev is not None else [ex for ex in examples if ex.split == "dev"]
    test = test if test is not None else [ex for ex in examples if ex.split == "test"]
    if ood is not None:
        return Splits(train, dev, test, ood)
    relations = {ex.relation for ex in train}
    return Splits(train, dev, [ex for ex in test if ex.relation in relations], [ex for ex in test if ex.relation not in relations])


def load_splits(data: str | Path, *, dev: str | Path | None = None, test: str | Path | None = None, ood: str | Path | None = None,
                fields=None) -> Splits:
    """:func:`split_examples` of the dataset ``data`` (a path or ``embedded``); ``dev``, ``test`` and
    ``ood`` name other datasets whose records default to that split; ``fields`` maps record keys
    (:class:`~knowtune.data.formats.FieldMap` or ``DataFields``) for all of them."""
    from knowtune.data.loaders import load_examples
    from knowtune.world.embedded import resolve_data_path

    def load(spec: str | Path | None, split: str) -> list[QAExample] | None:
        return load_examples(resolve_data_path(spec), split=split, fields=fields) if spec else None

    return split_examples(load_examples(resolve_data_path(data), fields=fields), dev=load(dev, "dev"), test=load(test, "test"),
                          ood=load(ood, "test"))
