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

``method`` chooses how a normalised answer is compared with the gold answers (recorded in
the audit protocol, so results of different matchers never mix):

* ``exact`` (the default, SliCK's EM): equal to a normalised gold alias.
* ``contains``: a normalised gold alias occurs in the normalised answer as whole words
  (``" " + gold + " "`` inside ``" " + answer + " "``), for answers that say more than the
  entity ("It is Paris, in France." contains "paris"; "romeo" does not contain "rome").
* ``f1``: the SQuAD v1.1 token F1 (``f1_score`` of its evaluation script: token overlap
  of the normalised texts, F1 = 2PR / (P + R)) against the best gold alias is at least
  ``f1_threshold``.
* ``judge``: an OpenAI-compatible model is asked whether the answer means a gold answer
  (:mod:`knowtune.judge`; its prompt and model are part of the protocol). An exact match is
  correct and an empty answer wrong without asking.

Bump :data:`MATCH_VERSION` whenever this rule changes: it is stored with every result.
Fields added after version 1 (``method``, ``f1_threshold``, ``judge``) are left out of the
serialised config while they hold their defaults, so the default's record and hash are
those of version 1 and stores written before them stay resumable.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from knowtune.config import StageConfig

MATCH_VERSION = 1
_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


MatchMethod = Literal["exact", "contains", "f1", "judge"]
DEFAULT_JUDGE_PROMPT = (
    "You grade answers to a closed-book quiz. The proposed answer is correct if it names the same thing as the gold answer "
    "(an alias, abbreviation, translation or fuller form counts); it is wrong if it names something else, is less specific, "
    "or hedges between several answers.\n"
    "Question: {question}\nGold answer: {gold}\nProposed answer: {answer}\n"
    "Is the proposed answer correct? Reply yes or no.\nReply:"
)
#: Short flags of the match keys (``knowtune annotate`` and ``evaluate``): ``--match f1 --f1-threshold 0.6``.
MATCH_FLAG_ALIASES = {"match.method": ["--match"], "match.f1_threshold": ["--f1-threshold"], "match.judge.base_url": ["--judge-url"],
                      "match.judge.model": ["--judge-model"]}
#: The judge settings that decide verdicts (recorded in the protocol); the others only say where and how hard to ask.
JUDGE_PROTOCOL_KEYS = ("model", "prompt", "max_tokens")


def _judge_prompt(value: str) -> str:
    for slot in ("{question}", "{gold}", "{answer}"):
        if slot not in value:
            raise ValueError(f"the judge prompt must contain {slot} (slots: {{question}}, {{gold}}, {{answer}})")
    try:
        value.format(question="q", gold="g", answer="a")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"the judge prompt has an unknown or malformed field ({error}); write literal braces as {{{{ }}}}") from None
    return value


class JudgeSettings(StageConfig):
    """The answer judge of ``method: judge``: an OpenAI-compatible ``/v1/completions`` server, or with ``chat`` a
    ``/v1/chat/completions`` one (:mod:`knowtune.judge`)."""

    model_config = ConfigDict(frozen=True)
    ADDED_DEFAULTS = {"chat": False}  # added after the judge first shipped

    base_url: list[str]
    """Judge server base URL, e.g. http://127.0.0.1:8081/v1 (repeat for replicas)."""
    model: str
    """The model name the judge server serves (checked against its /v1/models; recorded in the protocol)."""
    prompt: Annotated[str, AfterValidator(_judge_prompt)] = DEFAULT_JUDGE_PROMPT
    """The judge's prompt ({question}, {gold}: the gold aliases joined by ' / ', {answer}); its reply starts with yes or no."""
    max_tokens: int = Field(default=4, ge=1)
    """Tokens of the judge's reply (only its first word is read)."""
    chat: bool = False
    """Send the prompt as one user message to /v1/chat/completions (the server applies its chat template): for instruct
    models served as chat models, and APIs without /v1/completions. Recorded in the protocol when on."""
    api_key_env: str | None = None
    """Name of the environment variable holding the judge server's API key."""
    concurrency: int = Field(default=8, ge=1)
    """Judge requests in flight per server."""
    request_timeout: float = Field(default=60.0, gt=0)
    """Seconds one judge request may take before it is retried."""
    max_retries: int = Field(default=8, ge=0)
    """Retries of one judge request (429, 5xx, timeouts), with backoff."""


