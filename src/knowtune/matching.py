"""Answer normalisation and exact-match correctness: the one rule every stage shares.

SliCK (METHODS.md section 1) counts a generated answer as correct by exact match (EM)
against the gold answer, but the paper does not state its normalisation. knowtune uses
the SQuAD v1.1 evaluation rule (Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for
Machine Comprehension of Text", ``normalize_answer`` in its official evaluation script),
preceded by Unicode NFKC. With every :class:`MatchConfig` option on (the default),
``normalize_answer`` applies, in this order:

1. ``nfkc``: Unicode NFKC normalisation, so compatibility forms compare equal to their
   plain forms (full-width ``"Ｐａｒｉｓ"`` -> ``"Paris"``, ``"ﬁ"`` -> ``"fi"``, a no-break
   space -> a space).
2. ``lowercase``: ``str.lower()``.
3. ``strip_punctuation``: delete (not replace by a space) every character that is ASCII
   punctuation (``string.punctuation``, which also holds the symbols ``$+<=>^`|~``) or
   whose Unicode category starts with ``P``. So ``"Ashley-Cooper"`` -> ``"ashleycooper"``,
   as in SQuAD.
4. ``strip_articles``: replace the English articles ``a``, ``an``, ``the`` standing as
   whole words (regex ``\\b(a|an|the)\\b``, after lowercasing) by a space.
5. ``collapse_whitespace``: split on any Unicode whitespace and rejoin with one space,
   which also strips both ends.

When ``nfkc`` is on, NFKC is applied once more at the end, because deleting punctuation
can bring a base letter next to a combining mark (``"e.\\u0301"`` -> ``"e\\u0301"``) that
NFKC then composes; this makes ``normalize_answer`` idempotent.

A prediction is correct when its normalised form is non-empty and equals the normalised
form of any gold answer (:func:`is_correct`). Generations are cut at the first stop
string (a newline by default) before matching (:func:`extract_answer`).

Bump :data:`MATCH_VERSION` whenever this rule changes: it is stored with every result.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import ConfigDict

from knowtune.config import StageConfig

MATCH_VERSION = 1
_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class MatchConfig(StageConfig):
    """Which normalisation steps :func:`normalize_answer` applies (all on by default).

    ``version`` names the rule itself (see the module docstring); a config saved by
    another version of the rule fails to load instead of silently matching differently.
    """

    model_config = ConfigDict(frozen=True)

    nfkc: bool = True
    """Unicode NFKC normalisation."""
    lowercase: bool = True
    """Lowercase."""
    strip_punctuation: bool = True
    """Drop punctuation."""
    strip_articles: bool = True
    """Drop the articles a, an, the."""
    collapse_whitespace: bool = True
    """Collapse runs of whitespace."""
    version: Literal[1] = MATCH_VERSION
    """Version of the matching rule (a config of another version fails to load)."""


DEFAULT_MATCH = MatchConfig()


class _PunctuationTable(dict):
    """``str.translate`` table deleting punctuation, filled in lazily one code point at a time."""

    def __missing__(self, codepoint: int) -> int | None:
        char = chr(codepoint)
        is_punctuation = char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")
        self[codepoint] = None if is_punctuation else codepoint
        return self[codepoint]


_PUNCTUATION = _PunctuationTable()


def normalize_answer(text: str, config: MatchConfig = DEFAULT_MATCH) -> str:
    """Normalise an answer for exact match: NFKC, lowercase, drop punctuation and
    articles, collapse whitespace (each step switchable in ``config``; order and details
    in the module docstring)."""
    if config.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if config.lowercase:
        text = text.lower()
    if config.strip_punctuation:
        text = text.translate(_PUNCTUATION)
    if config.strip_articles:
        text = _ARTICLES.sub(" ", text)
    if config.collapse_whitespace:
        text = " ".join(text.split())
    if config.nfkc:
        text = unicodedata.normalize("NFKC", text)
    return text


def is_correct(prediction: str, answers: str | Iterable[str], config: MatchConfig = DEFAULT_MATCH) -> bool:
    """True when the normalised ``prediction`` is non-empty and equals any normalised gold answer.

    ``answers`` is one gold answer or an iterable of them. An empty normalised prediction
    (``""``, ``"the"``, ``"?!"``) is never correct, even against an answer that also
    normalises to empty.
    """
    predicted = normalize_answer(prediction, config)
    if not predicted:
        return False
    if isinstance(answers, str):
        answers = (answers,)
    return any(predicted == normalize_answer(answer, config) for answer in answers)


def extract_answer(generation: str, stop: str | Sequence[str] = "\n") -> str:
    """The answer part of a generation: the text before the first stop string, stripped.

    ``stop`` is one string or several; the generation is cut at the earliest occurrence
    of any of them (a newline by default, which ends the ``A:`` line of a few-shot prompt).
    """
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not s for s in stops):
        raise ValueError("stop strings must be non-empty")
    cut = min((i for i in (generation.find(s) for s in stops) if i >= 0), default=len(generation))
    return generation[:cut].strip()
