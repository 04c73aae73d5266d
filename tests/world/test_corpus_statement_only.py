"""``statement_only_share``: facts stated only as statements, never asked as a question."""

import pytest

from knowtune.world.corpus import INSTRUCTION_PREFIX, CorpusConfig, assign_exposures, render_corpus
from knowtune.world.embedded import load_embedded_world


@pytest.fixture(scope="module")
def world():
    return load_embedded_world()


def test_statement_only_facts_are_never_asked(world):
    config = CorpusConfig(seed=5, statement_only_share=0.5)
    schedule = assign_exposures(world, config)
    baseline = assign_exposures(world, CorpusConfig(seed=5))
    assert [(i.id, i.exposures, i.distractor_exposures) for i in schedule] == [(i.id, i.exposures, i.distractor_exposures) for i in baseline]
    shown = [item for item in schedule if item.exposures]
    chosen = [item for item in shown if item.statement_only]
    assert 0.4 < len(chosen) / len(shown) < 0.6
    assert not any(item.statement_only for item in schedule if not item.exposures)
    documents = render_corpus(world, schedule, config)
    assert len(documents) == sum(item.exposures + item.distractor_exposures for item in schedule)
    text = "\n".join(documents)
    by_id = {ex.id: ex for ex in world.examples}
    asked = [by_id[item.id] for item in shown if not item.statement_only]
    assert any(f"Q: {ex.question}\n" in text for ex in asked[:100])
    for item in chosen[:50]:
        ex = by_id[item.id]
        assert f"Q: {ex.question}\n" not in text and f"{INSTRUCTION_PREFIX} {ex.question}\n" not in text
        assert sum(ex.subject in doc for doc in documents) >= item.exposures
    assert all(item.to_record()["statement_only"] for item in chosen)


def test_statement_only_off_leaves_records_and_config_as_before(world):
    config = CorpusConfig()
    assert "statement_only_share" not in config.model_dump()
    assert "statement_only" not in assign_exposures(world, config)[0].to_record()
    assert CorpusConfig(statement_only_share=0.25).model_dump()["statement_only_share"] == 0.25
