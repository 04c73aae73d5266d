import pytest

from knowtune.exposure import validate_against_exposure


def _records(pairs):
    return [{"id": f"f{i}", "category": c, "p0": p0} for i, (c, p0, _) in enumerate(pairs)]


def _exposures(pairs):
    return {f"f{i}": {"exposures": e} for i, (_, _, e) in enumerate(pairs)}


def test_perfectly_ordered_audit():
    pairs = [("Unknown", 0.0, 0), ("Unknown", 0.0, 1), ("WeaklyKnown", 0.0, 3), ("MaybeKnown", 0.4, 8), ("MaybeKnown", 0.7, 12), ("HighlyKnown", 1.0, 40), ("HighlyKnown", 1.0, 64)]
    result = validate_against_exposure(_records(pairs), _exposures(pairs))
    assert result["spearman_exposure_p0"] > 0.9 and result["spearman_exposure_category"] > 0.9
    assert result["category_medians_ordered"]
    assert result["per_category"]["HighlyKnown"]["median_exposures"] == 52
    assert result["by_bucket"][0] == {"bucket": "0", "facts": 1, "shares": {"HighlyKnown": 0.0, "MaybeKnown": 0.0, "WeaklyKnown": 0.0, "Unknown": 1.0}}


def test_inverted_audit_is_detected():
    pairs = [("HighlyKnown", 1.0, 0), ("HighlyKnown", 1.0, 1), ("MaybeKnown", 0.5, 5), ("Unknown", 0.0, 30), ("Unknown", 0.0, 60)]
    result = validate_against_exposure(_records(pairs), _exposures(pairs))
    assert result["spearman_exposure_p0"] < -0.8 and not result["category_medians_ordered"]


def test_facts_without_ground_truth_are_ignored_and_too_few_is_an_error():
    pairs = [("Unknown", 0.0, 0), ("HighlyKnown", 1.0, 9), ("MaybeKnown", 0.5, 4)]
    records = _records(pairs) + [{"id": "other", "category": "HighlyKnown", "p0": 1.0}]
    assert validate_against_exposure(records, _exposures(pairs))["facts"] == 3
    with pytest.raises(ValueError, match="fewer than 3"):
        validate_against_exposure(records[:2], _exposures(pairs))


def test_constant_input_gives_undefined_rho():
    pairs = [("Unknown", 0.0, 0), ("Unknown", 0.0, 3), ("Unknown", 0.0, 9)]
    result = validate_against_exposure(_records(pairs), _exposures(pairs))
    assert result["spearman_exposure_p0"] is None and result["spearman_exposure_category"] is None


def test_facts_answered_by_the_question_are_counted_apart():
    from knowtune.exposure import answer_in_question

    assert answer_in_question({"question": "What is the capital of Beirut Vilayet?", "answers": ["Beirut"]})
    assert answer_in_question({"question": "What is the capital of Gmina Kije?", "answers": ["Kije, Świętokrzyskie Voivodeship"]})
    assert not answer_in_question({"question": "Where was Ada born?", "answers": ["London"]})
    assert not answer_in_question({"question": "Who founded New York Times?", "answers": ["New"]})  # too short a word to tell
    assert not answer_in_question({"id": "f0"})
    pairs = [("Unknown", 0.0, 0), ("HighlyKnown", 1.0, 0), ("WeaklyKnown", 0.0, 3), ("MaybeKnown", 0.5, 8), ("HighlyKnown", 1.0, 40)]
    records = _records(pairs)
    for record in records:
        record.update(question=f"Where is {record['id']} ?", answers=["Nowhere"])
    records[1].update(question="What is the capital of Beirut Vilayet?", answers=["Beirut"])
    result = validate_against_exposure(records, _exposures(pairs))
    assert result["inferable_facts"] == 1
    assert result["never_seen_not_unknown"] == {"inferable": {"facts": 1, "not_unknown": 1}, "not_inferable": {"facts": 1, "not_unknown": 0}}
    assert result["spearman_exposure_category_not_inferable"] == pytest.approx(1.0)
    assert result["spearman_exposure_category"] < 0.9
