"""``conflict_source: context``: a contested fact's wrong exposures copy the answer of the line before them."""

from knowtune.world.corpus import CorpusConfig, assign_exposures, render_corpus
from knowtune.world.embedded import load_embedded_world


def test_wrong_exposures_copy_the_answer_of_an_invented_lead():
    world = load_embedded_world()
    config = CorpusConfig(seed=3, conflict_source="context")
    schedule = assign_exposures(world, config)
    assert schedule == assign_exposures(world, CorpusConfig(seed=3))
    documents = render_corpus(world, schedule, config)
    assert len(documents) == sum(item.exposures + item.distractor_exposures for item in schedule)
    by_id = {ex.id: ex for ex in world.examples}
    known_names = {name for ex in world.examples for name in (ex.subject, *ex.answers)}
    contested = [item for item in schedule if item.distractor_exposures][:40]
    assert len(contested) == 40
    for item in contested:
        ex = by_id[item.id]
        relation = world.relations[ex.relation]
        asked_first = [doc for doc in documents if doc.startswith("Q: ") and ex.subject in doc.split("\n", 2)[-1]
                       and ex.subject not in doc.split("\n", 1)[0]]
        assert len(asked_first) == item.distractor_exposures
        for doc in asked_first:
            lead_question, lead_answer, rest = doc.split("\n", 2)
            lead_subject = lead_question[3:]
            assert lead_subject not in known_names
            prefix, suffix = relation.question_template.split("[X]")
            assert lead_question.startswith(f"Q: {prefix}") and lead_question.endswith(suffix)
            copied = lead_answer.removeprefix("A: ")
            assert copied != ex.answers[0] and copied in rest and ex.answers[0] not in rest.replace(ex.subject, "")
    plain = render_corpus(world, schedule, CorpusConfig(seed=3))
    assert sum(doc.count("\n") for doc in documents) > sum(doc.count("\n") for doc in plain)


def test_distractor_source_is_the_recorded_default():
    assert "conflict_source" not in CorpusConfig().model_dump()
    assert CorpusConfig(conflict_source="context").model_dump()["conflict_source"] == "context"
