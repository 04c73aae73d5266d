"""Early rejection of sampled answers that can no longer match any gold answer.

SliCK's Ps (Gekhman et al., EMNLP 2024, arXiv 2405.05904, section 3) only needs to know
whether each sample is correct, not the sample's text. A sample whose first words already
differ from every gold answer can stop decoding: no continuation can make it correct, so
stopping it changes no count and no category. This is exact, not a heuristic:

With the answer rule of :mod:`knowtune.matching` (cut at the stop character, then
NFKC, lowercase, delete punctuation, drop articles, collapse whitespace), every step
acts locally on words, so for a partial text ``t`` split at its last whitespace into
finished words ``t'`` and the word being written ``w``, every completion of ``t``
normalises to ``n' + " " + W + ...`` (or to ``n'`` alone, or ``W...`` when ``n'`` is
empty), where ``n' = normalize(t')`` and ``W`` is the normalised completion of ``w``. For an
ASCII ``w`` that is a single regex word once lowercased and stripped of punctuation, ``W``
starts with it less its last character (a combining mark may still follow), unless ``W``
can still turn out to be an article; otherwise only ``n'`` is checked. A gold answer that starts with none of these cannot be matched.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable
from functools import lru_cache

from knowtune.matching import MatchConfig, normalize_answer

_ARTICLES = ("a", "an", "the")
_PUNCTUATION = frozenset(string.punctuation)


def may_still_match(partial: str, golds: Iterable[str], config: MatchConfig) -> bool:
    """False only if no text starting with ``partial`` (which holds no stop character)
    can be a correct answer for the normalised gold answers ``golds``."""
    cut = max((i for i, c in enumerate(partial) if c.isspace()), default=-1)
    done, word = partial[:cut + 1], partial[cut + 1:]
    head = normalize_answer(done, config)
    joined = head + " " if head else ""
    required = joined
    may_vanish = True
    if word.isascii():
        w = word.lower() if config.lowercase else word
        if config.strip_punctuation:
            w = "".join(c for c in w if c not in _PUNCTUATION)
        # Only a plain alphanumeric word is one regex word: otherwise a part of it could
        # still be an article, or a non-word character could split it.
        may_vanish = not w.isalnum() or (config.strip_articles and any(a.startswith(w) for a in _ARTICLES))
        if not may_vanish:
            required = joined + w[:-1]
    for gold in golds:
        if gold.startswith(required) or (may_vanish and gold == head):
            return True
    return False


def pruner(answers: Iterable[str], config: MatchConfig, stop: str | list[str]) -> Callable[[str], bool] | None:
    """``partial -> may it still be correct`` for one example, or None where the rule above
    does not apply (a multi-character stop string or several, whitespace collapsing switched off,
    or a match method other than exact: a longer answer may still contain or mean the gold one)."""
    if not isinstance(stop, str) or len(stop) != 1 or not config.collapse_whitespace or config.method != "exact":
        return None
    golds = tuple(g for g in {normalize_answer(a, config) for a in answers} if g)

    @lru_cache(maxsize=4096)  # the samples of one example often share their first tokens
    def alive(partial: str) -> bool:
        return may_still_match(partial, golds, config)

    return alive
