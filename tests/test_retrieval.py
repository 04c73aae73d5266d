"""knowtune.retrieval: the BM25 store, its passages and prompts, and `knowtune evaluate --retrieval`."""

from __future__ import annotations

import json

import pytest

from knowtune.data import QAExample, load_examples
from knowtune.errors import ConfigError, DataError, KnowtuneError
from knowtune.retrieval import PROMPT_FORMAT, RetrievalStore, fact_passage, relation_specs, retrieval_contexts
from knowtune.task import DEFAULT_TASK
from knowtune.testing import run_cli, tiny_world
from knowtune.world.embedded import load_embedded_world


@pytest.fixture(scope="module")
def facts():
    return sorted(load_embedded_world().split("train"), key=lambda e: e.id)[:400]


@pytest.fixture(scope="module")
def store(facts):
    return RetrievalStore.build(facts, relation_specs("embedded"), settings={"k": "v"}, source={"data": "embedded"})


def test_passages_are_statements_of_the_world_or_question_answer_lines():
    fact = QAExample(id="f", relation="P36", question="What is the capital of Burundi?", answers=("Bujumbura",), split="train", subject="Burundi")
    assert fact_passage(fact, relation_specs("embedded")) == "The capital of Burundi is Bujumbura."
    assert fact_passage(fact) == "Q: What is the capital of Burundi? A: Bujumbura"
    assert fact_passage(fact.model_copy(update={"subject": None}), relation_specs("embedded")).startswith("Q: ")
    assert relation_specs(None) is None


def test_each_question_retrieves_its_own_fact_first(store, facts):
    hits = store.search([ex.question for ex in facts], 2)
    assert all(len(found) == 2 for found in hits)
    own_first = sum(found[0].id == ex.id for found, ex in zip(hits, facts))
    assert own_first >= 0.97 * len(facts)
    assert store.search(["What is it?"], 2) == [[]]  # only stopwords: nothing matches
    assert store.search([facts[0].question], 10_000)[0][0].id == facts[0].id  # k above the store's size is capped


def test_the_relevance_gate_keeps_the_passages_about_the_question(store, facts, tmp_path):
    from knowtune.retrieval import evaluation_contexts

    asked = facts[:40]
    strangers = sorted(load_embedded_world().split("train"), key=lambda e: e.id)[400:600]  # facts the store does not hold
    index = {p.id: i for i, p in enumerate(store.passages)}
    assert all(store.relevance(ex.question, index[ex.id]) == pytest.approx(1.0) for ex in asked)
    gated = store.search([ex.question for ex in asked], 2, min_relevance=0.5)
    assert sum(found[:1] == [store.passages[index[ex.id]]] for found, ex in zip(gated, asked)) >= 0.95 * len(asked)
    ungated = store.search([ex.question for ex in strangers], 2)
    kept = store.search([ex.question for ex in strangers], 2, min_relevance=0.5)
    assert sum(map(len, kept)) < 0.2 * sum(map(len, ungated))  # questions about other subjects mostly get none
    for question, found in zip([ex.question for ex in strangers], kept):
        assert all(store.relevance(question, index[p.id]) >= 0.5 for p in found)
    assert store.search([ex.question for ex in strangers], 2, min_relevance=None) == ungated
    store.save(tmp_path / "s")
    contexts, record = evaluation_contexts(tmp_path / "s", strangers, 2, min_relevance=0.5)
    assert record["min_relevance"] == 0.5 and record["closed_book_questions"] == sum(not c for c in contexts) >= 0.8 * len(strangers)
    assert "min_relevance" not in evaluation_contexts(tmp_path / "s", strangers, 2)[1]


def test_store_survives_save_and_load_with_its_provenance(store, facts, tmp_path):
    store.save(tmp_path / "s")
    loaded = RetrievalStore.load(tmp_path / "s")
    questions = [ex.question for ex in facts[:50]]
    assert loaded.search(questions, 3) == store.search(questions, 3)
    record = json.loads((tmp_path / "s" / "store.json").read_text())
    assert record["format"] == "knowtune-retrieval-bm25" and record["passages"] == len(facts) and record["passage_kind"] == "statement"
    assert record["provenance"]["config"] == {"k": "v"} and record["provenance"]["source"] == {"data": "embedded"}
    assert [ex.id for ex in load_examples(tmp_path / "s" / "examples.jsonl")] == [ex.id for ex in facts]


def test_bad_stores_and_settings_are_clear_errors(store, facts, tmp_path):
    with pytest.raises(DataError, match="not a retrieval store: store.json is missing"):
        RetrievalStore.load(tmp_path)
    store.save(tmp_path / "s")
    (tmp_path / "s" / "store.json").write_text(json.dumps({**store.record, "version": 99}))
    with pytest.raises(DataError, match="version 99"):
        RetrievalStore.load(tmp_path / "s")
    store.save(tmp_path / "partial")
    (tmp_path / "partial" / "passages.jsonl").unlink()
    with pytest.raises(DataError, match="incomplete retrieval store: passages.jsonl missing"):
        RetrievalStore.load(tmp_path / "partial")
    with pytest.raises(ConfigError, match="k must be at least 1"):
        store.search(["x"], 0)
    with pytest.raises(KnowtuneError, match="at least one fact"):
        RetrievalStore.build([])
    chat = DEFAULT_TASK.model_copy(update={"tokens": DEFAULT_TASK.tokens.model_copy(update={"chat_template": True})})
    with pytest.raises(ConfigError, match="chat template"):
        retrieval_contexts(store, facts[:1], 2, chat)


