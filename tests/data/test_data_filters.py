"""The paper's filters: multi-answer removal and train/test entity overlap."""

from __future__ import annotations

import pytest

from knowtune.data import FilterReport, QAExample, apply_filters, drop_multi_answer, drop_test_overlap, load_examples, load_relation_templates
from knowtune.errors import KnowtuneError
from knowtune.matching import normalize_answer

TEMPLATES = {"P19": "Where was [X] born?", "P26": "Who is [X] married to?"}


def qa(id: str, split: str, question: str, *answers: str, relation: str = "P19", **fields) -> QAExample:
    return QAExample(id=id, relation=relation, question=question, answers=answers, split=split, **fields)


def test_drop_multi_answer_is_pure():
    examples = [qa("a", "train", "Q?", "x"), qa("b", "dev", "Q?", "x", "y"), qa("c", "test", "Q?", "z")]
    kept = drop_multi_answer(examples)
    assert [ex.id for ex in kept] == ["a", "c"]
    assert len(examples) == 3 and kept is not examples


def test_subject_overlap_is_normalised_and_only_drops_train():
    examples = [
        qa("test1", "test", "Where was The Beatles born?", "Liverpool"),
        qa("same", "train", "Where was the  beatles! born?", "Liverpool"),  # same subject after normalisation
        qa("other", "train", "Where was Yoko Ono born?", "Tokyo"),
        qa("dev", "dev", "Where was Beatles born?", "Liverpool"),  # dev is never filtered
        qa("test2", "test", "Where was Yoko Ono born?", "Tokyo", relation="P26", subject="someone else"),
    ]
    kept = drop_test_overlap(examples, TEMPLATES)
    assert [ex.id for ex in kept] == ["test1", "other", "dev", "test2"]
    assert len(examples) == 5  # the input is untouched


def test_explicit_subject_and_object_fields_win():
    examples = [
        qa("test", "test", "Q1?", "Paris", subject="Jean Valjean"),
        qa("by_subject", "train", "Q2?", "Lyon", subject="JEAN VALJEAN"),
        qa("by_object", "train", "Q3?", "Nice", subject="Cosette", object="paris"),
        qa("by_answer", "train", "Q4?", "Paris.", subject="Marius"),
        qa("subject_is_test_object", "train", "Q5?", "Lille", subject="Paris"),
        qa("clean", "train", "Q6?", "Lille", subject="Javert"),
    ]
    assert [ex.id for ex in drop_test_overlap(examples)] == ["test", "by_object", "by_answer", "subject_is_test_object", "clean"]
    assert [ex.id for ex in drop_test_overlap(examples, match="entity")] == ["test", "clean"]


def test_missing_subject_is_an_error_not_a_silent_keep():
    examples = [qa("t", "test", "Where was Bob born?", "X"), qa("u", "train", "Who owns Acme?", "Y", relation="P127")]
    with pytest.raises(KnowtuneError, match=r"subject of example 'u' \(relation 'P127'\)") as caught:
        drop_test_overlap(examples, TEMPLATES)
    assert "--templates" in caught.value.render()
    with pytest.raises(KnowtuneError, match="does not fit the template"):
        drop_test_overlap([qa("t", "test", "Who founded Acme?", "X")], TEMPLATES)


def test_real_slice_matches_an_independent_count(entityquestions):
    templates = load_relation_templates(entityquestions / "relation_query_templates.json")
    examples = drop_multi_answer(load_examples(entityquestions, relation="P36"))
    prefix, suffix = templates["P36"].split("[X]")

    def subject(ex: QAExample) -> str:
        return normalize_answer(ex.question[len(prefix) : -len(suffix)])

    test_subjects = {subject(ex) for ex in examples if ex.split == "test"}
    expected = [ex.id for ex in examples if ex.split != "train" or subject(ex) not in test_subjects]
    kept = drop_test_overlap(examples, templates)
    assert [ex.id for ex in kept] == expected
    assert 0 < len(examples) - len(kept) < sum(ex.split == "train" for ex in examples)


def test_apply_filters_reports_each_step():
    examples = [
        qa("t", "test", "Where was Bob born?", "X"),
        qa("t2", "test", "Where was Al born?", "X", "Y"),
        qa("a", "train", "Where was Bob born?", "Z"),
        qa("b", "train", "Where was Cy born?", "Z", "W"),
        qa("c", "train", "Where was Al born?", "Z"),
    ]
    kept, report = apply_filters(examples, multi_answer=True, test_overlap=True, templates=TEMPLATES)
    assert [ex.id for ex in kept] == ["t", "c"]  # t2 left before the overlap check, so Al is no test subject
    assert isinstance(report, FilterReport)
    assert report.removed == {"drop_multi_answer": 2, "drop_test_overlap": 1}
    multi, overlap = report.steps
    assert multi.removed_by_split == {"train": 1, "dev": 0, "test": 1} and multi.remaining == 3
    assert overlap.removed_by_split == {"train": 1, "dev": 0, "test": 0} and overlap.remaining == 2
    assert apply_filters(examples) == (examples, FilterReport())
