"""Answer normalisation and exact match: worked examples plus properties checked with hypothesis."""

from __future__ import annotations

import itertools

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from knowtune.config import load_config
from knowtune.errors import ConfigError
from knowtune.matching import DEFAULT_MATCH, MATCH_VERSION, MatchConfig, extract_answer, is_correct, normalize_answer

STEPS = ("nfkc", "lowercase", "strip_punctuation", "strip_articles", "collapse_whitespace")
ALL_CONFIGS = [MatchConfig(**dict(zip(STEPS, bits))) for bits in itertools.product((True, False), repeat=len(STEPS))]
# Characters that exercise every step: articles, case, punctuation, odd spaces, compatibility
# forms and combining marks.
TRICKY = st.lists(
    st.sampled_from([*"aAnNtThHeE .,-'!?", "the", "an", " a ", "\u0301", "\u00a0", "\u3000", "\t", "\n", "İ", "ẞ", "ǅ", "ﬁ", "Ｐ", "Ⅸ", "—", "«", "é"]),
    max_size=12,
).map("".join)
TEXT = st.one_of(st.text(max_size=30), TRICKY)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The  Beatles!", "beatles"),
        ("Ｐａｒｉｓ", "paris"),  # NFKC folds full-width letters
        ("ﬁnland", "finland"),  # and ligatures
        ("Paris\u00a0Saint-Germain", "paris saintgermain"),  # punctuation is deleted, not spaced (SQuAD)
        ("  An   apple a day ", "apple day"),
        ("Theatre of the Absurd", "theatre of absurd"),  # articles only as whole words
        ("«¿Qué?»", "qué"),  # Unicode punctuation
        ("e.\u0301", "é"),  # the final NFKC composes what punctuation removal joined
        ("The", ""),
    ],
)
def test_normalize_examples(text, normalized):
    assert normalize_answer(text) == normalized


def test_each_step_can_be_switched_off():
    text = " The  ＡＢＣ, Inc. "
    assert normalize_answer(text) == "abc inc"
    assert normalize_answer(text, MatchConfig(nfkc=False)) == "ａｂｃ inc"
    assert normalize_answer(text, MatchConfig(lowercase=False)) == "The ABC Inc"
    assert normalize_answer(text, MatchConfig(strip_punctuation=False)) == "abc, inc."
    assert normalize_answer(text, MatchConfig(strip_articles=False)) == "the abc inc"
    assert normalize_answer(text, MatchConfig(collapse_whitespace=False)) == "    abc inc "


@pytest.mark.parametrize(
    ("prediction", "answers", "correct"),
    [
        ("The  Beatles!", ["beatles"], True),
        ("beatles", "The Beatles", True),  # a single gold answer may be a plain string
        ("Ｐａｒｉｓ", ("Paris",), True),
        ("Lyon", ["Paris", "lyon."], True),  # any gold answer
        ("Paris, France", ["Paris"], False),  # exact match, not containment
        ("", [""], False),  # an empty prediction is never correct
        ("the", ["a"], False),
        ("?!", ["..."], False),
    ],
)
def test_is_correct_examples(prediction, answers, correct):
    assert is_correct(prediction, answers) is correct


def test_config_changes_what_matches():
    assert not is_correct("The Beatles", ["beatles"], MatchConfig(strip_articles=False))
    assert not is_correct("BEATLES", ["beatles"], MatchConfig(lowercase=False))


@pytest.mark.parametrize(
    ("generation", "stop", "answer"),
    [
        (" London\nQ: Where was Bob born?\nA: Paris", "\n", "London"),
        ("London", "\n", "London"),
        ("\nLondon", "\n", ""),  # cut at the first stop, even when it comes first
        ("London Q: next", ["\n", "Q:"], "London"),
        ("a.b\nc", [".", "\n"], "a"),  # the earliest stop wins, whatever its position in the list
    ],
)
def test_extract_answer(generation, stop, answer):
    assert extract_answer(generation, stop) == answer


def test_extract_answer_rejects_empty_stop():
    with pytest.raises(ValueError, match="non-empty"):
        extract_answer("x", "")


def test_config_is_a_versioned_stage_config(tmp_path):
    assert DEFAULT_MATCH.model_dump() == {**dict.fromkeys(STEPS, True), "version": MATCH_VERSION}
    path = tmp_path / "match.yaml"
    path.write_text(yaml.safe_dump({"strip_articles": False, "version": MATCH_VERSION}))
    assert load_config(MatchConfig, path) == MatchConfig(strip_articles=False)
    path.write_text(yaml.safe_dump({"version": MATCH_VERSION + 1}))
    with pytest.raises(ConfigError, match="version"):
        load_config(MatchConfig, path)
    with pytest.raises(ConfigError, match="strip_accents: unknown key"):
        load_config(MatchConfig, overrides={"strip_accents": True})


@settings(max_examples=150, deadline=None)
@given(TEXT, st.sampled_from(ALL_CONFIGS))
def test_normalize_is_idempotent(text, config):
    once = normalize_answer(text, config)
    assert normalize_answer(once, config) == once


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_default_output_has_no_case_punctuation_articles_or_extra_space(text):
    normalized = normalize_answer(text)
    assert normalized == normalized.strip() and "  " not in normalized
    assert normalized == normalized.lower()
    assert not set(normalized) & set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    assert not {"a", "an", "the"} & set(normalized.split())


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_a_string_matches_itself_unless_it_normalises_to_nothing(text):
    assert is_correct(text, [text]) is bool(normalize_answer(text))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10), st.sampled_from(["", "The ", "the ", "A ", "an "]), st.sampled_from(["", "!", ".", " ?", "  "]), st.sampled_from(["", " ", "\t", "\u00a0"]))
