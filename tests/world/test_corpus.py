from collections import Counter

import pytest
from pydantic import ValidationError

from knowtune.world.corpus import INSTRUCTION_PREFIX, CorpusConfig, assign_exposures, render_corpus
from knowtune.world.embedded import load_embedded_world


@pytest.fixture(scope="module")
def world():
    return load_embedded_world()


def test_schedule_is_deterministic_and_seed_dependent(world):
    config = CorpusConfig(seed=3)
    assert assign_exposures(world, config) == assign_exposures(world, config)
    assert assign_exposures(world, config) != assign_exposures(world, CorpusConfig(seed=4))


def test_schedule_shares_and_ranges(world):
    config = CorpusConfig(never_seen_share=0.3, max_exposures=64, conflict_share=0.2)
    schedule = assign_exposures(world, config)
    assert len(schedule) == len(world.examples)
    never = sum(1 for item in schedule if item.exposures + item.distractor_exposures == 0)
    assert 0.25 < never / len(schedule) < 0.35
    shown = [item for item in schedule if item.exposures + item.distractor_exposures]
    assert all(1 <= item.exposures + item.distractor_exposures <= 64 for item in shown)
    contested = [item for item in shown if item.distractor_exposures]
    assert 0.1 < len(contested) / len(shown) < 0.3
    by_id = {ex.id: ex for ex in world.examples}
    assert all(item.distractor != by_id[item.id].answers[0] and item.exposures >= 1 for item in contested)
    # Skewed: many facts seen a few times, few seen very often.
    counts = Counter(min(item.exposures + item.distractor_exposures, 64) // 8 for item in shown)
    assert counts[0] > counts[7]


def test_corpus_renders_every_exposure_in_three_forms(world):
    config = CorpusConfig(seed=1)
    schedule = assign_exposures(world, config)
    documents = render_corpus(world, schedule, config)
    assert len(documents) == sum(item.exposures + item.distractor_exposures for item in schedule)
    assert any(doc.startswith("Q: ") and "\nA: " in doc for doc in documents)
    assert any(doc.startswith(INSTRUCTION_PREFIX) for doc in documents)
    assert any(not doc.startswith(("Q: ", INSTRUCTION_PREFIX)) for doc in documents)
    by_id = {ex.id: ex for ex in world.examples}
    text = "\n".join(documents)
    for item in schedule[:200]:
        ex = by_id[item.id]
        if item.exposures == 0 and item.distractor_exposures == 0:
            assert f"Q: {ex.question}\n" not in text and f"{INSTRUCTION_PREFIX} {ex.question}\n" not in text


def test_never_seen_facts_absent_as_statement_objects(world):
    config = CorpusConfig(seed=2, conflict_share=0.0)
    schedule = assign_exposures(world, config)
    documents = render_corpus(world, schedule, config)
    by_id = {ex.id: ex for ex in world.examples}
    never = [by_id[item.id] for item in schedule if item.exposures == 0][:50]
    text = "\n".join(documents)
    assert all(f"{ex.question}\n" not in text for ex in never)


@pytest.mark.parametrize("bad", [{"max_exposures": 0}, {"min_exposures": 5, "max_exposures": 2}, {"conflict_gold_share": (0.8, 0.2)}, {"statement_weight": 0, "qa_weight": 0, "instruction_weight": 0}, {"unknown_key": 1}])
def test_invalid_corpus_config(bad):
    with pytest.raises(ValidationError):
        CorpusConfig.model_validate(bad)
