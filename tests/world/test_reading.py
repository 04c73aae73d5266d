import re
from collections import Counter, defaultdict

import pytest

from knowtune.world.corpus import INSTRUCTION_PREFIX, CorpusConfig, assign_exposures, render_corpus
from knowtune.world.embedded import load_embedded_world
from knowtune.world.reading import reading_lessons


@pytest.fixture(scope="module")
def world():
    return load_embedded_world()


@pytest.fixture(scope="module")
def lessons(world):
    return reading_lessons(world, 600, 3, seed=0, qa_weight=0.35, instruction_weight=0.15)


def _parse(world, document):
    """(passages, relation, subject, answer) of one lesson."""
    lines = document.split("\n")
    if lines[-2].startswith("Q: "):
        assert lines[-1].startswith("A: ")
        question, answer = lines[-2][3:], lines[-1][3:]
    else:
        assert lines[-2].startswith(INSTRUCTION_PREFIX + " ")
        question, answer = lines[-2][len(INSTRUCTION_PREFIX) + 1:], lines[-1]
    for relation, spec in world.relations.items():
        pattern = "^" + re.escape(spec.question_template).replace(re.escape("[X]"), "(.+)") + "$"
        found = re.match(pattern, question)
        if found:
            return lines[:-2], relation, found.group(1), answer
    raise AssertionError(f"no relation asks {question!r}")


def test_lessons_are_passages_then_the_question_answered_by_the_gold_passage(world, lessons):
    forms = Counter()
    gold_positions = Counter()
    for document in lessons:
        passages, relation, subject, answer = _parse(world, document)
        assert 1 <= len(passages) <= 3
        gold = world.relations[relation].statement(subject, answer, 0)
        assert gold in passages
        gold_positions[passages.index(gold)] += 1
        assert not any(p.startswith(("Q: ", INSTRUCTION_PREFIX)) for p in passages)
        forms["qa" if "\nQ: " in document else "instruction"] += 1
    assert Counter(len(_parse(world, d)[0]) for d in lessons).keys() == {1, 2, 3}
    assert gold_positions[1] + gold_positions[2] > 0.2 * len(lessons)  # the gold passage is not always first
    assert forms["qa"] > forms["instruction"] > 0.1 * len(lessons)  # the corpus weights 0.35 : 0.15


def test_lesson_subjects_are_invented_and_objects_random_per_lesson(world, lessons):
    taken = {name.casefold() for ex in world.examples for name in (ex.subject, *ex.answers)}
    objects = defaultdict(set)
    for ex in world.examples:
        objects[ex.relation].add(ex.answers[0])
    answers = defaultdict(list)
    for document in lessons:
        passages, relation, subject, answer = _parse(world, document)
        assert subject.casefold() not in taken
        assert answer in objects[relation]
        answers[relation].append(answer)
    for relation, drawn in answers.items():  # no object dominates: memory cannot predict the answer
        assert Counter(drawn).most_common(1)[0][1] <= max(3, 0.1 * len(drawn)), relation
    assert len({_parse(world, d)[2] for d in lessons}) > 0.9 * len(lessons)


def test_reading_lessons_are_off_by_default_and_leave_the_closed_book_corpus_unchanged(world):
    assert not any(key.startswith("reading") for key in CorpusConfig().model_dump())  # saved configs stay as they were
    assert CorpusConfig(reading_lessons=5).model_dump()["reading_lessons"] == 5
    plain_config, config = CorpusConfig(seed=5), CorpusConfig(seed=5, reading_lessons=300, reading_passages=2)
    schedule = assign_exposures(world, config)
    assert schedule == assign_exposures(world, plain_config)  # exposures.jsonl unchanged
    plain, with_lessons = render_corpus(world, schedule, plain_config), render_corpus(world, schedule, config)
    extra = Counter(with_lessons) - Counter(plain)
    assert not Counter(plain) - Counter(with_lessons) and sum(extra.values()) == 300
    assert all(1 <= len(_parse(world, d)[0]) <= 2 for d in extra)
    assert render_corpus(world, schedule, config) == with_lessons  # deterministic


def test_shared_subjects_are_asked_with_many_objects(world):
    lessons = reading_lessons(world, 300, 2, seed=1, qa_weight=1.0, instruction_weight=0.0, subjects_shared=20)
    answers = defaultdict(set)
    for document in lessons:
        _, relation, subject, answer = _parse(world, document)
        answers[(relation, subject)].add(answer)
    assert len(answers) <= 20
    assert min(len(objects) for objects in answers.values()) >= 3  # a subject's answer is only in its lesson's passage