class MatchConfig(StageConfig):
    """Which normalisation steps :func:`normalize_answer` applies (all on by default).

    ``version`` names the rule itself (see the module docstring); a config saved by
    another version of the rule fails to load instead of silently matching differently.
    """

    model_config = ConfigDict(frozen=True)
    ADDED_DEFAULTS = {"method": "exact", "f1_threshold": 0.5, "judge": None}  # post-version-1 fields (module docstring)

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
    method: MatchMethod = "exact"
    """exact (SliCK's EM), contains (a gold alias inside the answer), f1 (SQuAD token F1 >= f1_threshold) or judge (a served model decides)."""
    f1_threshold: float = Field(default=0.5, gt=0, le=1)
    """With method f1: the least token F1 against a gold alias that counts as correct."""
    judge: JudgeSettings | None = None
    """With method judge: the OpenAI-compatible server and model that decide (docs/annotate.md)."""

    @model_validator(mode="after")
    def _judge_needs_a_server(self) -> "MatchConfig":
        if self.method == "judge" and self.judge is None:
            raise ValueError("method judge needs the judge server: set match.judge.base_url and match.judge.model "
                             "(--judge-url http://HOST:PORT/v1 --judge-model NAME)")
        return self


    def protocol_record(self) -> dict[str, Any]:
        """What decides a verdict: the normalisation, the method and its own settings only
        (the judge's run settings, such as its URL and timeouts, are left out)."""
        record = self.model_dump(mode="json")
        if self.method != "f1":
            record.pop("f1_threshold", None)
        if self.method != "judge":
            record.pop("judge", None)
        elif self.judge is not None:
            record["judge"] = {key: record["judge"][key] for key in JUDGE_PROTOCOL_KEYS} | ({"chat": True} if self.judge.chat else {})
        return record


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
    """Whether ``prediction`` matches a gold answer under ``config.method`` (module docstring).

    ``answers`` is one gold answer or an iterable of them. An empty normalised prediction
    (``""``, ``"the"``, ``"?!"``) is never correct, even against an answer that also
    normalises to empty. ``judge`` needs a server: use :func:`correct_many` with a
    :class:`knowtune.judge.Judge`.
    """
    predicted = normalize_answer(prediction, config)
    if not predicted:
        return False
    golds = [g for g in (normalize_answer(a, config) for a in ((answers,) if isinstance(answers, str) else answers)) if g]
    return matches_normalized(predicted, golds, config)


def matches_normalized(predicted: str, golds: Iterable[str], config: MatchConfig) -> bool:
    """The comparison of ``config.method`` between a non-empty normalised answer and normalised gold aliases
    (``exact``, ``contains`` or ``f1``)."""
    if config.method == "exact":
        return predicted in golds
    if config.method == "contains":
        padded = f" {' '.join(predicted.split())} "
        return any(f" {' '.join(gold.split())} " in padded for gold in golds)
    if config.method == "f1":
        return any(token_f1(predicted, gold) >= config.f1_threshold for gold in golds)
    raise ValueError("method judge needs a judge: use knowtune.matching.correct_many with a knowtune.judge.Judge")


def token_f1(predicted: str, gold: str) -> float:
    """SQuAD v1.1 token F1 of two normalised texts (its ``f1_score``): with c = the size of the
    multiset intersection of their whitespace tokens, P = c / |predicted|, R = c / |gold|,
    F1 = 2PR / (P + R); 0 when they share no token."""
    ours, theirs = predicted.split(), gold.split()
    common = sum((Counter(ours) & Counter(theirs)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(ours), common / len(theirs)
    return 2 * precision * recall / (precision + recall)


def correct_many(items: Sequence[tuple[str, Sequence[str], str]], config: MatchConfig = DEFAULT_MATCH, judge=None) -> list[bool]:
    """Verdicts of ``(question, gold answers, prediction)`` triples under ``config.method``;
    ``judge`` (a :class:`knowtune.judge.Judge`) is asked when the method is ``judge``."""
    if config.method != "judge":
        return [is_correct(prediction, answers, config) for _, answers, prediction in items]
    if judge is None:
        raise ValueError("match method judge: no judge given (open one with knowtune.judge.open_judge)")
    return judge.verdicts(items)


def _stop_rule(value: str | list[str]) -> str | list[str]:
    stops = [value] if isinstance(value, str) else list(value)
    if not stops or any(not s for s in stops):
        raise ValueError("stop strings must be non-empty (one string, or a list of them)")
    return stops[0] if len(stops) == 1 else stops


#: The stop rule of a generated answer: one stop string or several (a one-item list is that string,
#: so ``["\n"]`` and ``"\n"`` are the same protocol).
StopRule = Annotated[str | list[str], AfterValidator(_stop_rule)]


def stop_strings(stop: str | Sequence[str]) -> tuple[str, ...]:
    """The stop strings of a stop rule, as a tuple."""
    return (stop,) if isinstance(stop, str) else tuple(stop)


def long_answer_warning(tokenizer, examples: Sequence, max_new_tokens: int) -> str | None:
    """A warning naming how many ``examples`` (``QAExample``s) have no gold answer that fits in
    ``max_new_tokens`` tokens (as it follows the prompt: after a space, no special tokens), or None."""
    flat = [(j, " " + a) for j, e in enumerate(examples) for a in e.answers]
    answer_lengths = [0] * len(examples)
    if flat:
        answer_lengths = [10**9] * len(examples)
        for (j, _), ids in zip(flat, tokenizer([t for _, t in flat], add_special_tokens=False)["input_ids"]):
            answer_lengths[j] = min(answer_lengths[j], len(ids))
    over = [n for n in answer_lengths if n > max_new_tokens]
    if not over:
        return None
    return (f"warning: {len(over)} of {len(answer_lengths)} examples have gold answers longer than max_new_tokens={max_new_tokens} "
            f"tokens (up to {max(over)}): a generated answer is cut before it could repeat them; raise --max-new-tokens "
            f"to at least {max(over)}, or match with --match contains/f1/judge")


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