def test_evaluate_puts_the_passages_before_the_usual_prompt(store, facts):
    from knowtune.evaluate import evaluate_examples, evaluation_prompts
    from knowtune.models import load
    from knowtune.recall import greedy_answers

    model, tokenizer = load("default", "cpu", "float32")
    chosen = facts[:24]
    contexts = retrieval_contexts(store, chosen, 2)
    assert contexts[0].splitlines()[0] == fact_passage(chosen[0], relation_specs("embedded"))
    with_passages = evaluate_examples(model, tokenizer, chosen, contexts=contexts)
    prompts = [c + p for c, p in zip(contexts, evaluation_prompts(tokenizer, chosen, DEFAULT_TASK))]
    assert [p.prediction for p in with_passages.predictions] == greedy_answers(model, tokenizer, prompts)
    closed = evaluate_examples(model, tokenizer, chosen)
    assert [p.prediction for p in closed.predictions] != [p.prediction for p in with_passages.predictions]


def test_evaluate_cli_records_the_store_and_prompt_format(capsys, tmp_path):
    world = tiny_world(20, 2)
    store = RetrievalStore.build(world.split("test"), world.relations)
    store.save(tmp_path / "store")
    world.save(tmp_path / "world")
    code, _, err = run_cli(capsys, "evaluate", "--data", tmp_path / "world", "--split", "test", "--retrieval", tmp_path / "store",
                           "--retrieval-k", "1", "--out", tmp_path / "eval", "--limit", "4")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["retrieval"]["store"] == str(tmp_path / "store") and metrics["retrieval"]["k"] == 1
    assert metrics["retrieval"]["prompt_format"] == PROMPT_FORMAT and metrics["retrieval"]["passages"] == len(store.passages)
    assert metrics["provenance"]["config"]["retrieval_k"] == 1
    code, _, err = run_cli(capsys, "evaluate", "--data", tmp_path / "world", "--retrieval", tmp_path / "nowhere")
    assert code == 2 and "not a retrieval store" in " ".join(err.split())
    code, _, err = run_cli(capsys, "evaluate", "--data", tmp_path / "world", "--split", "test", "--retrieval", tmp_path / "store",
                           "--retrieval-min-relevance", "0.5", "--out", tmp_path / "gated", "--limit", "4")
    assert code == 0, err
    gated = json.loads((tmp_path / "gated" / "metrics.json").read_text())["retrieval"]
    assert gated["min_relevance"] == 0.5 and gated["closed_book_questions"] == 0  # the store holds these very questions
    code, _, err = run_cli(capsys, "evaluate", "--data", tmp_path / "world", "--retrieval-min-relevance", "0.5", "--out", tmp_path / "none")
    assert code == 2 and "--retrieval STORE" in " ".join(err.split()) and not (tmp_path / "none").exists()


def _open_book_corpus(fraction: float, documents: int = 2):
    from knowtune.world.corpus import CorpusConfig, assign_exposures, render_corpus

    world = tiny_world(60, 2)
    config = CorpusConfig(open_book_fraction=fraction, open_book_documents=documents)
    schedule = assign_exposures(world, config)
    return world, config, schedule, render_corpus(world, schedule, config)


def test_open_book_is_off_by_default_and_adds_documents_without_changing_the_rest():
    from collections import Counter

    from knowtune.world.corpus import CorpusConfig

    assert not any(key.startswith("open_book") for key in CorpusConfig().model_dump())  # saved configs stay as they were
    assert CorpusConfig(open_book_fraction=0.5).model_dump()["open_book_fraction"] == 0.5
    _, _, plain_schedule, plain = _open_book_corpus(0.0)
    assert all("open_book" not in item.to_record() for item in plain_schedule)
    world, config, schedule, corpus = _open_book_corpus(0.5)
    assert [(i.id, i.exposures, i.distractor, i.distractor_exposures) for i in schedule] == \
           [(i.id, i.exposures, i.distractor, i.distractor_exposures) for i in plain_schedule]
    chosen = [item for item in schedule if item.open_book]
    assert 0.35 * len(schedule) < len(chosen) < 0.65 * len(schedule)
    assert any(item.exposures == 0 for item in chosen) and any(item.exposures > 0 for item in chosen)  # seen and unseen closed-book
    added = Counter(corpus) - Counter(plain)
    assert Counter(corpus) - added == Counter(plain) and sum(added.values()) == 2 * len(chosen)


def test_open_book_documents_are_passages_then_the_question_and_facts_without_them_stay_unseen():
    world, config, schedule, corpus = _open_book_corpus(0.5)
    relations = world.relations
    by_id = {ex.id: ex for ex in world.examples}
    chosen = {item.id for item in schedule if item.open_book}
    passages = {fact_passage(by_id[i], relations) for i in chosen}
    documents = [d for d in corpus if d.count("\n") == 3]
    assert len(documents) == 2 * len(chosen)
    forms = set()
    for document in documents:
        first, second, question, answer = document.split("\n")
        assert {first, second} <= passages
        fact = next(by_id[i] for i in chosen if fact_passage(by_id[i], relations) in (first, second) and by_id[i].question in question)
        assert answer in (fact.answers[0], f"A: {fact.answers[0]}")
        forms.add(question.split(" ")[0])
    assert forms == {"Q:", "Answer"}  # both the Q:/A: form and the instruction form
    held_out = [by_id[item.id] for item in schedule if not item.open_book and item.exposures == 0]
    text = "\n".join(corpus)
    assert held_out and not any(ex.question in text or fact_passage(ex, relations) in text for ex in held_out)