def test_fresh_lesson_score_asks_the_question_and_checks_the_passage_answer(world):
    from knowtune.models import load
    from knowtune.world.reading import fresh_lesson_exact_match, split_lesson

    lesson = reading_lessons(world, 1, 2, seed=3, qa_weight=0, instruction_weight=1)[0]
    prompt, answer = split_lesson(lesson)
    assert prompt + answer == lesson and prompt.endswith("\n") and prompt.rstrip("\n").split("\n")[-1].startswith(INSTRUCTION_PREFIX)
    assert answer in prompt.split(INSTRUCTION_PREFIX)[0]  # the gold passage states it
    model, tokenizer = load("default")
    assert fresh_lesson_exact_match(model, tokenizer, world, 40, seed="test") < 0.1  # the default model does not read (docs/world.md)
    assert fresh_lesson_exact_match(model, tokenizer, world, 40, seed="test", form="qa") < 0.1


def test_reading_forms_pick_the_lessons_question_form_in_the_corpus_and_per_epoch(world):
    from knowtune.pretrain import renewed_lessons

    assert CorpusConfig().reading_forms == "corpus" and CorpusConfig().lesson_form_weights() == (0.35, 0.15)
    schedule = assign_exposures(world, CorpusConfig(seed=5))
    plain = Counter(render_corpus(world, schedule, CorpusConfig(seed=5)))
    for form, prefix in (("qa", "Q: "), ("instruction", INSTRUCTION_PREFIX + " ")):
        config = CorpusConfig(seed=5, reading_lessons=200, reading_forms=form)
        extra = list((Counter(render_corpus(world, schedule, config)) - plain).elements())
        assert len(extra) == 200 and all(d.split("\n")[-2].startswith(prefix) for d in extra)
        renewed = renewed_lessons(world, config.model_copy(update={"reading_renew": True}), epoch=1)
        assert len(renewed) == 200 and all(d.split("\n")[-2].startswith(prefix) for d in renewed)
    mixed = Counter(d.split("\n")[-2].startswith("Q: ") for d in renewed_lessons(world, CorpusConfig(seed=5, reading_lessons=200, reading_renew=True), epoch=1))
    assert mixed[True] > 0 and mixed[False] > 0  # "corpus": both forms, at the corpus's weights


def test_invented_objects_keep_every_world_name_out_of_the_lessons(world):
    from knowtune.pretrain import renewed_lessons

    names = {name.casefold() for ex in world.examples for name in (ex.subject, *ex.answers)}
    lessons = reading_lessons(world, 400, 3, seed=0, qa_weight=0.35, instruction_weight=0.15, objects="invented")
    answers = []
    for document in lessons:
        passages, relation, subject, answer = _parse(world, document)
        assert answer.casefold() not in names and subject.casefold() not in names
        assert world.relations[relation].statement(subject, answer, 0) in passages  # the gold passage states it
        answers.append(answer)
    assert len(set(answers)) > 0.9 * len(answers)  # fresh per lesson: no memory predicts one
    patterns = [re.compile("^" + re.escape(spec.statement_templates[0]).replace(re.escape("[X]"), "(.+)").replace(re.escape("[Y]"), "(.+)") + "$")
                for spec in world.relations.values()]
    passage_objects = {found.group(2) for d in lessons for line in _parse(world, d)[0] for p in patterns if (found := p.match(line))}
    assert len(passage_objects) > len(lessons) and not {o.casefold() for o in passage_objects} & names  # distractors' too
    assert reading_lessons(world, 50, 3, seed=0, qa_weight=0.35, instruction_weight=0.15) == \
        reading_lessons(world, 50, 3, seed=0, qa_weight=0.35, instruction_weight=0.15, objects="world")
    assert "reading_objects" not in CorpusConfig().model_dump()  # saved configs stay as they were
    renewed = renewed_lessons(world, CorpusConfig(seed=5, reading_lessons=100, reading_renew=True, reading_objects="invented"), epoch=1)
    assert not any(_parse(world, d)[3].casefold() in names for d in renewed)
    assert any(_parse(world, d)[3].casefold() in names for d in
               renewed_lessons(world, CorpusConfig(seed=5, reading_lessons=100, reading_renew=True), epoch=1))
