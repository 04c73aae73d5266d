"""Relation templates: loading EntityQuestions' file and recovering subjects from questions."""

from __future__ import annotations

import json

import pytest

from knowtune.data import load_examples, load_relation_templates, subject_from_question
from knowtune.errors import DataError


def test_real_templates_recover_every_subject(entityquestions):
    templates = load_relation_templates(entityquestions / "relation_query_templates.json")
    assert templates["P36"] == "What is the capital of [X]?"
    examples = load_examples(entityquestions, split="test", relation="P40")
    subjects = [subject_from_question(ex.question, templates["P40"]) for ex in examples]
    assert None not in subjects
    assert all(ex.question == templates["P40"].replace("[X]", s) for ex, s in zip(examples, subjects))


@pytest.mark.parametrize(
    ("question", "template", "subject"),
    [
        ("Who is Ada Lovelace's child?", "Who is [X]'s child?", "Ada Lovelace"),
        ("What is the capital of St. Kitts (island)?", "What is the capital of [X]?", "St. Kitts (island)"),
        ("  Where was Bob born?\n", "Where was [X] born?", "Bob"),
        ("[X] is in a*b+c?", "[X] is in a*b+c?", "[X]"),  # metacharacters in the template are literal
        ("Where was Bob born", "Where was [X] born?", None),
        ("What is the capital of ?", "What is the capital of [X]?", None),  # the subject is never empty
        ("Who founded Acme?", "Where was [X] born?", None),
    ],
)
def test_subject_from_question(question, template, subject):
    assert subject_from_question(question, template) == subject


def test_template_without_slot_is_a_programming_error():
    with pytest.raises(ValueError, match=r"\[X\] exactly once"):
        subject_from_question("Q?", "no slot here")


@pytest.mark.parametrize(
    ("content", "line", "phrase"),
    [
        ('{\n  "P1": "Where is [X]?",\n  "P2": "Where?"\n}', 3, "the template of relation 'P2' must be a string holding [X] exactly once"),
        ('{\n  "P1": ["Where is [X]?"]\n}', 2, "the template of relation 'P1' must be a string"),
        ('{\n  "P1": "Where is [X]?",\n}', 3, "malformed JSON"),
        ('["Where is [X]?"]', 1, "expected a JSON object, got list"),
    ],
)
def test_bad_templates_file(write, content, line, phrase):
    path = write("templates.json", content)
    with pytest.raises(DataError) as caught:
        load_relation_templates(path)
    assert f"{path}:{line}: {phrase}" in caught.value.render()


def test_missing_templates_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_relation_templates(tmp_path / "relation_query_templates.json")


def test_templates_round_trip_through_json(write):
    templates = {"P1": "Where is [X]?", "P2": "Who founded [X]?"}
    assert load_relation_templates(write("t.json", json.dumps(templates))) == templates