def test_case_article_punctuation_and_space_invariance(word, article, punctuation, space):
    variant = space + article + word.upper() + punctuation + space
    assert is_correct(variant, [word]) is (word not in ("a", "an", "the"))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_extract_answer_cuts_at_the_first_newline(head, tail):
    first_line = head.split("\n")[0]
    assert extract_answer(head + "\n" + tail) == first_line.strip()


# -- match methods: contains, f1, judge's record; stop rules; the long-answer warning ----------------------

@pytest.mark.parametrize(("prediction", "answers", "exact", "contains", "f1"), [
    ("Paris", ["Paris"], True, True, True),
    ("It is Paris, in France.", ["paris"], False, True, False),  # F1 = 2 * (1/4 * 1) / (1/4 + 1) = 0.4
    ("Paris France", ["Paris"], False, True, True),  # F1 = 2/3
    ("Romeo", ["Rome"], False, False, False),  # contains works on whole words
    ("the United States of America", ["USA", "United States"], False, True, True),  # any alias; F1 = 0.8
    ("Barack Obama", ["Obama"], False, True, True),
    ("Obama", ["Barack Hussein Obama"], False, False, True),  # F1 = 0.5, at the default threshold
    ("Michelle Obama", ["Barack Obama"], False, False, True),  # F1 = 0.5: why the threshold is a choice
    ("", ["Paris"], False, False, False),
    ("the", ["the"], False, False, False),  # an answer that normalises to nothing is never right
])
def test_hand_made_cases_of_each_method(prediction, answers, exact, contains, f1):
    assert is_correct(prediction, answers) is exact
    assert is_correct(prediction, answers, MatchConfig(method="contains")) is contains
    assert is_correct(prediction, answers, MatchConfig(method="f1")) is f1


def test_token_f1_is_squads_and_the_threshold_decides():
    from knowtune.matching import token_f1

    assert token_f1("barack obama", "obama") == pytest.approx(2 / 3)
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # multiset overlap: 2 of 3 tokens each side
    assert token_f1("x", "y") == 0.0
    assert is_correct("Michelle Obama", ["Barack Obama"], MatchConfig(method="f1", f1_threshold=0.5))
    assert not is_correct("Michelle Obama", ["Barack Obama"], MatchConfig(method="f1", f1_threshold=0.6))
    with pytest.raises(ValueError):
        MatchConfig(method="f1", f1_threshold=0)


def test_judge_needs_a_server_and_is_not_a_pure_function():
    from knowtune.matching import correct_many

    with pytest.raises(ValueError, match="--judge-url"):
        MatchConfig(method="judge")
    judged = MatchConfig(method="judge", judge={"base_url": ["http://127.0.0.1:9/v1"], "model": "m"})
    with pytest.raises(ValueError, match="judge"):
        is_correct("x", ["x y"], judged)
    with pytest.raises(ValueError, match="open_judge"):
        correct_many([("q", ["a"], "b")], judged)
    with pytest.raises(ValueError, match="answer"):
        MatchConfig(method="judge", judge={"base_url": ["http://h/v1"], "model": "m", "prompt": "{question} {gold}"})
    with pytest.raises(ValueError, match="malformed"):
        MatchConfig(method="judge", judge={"base_url": ["http://h/v1"], "model": "m", "prompt": "{question} {gold} {answer} {x}"})


def test_the_default_record_is_version_1s_and_new_keys_appear_only_when_set():
    v1 = {"nfkc": True, "lowercase": True, "strip_punctuation": True, "strip_articles": True, "collapse_whitespace": True, "version": 1}
    assert MatchConfig().model_dump(mode="json") == v1 == MatchConfig(method="exact").protocol_record()
    assert MatchConfig(method="f1").protocol_record() == {**v1, "method": "f1"}  # the default threshold 0.5 is implied
    assert MatchConfig(method="contains", f1_threshold=0.7).protocol_record() == {**v1, "method": "contains"}  # unused: not recorded
    judged = MatchConfig(method="judge", judge={"base_url": ["http://h:1/v1"], "model": "m", "concurrency": 2})
    assert set(judged.protocol_record()["judge"]) == {"model", "prompt", "max_tokens"}  # where and how hard to ask: not the protocol
    assert MatchConfig.model_validate(judged.model_dump()) == judged


def test_stop_rules():
    from knowtune.matching import StopRule, stop_strings
    from pydantic import TypeAdapter

    rule = TypeAdapter(StopRule)
    assert rule.validate_python(["\n"]) == "\n"  # a one-item list is that string (the same protocol)
    assert rule.validate_python(["\n\n", "Q:"]) == ["\n\n", "Q:"]
    for bad in ([], [""], ""):
        with pytest.raises(ValueError):
            rule.validate_python(bad)
    assert stop_strings("\n") == ("\n",)
    answer = "Paris is the capital. It lies on the Seine.\n\nQ: next"
    assert extract_answer(answer, ["\n\n", "Q:"]) == "Paris is the capital. It lies on the Seine."
    assert extract_answer(answer, [". ", "\n"]) == "Paris is the capital"


def test_long_gold_answers_are_counted_in_a_warning():
    from transformers import AutoTokenizer

    from knowtune.data.schema import QAExample
    from knowtune.matching import long_answer_warning
    from knowtune.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    long = "a very long answer that goes on and on for many more words than fit " * 3
    examples = [QAExample(id=str(i), relation="r", question="q?", answers=answers, split="train")
                for i, answers in enumerate([("Paris",), (long,), (long, "short"), (long + "more",)])]
    warning = long_answer_warning(tokenizer, examples, 24)
    assert warning is not None and "2 of 4 examples" in warning and "--max-new-tokens" in warning
    assert long_answer_warning(tokenizer, examples[:1], 24) is None
