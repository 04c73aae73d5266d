"""Evaluation: the pure metric computation on hand-made predictions, prompts, and batched generation."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from knowtune.data.schema import QAExample
from knowtune.errors import ConfigError, DataError
from knowtune.evaluate import PromptFormat, evaluate_examples, flat_metrics, load_categories, metadata_categories, score_predictions
from knowtune.models import load
from knowtune.task import DEFAULT_TASK
from knowtune.testing import run_cli, tiny_world


def _ex(i: int, answer: str, relation: str = "P1", split: str = "test") -> QAExample:
    return QAExample(id=f"q{i}", relation=relation, question=f"Question {i}?", answers=(answer,), split=split)


def test_answer_rate_and_hallucination_rate_on_hand_made_predictions():
    examples = [_ex(0, "Paris"), _ex(1, "Rome"), _ex(2, "Oslo", "P2"), _ex(3, "Bern", "P2"), _ex(4, "Riga", "P2"), _ex(5, "Lima")]
    predictions = ["paris", "I don't know.", "Bergen", "i dont know", "", "The Lima"]
    categories = {"q0": "HighlyKnown", "q1": "Unknown", "q2": "Unknown", "q3": "MaybeKnown", "q4": "WeaklyKnown"}  # q5: none
    result = score_predictions(examples, predictions, categories=categories, idk_phrase="I don't know")
    assert [p.correct for p in result.predictions] == [True, False, False, False, False, True]
    # Abstention is decided after normalisation: "I don't know." and "i dont know" are the phrase;
    # an empty answer is not an abstention (it is answered, and wrong).
    assert [p.answered for p in result.predictions] == [True, False, True, False, True, True]
    overall = result.overall
    assert (overall.n, overall.correct, overall.answered) == (6, 2, 4)
    assert overall.exact_match == pytest.approx(2 / 6)
    assert overall.answer_rate == pytest.approx(4 / 6)
    assert overall.accuracy_answered == pytest.approx(2 / 4)
    assert overall.hallucination_rate == pytest.approx(2 / 4)
    unknown = result.per_category["Unknown"]
    assert (unknown.n, unknown.answered, unknown.exact_match, unknown.hallucination_rate) == (2, 1, 0.0, 1.0)
    assert result.per_category["Known"].n == 3 and result.per_category["HighlyKnown"].accuracy_answered == 1.0
    assert result.uncategorized == 1
    assert result.per_relation["P1"].exact_match == pytest.approx(2 / 3) and result.per_relation["P2"].answer_rate == pytest.approx(2 / 3)


def test_abstaining_everywhere_leaves_answered_ratios_undefined():
    examples = [_ex(0, "Paris"), _ex(1, "Rome")]
    result = score_predictions(examples, ["Weiß nicht", "weiß nicht!"], idk_phrase="Weiß nicht")
    assert result.overall.answer_rate == 0.0 and result.overall.exact_match == 0.0
    assert result.overall.accuracy_answered is None and result.overall.hallucination_rate is None
    assert result.per_category == {} and result.uncategorized == 0


def test_an_idk_target_counts_as_correct_but_not_as_answered():
    result = score_predictions([_ex(0, "I don't know")], ["I don't know"])
    (p,) = result.predictions
    assert p.correct and not p.answered and result.overall.correct_answered == 0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="2 examples but 1 predictions"):
        score_predictions([_ex(0, "a"), _ex(1, "b")], ["a"])
    with pytest.raises(ConfigError, match="Knownish"):
        score_predictions([_ex(0, "a")], ["a"], categories={"q0": "Knownish"})
    with pytest.raises(ValueError, match="must contain {question}"):
        PromptFormat(template="Answer: ")


def test_flat_metrics_keys():
    result = score_predictions([_ex(0, "x"), _ex(1, "y")], ["x", "z"], categories={"q0": "HighlyKnown", "q1": "Unknown"})
    flat = flat_metrics("test", result)
    assert flat["test/exact_match"] == 0.5 and flat["test/exact_match/Known"] == 1.0 and flat["test/correct/Unknown"] == 0
    assert flat["test/n/MaybeKnown"] == 0 and flat["test/exact_match/MaybeKnown"] is None
    assert flat["test/hallucination_rate"] == 0.5 and flat["test/answer_rate"] == 1.0


def test_prompt_formats():
    world = tiny_world()
    dev, test = world.split("dev"), world.split("test")
    assert PromptFormat().render("Who?") == "Answer the following question. Who?\n"
    assert PromptFormat(template="Q: {question} {x}\nA:").render("Who?") == "Q: Who? {x}\nA:"
    fewshot = PromptFormat(kind="fewshot", shots=2, seed=1)
    prompts = fewshot.prompts(test, dev)
    assert prompts == fewshot.prompts(test, dev) != PromptFormat(kind="fewshot", shots=2, seed=2).prompts(test, dev)
    for ex, prompt in zip(test, prompts):
        lines = prompt.split("\n")
        assert len(lines) == 6 and lines[-2:] == [f"Q: {ex.question}", "A:"]
        shots = [line[3:] for line in lines[:-2:2]]
        assert all(q in {d.question for d in dev if d.relation == ex.relation} for q in shots)
    for ex, prompt in zip(dev, fewshot.prompts(dev, dev)):  # a dev question never sees its own answer
        assert prompt.count(ex.question) == 1
    with pytest.raises(ConfigError, match="need 5 exemplars"):
        PromptFormat(kind="fewshot", shots=5).prompts(test, dev)


def test_batched_generation_matches_one_by_one(tiny_pretrained):
    # A randomly initialised Llama answers every prompt differently (the pretrained one starts
    # every answer with a newline), so a padding error would show in the answers.
    _, tokenizer = load(tiny_pretrained)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = LlamaForCausalLM(config)
    model.train()
    examples = tiny_world().split("test")[:6]
    task = DEFAULT_TASK.updated(max_new_tokens=6)
    batched = evaluate_examples(model, tokenizer, examples, task=task, batch_size=6)
    single = evaluate_examples(model, tokenizer, examples, task=task, batch_size=1)
    assert [p.prediction for p in batched.predictions] == [p.prediction for p in single.predictions]
    assert len({p.prediction for p in batched.predictions}) > 3
    assert model.training and tokenizer.padding_side == "right"  # both restored


def test_load_categories(tmp_path):
    (tmp_path / "annotations.jsonl").write_text('{"id": "a", "category": "Unknown", "p0": 0}\n\n{"id": "b", "category": "MaybeKnown"}\n')
    assert load_categories(tmp_path) == {"a": "Unknown", "b": "MaybeKnown"}
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "category": "Unknown"}\n{"id": "b", "category": "Known"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a record needs"):
        load_categories(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="no such annotations file"):
        load_categories(tmp_path / "missing")
    curated = [_ex(0, "a").model_copy(update={"metadata": {"category": "WeaklyKnown"}}), _ex(1, "b")]
    assert metadata_categories(curated) == {"q0": "WeaklyKnown"} and metadata_categories([_ex(1, "b")]) is None


def test_evaluate_reads_every_key_from_its_config_file_and_flags_override_it(capsys, tiny_pretrained, tmp_path):
    import yaml

    from knowtune.data import save_examples
    from knowtune.evaluate import EvalConfig

    world = tiny_world()
    save_examples(list(world.examples), tmp_path / "data.jsonl")
    (tmp_path / "task.yaml").write_text("generation:\n  max_new_tokens: 5\nfinetune:\n  idk_phrase: Unsure\n")
    settings = {"model": str(tiny_pretrained), "data": str(tmp_path / "data.jsonl"), "split": "dev", "annotations": None,
                "out": str(tmp_path / "eval"), "task": str(tmp_path / "task.yaml"),
                "prompt": {"kind": "fewshot", "template": "Q: {question}\n", "shots": 2, "seed": 3},
                "idk_phrase": "No idea", "batch_size": 7, "max_new_tokens": 9, "limit": 4, "device": "cpu", "dtype": "float32",
                "data_fields": {"question": "question", "answer": None, "relation": None, "split": None, "id": None},
                "backend": "hf", "base_url": ["http://10.0.0.5:8000/v1"], "served_model": "m", "api_key_env": None, "concurrency": 3,
                "request_timeout": 9.0, "max_retries": 2, "retry_backoff": 0.25, "samples_per_request": 4,
                "stop": ["\n\n", "Q:"], "match": {"nfkc": True, "lowercase": True, "strip_punctuation": True, "strip_articles": False,
                                                   "collapse_whitespace": True, "version": 1, "method": "f1", "f1_threshold": 0.6},
                "abstain": {"method": "none", "samples": 3, "threshold": 2, "temperature": 0.7, "top_k": 5, "seed": 1},
                "retrieval": None, "retrieval_k": 3, "retrieval_min_relevance": None}
    assert set(settings) == set(EvalConfig.model_fields)  # the YAML below sets every key
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(settings))
    code, _, err = run_cli(capsys, "evaluate", "--config", tmp_path / "evaluate.yaml", "--shots", "3", "--dtype", "bfloat16")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())
    at_added_default = {"retrieval_min_relevance"}  # left out of saved configs at its default (EvalConfig.ADDED_DEFAULTS)
    assert saved == {**{k: v for k, v in settings.items() if k not in at_added_default}, "prompt": {**settings["prompt"], "shots": 3}, "dtype": "bfloat16"}
    task = yaml.safe_load((tmp_path / "eval" / "task.yaml").read_text())
    # the task file's keys, overridden by the evaluate keys that were set (YAML or flags)
    assert task["generation"]["max_new_tokens"] == 9 and task["finetune"]["idk_phrase"] == "No idea"
    assert task["fewshot"]["k"] == 3 and task["finetune"]["template"] == "Q: {question}\n"
    assert task["generation"]["stop"] == ["\n\n", "Q:"] and task["match"] == settings["match"]
    metrics = yaml.safe_load((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 4 and metrics["provenance"]["config"]["dtype"] == "bfloat16"


def test_evaluate_cli_errors(capsys, tiny_pretrained, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--model", tiny_pretrained)
    assert code == 2 and "no dataset given" in err
    code, _, err = run_cli(capsys, "evaluate", "--model", tiny_pretrained, "--data", "embedded", "--device", "tpu")
    assert code == 2 and "device" in err


def test_evaluate_match_flags_choose_the_matcher_and_long_gold_answers_are_warned_about(capsys, tiny_pretrained, tmp_path):
    import json

    from knowtune.data import save_examples

    world = tiny_world()
    examples = [ex for ex in world.examples if ex.split == "dev"][:6]
    long = examples[0].model_copy(update={"answers": (" ".join([examples[0].answers[0]] * 30),)})
    save_examples([long, *examples[1:]], tmp_path / "data.jsonl")
    base = ("evaluate", "--model", tiny_pretrained, "--data", tmp_path / "data.jsonl", "--split", "dev", "--device", "cpu")
    code, _, err = run_cli(capsys, *base, "--match", "f1", "--f1-threshold", "0.3", "--stop", "\n", "--stop", "Q:", "--max-new-tokens", "40",
                           "--out", tmp_path / "f1")
    assert code == 0, err
    assert "1 of 6 examples have gold answers longer than max_new_tokens=40" in " ".join(err.split())
    saved = json.loads((tmp_path / "f1" / "metrics.json").read_text())["provenance"]["config"]
    assert saved["match"]["method"] == "f1" and saved["match"]["f1_threshold"] == 0.3 and saved["stop"] == ["\n", "Q:"]
    code, _, err = run_cli(capsys, *base, "--match", "judge")
    assert code == 2 and "--judge-url" in err
