"""Answer-time verification (``knowtune evaluate --abstain agreement``): the rule and the curve on
hand-made cases, then the default model through the audit backend and the CLI."""

from __future__ import annotations

import json

import pytest

from knowtune.abstain import AbstainSettings, CurvePoint, agreement_abstention, agreement_counts, curve, curve_area
from knowtune.testing import run_cli


def test_agreement_counts_samples_equal_to_the_greedy_answer_after_normalisation():
    greedy = ["The Paris.", "Oslo", ""]
    samples = [["paris", "Paris!", "Lyon"], ["Bergen", "oslo ", "OSLO"], ["", "the", "Rome"]]
    assert agreement_counts(greedy, samples) == [2, 2, 2]  # "" and "the" both normalise to ""


def test_curve_and_its_area_on_a_hand_made_case():
    correct = [True, True, False, False]
    answered = [True, True, True, False]  # the last one said "I don't know"
    agreement = [3, 1, 0, 3]
    points = curve(correct, answered, agreement, samples=3)
    assert [(p.threshold, p.answered, p.correct_answered) for p in points] == [(0, 3, 2), (1, 2, 2), (2, 1, 1), (3, 1, 1)]
    assert [p.answer_rate for p in points] == [0.75, 0.5, 0.25, 0.25]
    assert points[0].accuracy_answered == pytest.approx(2 / 3) and points[1].accuracy_answered == 1.0
    # points (0.25, 1), (0.5, 1), (0.75, 2/3): 0.25 * 1 below, 0.25 * 1, 0.25 * (1 + 2/3) / 2, then 0.25 * 2/3 beyond
    assert curve_area(points) == pytest.approx(0.25 + 0.25 + 0.25 * (5 / 6) + 0.25 * (2 / 3))
    assert curve_area([CurvePoint(0, 4, 0, 0)]) is None
    uninformative = [CurvePoint(0, 10, 10, 4), CurvePoint(1, 10, 5, 2)]  # accuracy 0.4 at every coverage
    assert curve_area(uninformative) == pytest.approx(0.4)


def test_threshold_above_samples_is_refused():
    with pytest.raises(ValueError, match="at most --samples"):
        AbstainSettings(method="agreement", samples=4, threshold=5)


@pytest.fixture(scope="module")
def default_run():
    """(model, tokenizer, examples, the evaluate result) of the default model on test questions of three relations."""
    from knowtune.data import load_examples
    from knowtune.evaluate import evaluate_examples
    from knowtune.models import default_model_dir, load
    from knowtune.world.embedded import resolve_data_path

    model, tokenizer = load(default_model_dir(), "cpu", "float32")
    examples = load_examples(resolve_data_path("embedded"))
    chosen = [e for r in ("P19", "P26", "P131") for e in [x for x in examples if x.relation == r and x.split == "test"][:20]]
    return model, tokenizer, chosen, evaluate_examples(model, tokenizer, chosen)


def test_on_the_default_model_answer_rate_falls_and_answered_accuracy_rises_with_the_threshold(default_run):
    from knowtune.task import DEFAULT_TASK

    model, tokenizer, examples, result = default_run
    settings = AbstainSettings(method="agreement", samples=6, threshold=3)
    abstention = agreement_abstention(model, tokenizer, examples, result, settings, task=DEFAULT_TASK, batch_size=16)
    rates = [p.answer_rate for p in abstention.points]
    accuracy = [p.accuracy_answered for p in abstention.points]
    assert rates[0] == result.overall.answer_rate and accuracy[0] == pytest.approx(result.overall.accuracy_answered)
    assert rates == sorted(rates, reverse=True) and rates[3] < rates[0]
    # measured (60 questions): answer rate 1.0 / 0.283 / 0.083 / 0.067 and accuracy 0.133 / 0.353 / 0.80 / 0.75
    # at T = 0 / 1 / 2 / 3 (T = 2 -> 3 drops one correct answer of five): rising overall, not at every step
    assert accuracy[3] > accuracy[1] > accuracy[0]
    assert abstention.area > result.overall.accuracy_answered
    assert abstention.to_dict()["answer_rate"] == rates[3] and len(abstention.to_dict()["curve"]) == 7


def test_samples_do_not_depend_on_batching_and_near_zero_temperature_agrees_with_greedy(default_run):
    from knowtune.abstain import sample_answers
    from knowtune.evaluate import evaluation_prompts
    from knowtune.task import DEFAULT_TASK

    model, tokenizer, examples, result = default_run
    examples, predictions = examples[:12], result.predictions[:12]
    prompts = evaluation_prompts(tokenizer, examples, DEFAULT_TASK)
    settings = AbstainSettings(method="agreement", samples=4, threshold=2)
    together = sample_answers(model, tokenizer, examples, prompts, settings, task=DEFAULT_TASK, batch_size=12)
    alone = [sample_answers(model, tokenizer, [e], [p], settings, task=DEFAULT_TASK, batch_size=1)[0] for e, p in zip(examples, prompts)]
    assert together == alone
    cold = AbstainSettings(method="agreement", samples=3, threshold=3, temperature=1e-4)
    samples = sample_answers(model, tokenizer, examples, prompts, cold, task=DEFAULT_TASK)
    assert agreement_counts([p.prediction for p in predictions], samples) == [3] * len(examples)


def test_cli_prints_and_writes_the_abstention_block(capsys, tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, "evaluate", "--data", "embedded", "--split", "test", "--limit", "12", "--device", "cpu",
                                "--abstain", "agreement", "--samples", "4", "--threshold", "2", "--out", out)
    assert code == 0, err
    assert "threshold 2/4" in stdout and "area under the accuracy-coverage curve" in stdout
    block = json.loads((out / "metrics.json").read_text())["abstention"]
    assert block["samples"] == 4 and block["threshold"] == 2 and len(block["curve"]) == 5 and 0.0 <= block["answer_rate"] <= 1.0
    rows = [json.loads(line) for line in (out / "abstention.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["samples"]) == 4 and r["answered"] == (r["agreement"] >= 2) for r in rows)
    code, _, err = run_cli(capsys, "evaluate", "--data", "embedded", "--abstain", "agreement", "--samples", "3", "--threshold", "4")
    assert code == 2 and "threshold" in err


def test_verification_finding_reads_the_curve_at_the_idk_models_answer_rate():
    from knowtune.study.methods import accuracy_at_rate, verification_raises_answered_accuracy

    points = [p.to_dict() for p in (CurvePoint(0, 10, 10, 4), CurvePoint(1, 10, 6, 3), CurvePoint(2, 10, 2, 2), CurvePoint(3, 10, 0, 0))]
    assert accuracy_at_rate(points, 0.8) == pytest.approx(0.45)  # halfway between (0.6, 0.5) and (1.0, 0.4)
    assert accuracy_at_rate(points, 0.1) == 1.0 and accuracy_at_rate(points, 1.0) == 0.4
    baselines = {"verification": {"curve": points, "samples": 3, "area": 0.6}, "idk": {"answer_rate": 0.8, "accuracy_answered": 0.4}}
    found = verification_raises_answered_accuracy(baselines)
    assert found["holds"] is True and found["value"] == pytest.approx(5.0)
    baselines["idk"]["accuracy_answered"] = 0.5
    assert verification_raises_answered_accuracy(baselines)["holds"] is False
