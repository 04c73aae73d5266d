"""The study's ``retrieval_route:`` section (issue 12): its config, measures, finding and report on hand-made
records and a real BM25 store, then end to end on the default model (the ``route_study`` fixture of conftest.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError
from study_metrics import record

from knowtune.data import load_examples
from knowtune.report.html import retrieval_section
from knowtune.retrieval import RetrievalStore, relation_specs
from knowtune.study.config import StudyConfig
from knowtune.study.findings import retrieval_beats_sft_on_unknown
from knowtune.study.retrieval_route import LABELS, PASSAGES_RUN, PASSAGES_STORE, RETRIEVAL_ROUTES, RetrievalRouteConfig, passage_recall, sft_row
from knowtune.world.embedded import load_embedded_world


def row(route: str, unknown: float, forgetting: float = 20.0, epoch: int | None = None) -> dict:
    return {"route": route, "label": LABELS[route], "epoch": epoch, "retrieval": route in RETRIEVAL_ROUTES,
            "unknown": unknown, "unknown_closed_book": 0.0, "held_out": 100.0 - forgetting, "forgetting": forgetting,
            "test": 25.0, "answer_rate": 100.0}


def comparison(route_unknown: float) -> dict:
    return {"k": 2, "passages": 120, "unknown_facts": 120, "test_questions": 300, "held_out": "HighlyKnown", "passage_recall": 97.5,
            "rows": [row("sft", 100.0, 46.0, 12), row("sft_es", 8.0, 21.0, 2), row("known_retrieval", route_unknown, 15.0),
                     row("retrieval", route_unknown, 0.0)]}


def test_the_section_needs_the_sft_and_filtered_runs_of_the_comparison():
    for section in ({}, {"compare_methods": {"methods": ["sft", "idk"]}, "curate": {"variants": ["ratio", "idk"]}}):
        with pytest.raises(ValidationError, match="retrieval_route .*sft .*filtered"):
            StudyConfig.model_validate({**section, "retrieval_route": {}})
    with pytest.raises(ValidationError, match="k"):
        StudyConfig.model_validate({"compare_methods": {}, "curate": {"variants": ["ratio", "known", "idk"]}, "retrieval_route": {"k": 0}})
    config = StudyConfig.model_validate({"compare_methods": {}, "curate": {"variants": ["ratio", "known", "idk"]}, "retrieval_route": {}})
    assert (config.retrieval_route.k, config.retrieval_route.base_shots) == (2, None)
    assert (config.retrieval_route.finetune_with_passages, config.retrieval_route.oracle_share) == (False, None)
    assert config.retrieval_route.model_dump() == {"k": 2, "base_shots": None}  # studies saved before the keys keep their hashes
    with pytest.raises(ValidationError, match="min_relevance"):
        RetrievalRouteConfig.model_validate({"min_relevance": 0})
    assert RetrievalRouteConfig.model_validate({"min_relevance": 0.5}).model_dump()["min_relevance"] == 0.5
    with pytest.raises(ValidationError, match="oracle_share .*finetune_with_passages: true"):
        RetrievalRouteConfig.model_validate({"oracle_share": 0.5})
    with pytest.raises(ValidationError, match="oracle_share"):
        RetrievalRouteConfig.model_validate({"finetune_with_passages": True, "oracle_share": 1.5})


def test_sft_rows_read_the_runs_own_evaluation():
    rec = record(3, test=0.25, known=(10, 10), unknown=(6, 10), per_category={"HighlyKnown": 0.8})
    measured = sft_row(rec, "sft")
    assert (measured["unknown"], measured["unknown_closed_book"], measured["epoch"]) == (60.0, 60.0, 3)
    assert measured["held_out"] == pytest.approx(80.0) and measured["forgetting"] == pytest.approx(20.0)
    assert (measured["test"], measured["answer_rate"], measured["retrieval"]) == (25.0, 100.0, False)


def test_passage_recall_counts_facts_whose_own_passage_is_retrieved():
    facts = sorted(load_embedded_world().split("train"), key=lambda e: e.id)[:60]
    store = RetrievalStore.build(facts, relation_specs("embedded"))
    assert passage_recall(store, facts, 2) >= 95.0
    others = RetrievalStore.build(sorted(load_embedded_world().split("train"), key=lambda e: e.id)[100:160], relation_specs("embedded"))
    assert passage_recall(others, facts, 2) == 0.0  # a store without the facts never returns their passages
    assert passage_recall(store, [], 2) is None
    assert passage_recall(others, facts, 2, min_relevance=0.5) == 0.0 and passage_recall(store, facts, 2, min_relevance=0.5) >= 95.0


def test_the_finding_compares_the_route_with_sft_at_early_stop():
    holds = retrieval_beats_sft_on_unknown(comparison(60.0))
    assert holds["holds"] is True and holds["value"] == pytest.approx(52.0)
    assert "8.0% at EARLY_STOP (epoch 2)" in holds["detail"] and "100.0% at CONVERGENCE" in holds["detail"]
    fails = retrieval_beats_sft_on_unknown(comparison(0.8))
    assert fails["holds"] is False and fails["value"] == pytest.approx(-7.2)
    assert "97.5%" in fails["detail"] and "held-out forgetting" in fails["detail"] and "with passages" not in fails["detail"]
    with_passages = comparison(0.8)
    with_passages["rows"].insert(3, row("known_passages", 40.0, 18.0))
    assert "SFT on Known with passages + retrieval 40.0%" in retrieval_beats_sft_on_unknown(with_passages)["detail"]
    assert retrieval_beats_sft_on_unknown(with_passages)["value"] == pytest.approx(-7.2)  # the finding still compares known_retrieval
    assert retrieval_beats_sft_on_unknown({"rows": []})["holds"] is None
    gated = {**comparison(60.0), "min_relevance": 0.5, "test_closed_book_questions": 280}
    assert "passages below relevance 0.5 left out, which asks 280 of the 300 test questions closed book" in retrieval_beats_sft_on_unknown(gated)["detail"]


def test_the_report_has_a_row_per_route():
    page = retrieval_section(comparison(0.8))
    assert page.count("<tr>") == 5 and "SFT on Known + retrieval" in page and "top 2 passages" in page and "97.5%" in page


def test_the_study_routes_the_mixtures_unknown_facts_and_measures_every_route(route_study):
    out, stdout = route_study
    assert "retrieval ran" in " ".join(stdout.split())
    result = json.loads((out / "retrieval" / "comparison.json").read_text())
    routed = load_examples(out / result["store"] / "examples.jsonl")
    mixture = load_examples(out / "variants" / "D_50" / "train.jsonl")
    assert sorted(e.id for e in routed) == sorted(e.id for e in mixture if e.metadata["category"] == "Unknown")
    passages = (out / result["store"] / "passages.jsonl").read_text()
    assert " is " in passages or " was " in passages  # the world's statement templates, not Q/A lines
    assert result["unknown_facts"] == len(routed) and result["passage_recall"] >= 90.0
    rows = {r["route"]: r for r in result["rows"]}
    assert list(rows) == ["sft", "sft_es", "known_retrieval", "known_passages", "retrieval"]
    trained = load_examples(out / PASSAGES_STORE / "examples.jsonl")  # finetune_with_passages: a store of all of D_50's facts
    assert sorted(e.id for e in trained) == sorted(e.id for e in mixture)
    run = json.loads((out / PASSAGES_RUN / "run.json").read_text())
    assert run["retrieval"]["store"] == str(out / PASSAGES_STORE) and run["retrieval"]["k"] == 2
    known = [e for e in mixture if e.metadata["category"] != "Unknown"]
    assert 0 < run["retrieval"]["oracle_questions"] < len(known)  # oracle_share 0.5 of D_Known_50's facts
    assert yaml.safe_load((out / PASSAGES_RUN / "config.yaml").read_text())["retrieval_oracle_share"] == 0.5
    sft = [json.loads(line) for line in (out / "runs" / "D_50" / "metrics.jsonl").read_text().splitlines()][-1]
    assert rows["sft"]["unknown"] == pytest.approx(100 * sft["train/exact_match/Unknown"])
    for route in ("known_retrieval", "known_passages", "retrieval"):
        assert all(0.0 <= rows[route][k] <= 100.0 for k in ("unknown", "unknown_closed_book", "held_out", "test", "answer_rate"))
        assert rows[route]["examples"] and all(1 <= e["passages"].count("\n") <= 2 for e in rows[route]["examples"])
    assert rows["retrieval"]["unknown_closed_book"] < 10.0  # SliCK's Unknown: the base model did not answer them few-shot in the audit
    analysis = json.loads((out / "analysis.json").read_text())
    found = {f["name"]: f for f in analysis["findings"]}
    assert found["retrieval_beats_sft_on_unknown"]["holds"] in (True, False)
    assert analysis["retrieval"]["rows"][0]["route"] == "sft"
    page = (out / "report" / "index.html").read_text()
    assert "Retrieval instead of fine-tuning" in page and "retrieval alone (base model)" in page
