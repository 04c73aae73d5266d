"""The dataset filters of the controlled study (Gekhman et al. 2024, METHODS.md section 2).

Each filter is pure: it returns a new list and leaves its input alone.

- :func:`drop_multi_answer`: the paper keeps only examples with exactly one gold answer.
- :func:`drop_test_overlap`: the paper removes train examples whose entities also occur
  in the test split (2.1% of train; 81,700 train examples remain for the 12
  in-distribution relations). Entities are compared after
  :func:`knowtune.matching.normalize_answer` (so case, punctuation and articles do not
  matter). Two readings are offered, because the paper's wording ("subject or object")
  and its numbers disagree:

  ``match="subject"`` (default): drop a train example when its subject is the subject of
  any test example. On the shared EntityQuestions copy (after :func:`drop_multi_answer`)
  this drops 2.3% of the in-distribution train examples and leaves 81,660, close to the
  paper's figures.

  ``match="entity"``: drop a train example when its subject or object is the subject or
  object of any test example. Objects such as country names are shared by thousands of
  questions, so this drops about 63% of the in-distribution train examples.

  An example's subject is ``example.subject`` when set, else it is recovered from the
  question with its relation's template (:func:`~knowtune.data.templates.subject_from_question`);
  its objects are ``example.object`` when set, else its gold answers.

:func:`apply_filters` runs the chosen filters in the paper's order and returns a
:class:`FilterReport` of what each removed, per split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from knowtune.data.schema import SPLITS, QAExample
from knowtune.data.templates import subject_from_question
from knowtune.errors import KnowtuneError
from knowtune.matching import normalize_answer

OverlapMatch = Literal["subject", "entity"]


def drop_multi_answer(examples: Iterable[QAExample]) -> list[QAExample]:
    """The examples with exactly one gold answer."""
    return [example for example in examples if len(example.answers) == 1]


def drop_test_overlap(
    examples: Sequence[QAExample],
    templates: Mapping[str, str] | None = None,
    *,
    match: OverlapMatch = "subject",
) -> list[QAExample]:
    """``examples`` without the train examples whose entities occur in the test split.

    Dev and test examples are kept. ``templates`` (relation -> template with ``[X]``)
    recovers subjects that examples do not carry; ``match`` picks the reading described
    in the module docstring. Raises :class:`KnowtuneError` when a needed subject cannot
    be found, rather than silently keeping the example.
    """
    if match not in ("subject", "entity"):
        raise ValueError(f"match must be 'subject' or 'entity', not {match!r}")
    templates = templates or {}
    test_entities: set[str] = set()
    for example in examples:
        if example.split == "test":
            test_entities.update(_entities(example, templates, match))
    return [
        example
        for example in examples
        if example.split != "train" or test_entities.isdisjoint(_entities(example, templates, match))
    ]


def _entities(example: QAExample, templates: Mapping[str, str], match: OverlapMatch) -> set[str]:
    names = [_subject(example, templates)]
    if match == "entity":
        names.extend((example.object,) if example.object else example.answers)
    normalized = {normalize_answer(name) for name in names}
    normalized.discard("")
    return normalized


def _subject(example: QAExample, templates: Mapping[str, str]) -> str:
    if example.subject:
        return example.subject
    template = templates.get(example.relation)
    subject = subject_from_question(example.question, template) if template else None
    if subject is None:
        reason = "its question does not fit the template" if template else "no template is given for its relation"
        raise KnowtuneError(
            f"cannot tell the subject of example {example.id!r} (relation {example.relation!r}): "
            f"it has no 'subject' field and {reason} ({template!r})",
            fix="pass the relation templates (--templates relation_query_templates.json) or add a 'subject' field to the data",
        )
    return subject


@dataclass(frozen=True)
class FilterStep:
    """One filter's effect: examples removed per split, and how many remained."""

    name: str
    removed_by_split: dict[str, int]
    remaining: int

    @property
    def removed(self) -> int:
        return sum(self.removed_by_split.values())


@dataclass
class FilterReport:
    """What each filter removed, in the order the filters ran."""

    steps: list[FilterStep] = field(default_factory=list)

    @property
    def removed(self) -> dict[str, int]:
        """Filter name -> number of examples it removed."""
        return {step.name: step.removed for step in self.steps}

    def record(self, name: str, before: Sequence[QAExample], after: Sequence[QAExample]) -> list[QAExample]:
        """Add a step comparing ``before`` and ``after``; return ``after`` as a list."""
        counts = Counter(example.split for example in before)
        counts.subtract(example.split for example in after)
        self.steps.append(FilterStep(name, {split: counts[split] for split in SPLITS}, len(after)))
        return list(after)


def apply_filters(
    examples: Sequence[QAExample],
    *,
    multi_answer: bool = False,
    test_overlap: bool = False,
    templates: Mapping[str, str] | None = None,
    overlap_match: OverlapMatch = "subject",
) -> tuple[list[QAExample], FilterReport]:
    """Run the chosen filters (multi-answer first, as in the paper) and report what each removed."""
    report = FilterReport()
    kept = list(examples)
    if multi_answer:
        kept = report.record("drop_multi_answer", kept, drop_multi_answer(kept))
    if test_overlap:
        kept = report.record("drop_test_overlap", kept, drop_test_overlap(kept, templates, match=overlap_match))
    return kept, report
