"""P(True) (``knowtune annotate --method ptrue``) on the default model: the batched scorer against
an unbatched reference, the proposal against ``generate``, resume, the CLI and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from knowtune.ptrue import KADAVATH_TEMPLATE, PTrueSettings, auroc, draw_shots, ptrue_prompt, run_ptrue, score_ptrue
from knowtune.testing import run_cli


@pytest.fixture(scope="module")
def default_model():
    from knowtune.models import default_model_dir, load

    return load(default_model_dir(), "cpu", "float32")


@pytest.fixture(scope="module")
def embedded():
    """(a few train examples of three relations, the dev pool)."""
    from knowtune.data import load_examples
    from knowtune.world.embedded import resolve_data_path

    examples = load_examples(resolve_data_path("embedded"))
    chosen = [e for r in ("P19", "P26", "P36") for e in [x for x in examples if x.relation == r and x.split == "train"][:3]]
    return chosen, [e for e in examples if e.split == "dev"]


def _reference_p_true(model, tokenizer, prompt: str, settings: PTrueSettings) -> float:
    """P(True) from two unpadded forward passes, one option at a time."""
    from knowtune.task import DEFAULT_TASK

    builder = DEFAULT_TASK.prompts(tokenizer)
    ids = builder.encode([prompt])[0]
    logps = []
    for option in builder.encode_answers([settings.true_text, settings.false_text]):
        row = torch.tensor([ids + option])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=row).logits[0].float(), -1)
        logps.append(sum(float(logp[len(ids) - 1 + t, token]) for t, token in enumerate(option)))
    return math.exp(logps[0]) / (math.exp(logps[0]) + math.exp(logps[1]))


@pytest.mark.parametrize("shots", [0, 2])
def test_batched_p_true_equals_an_unbatched_reference_and_the_proposal_is_the_greedy_answer(default_model, embedded, shots):
    from knowtune.recall import greedy_answers
    from knowtune.slick.exemplars import draw_exemplar_sets
    from knowtune.task import DEFAULT_TASK

    model, tokenizer = default_model
    examples, pool = embedded
    settings = PTrueSettings(shots=shots)
    results = score_ptrue(model, tokenizer, examples, pool, settings=settings, batch_size=4)
    sets = draw_exemplar_sets(pool, ["P19", "P26", "P36"], n_ex=10, k=4, seed=0, source="dev")  # the audit's draw: its set 0
    prompts = [DEFAULT_TASK.prompts(tokenizer).fewshot(sets[e.relation][0].for_example(e.id), e.question) for e in examples]
    assert [r.proposed_answer for r in results] == greedy_answers(model, tokenizer, prompts)
    shots_drawn = draw_shots(pool, ["P19", "P26", "P36"], shots, 0)
    for example, result in zip(examples, results):
        assert 0.0 <= result.p_true <= 1.0 and 0.0 <= result.p_true_raw <= 1.0
        reference = _reference_p_true(model, tokenizer, ptrue_prompt(settings, shots_drawn[example.relation], example.question,
                                                                     result.proposed_answer), settings)
        assert result.p_true == pytest.approx(reference, abs=1e-4)
        assert result.verdict == ("True" if result.p_true >= 0.5 else "False")
        assert result.proposed_correct == (result.proposed_answer in example.answers)


def test_the_prompt_is_kadavaths_and_shots_alternate_gold_and_wrong_answers(embedded):
    _, pool = embedded
    settings = PTrueSettings(shots=4)
    shots = draw_shots(pool, ["P19"], 4, seed=0)["P19"]
    assert [s.true for s in shots] == [True, False, True, False]
    gold = {e.question: e.answers[0] for e in pool}
    assert all((gold[s.question] == s.answer) == s.true for s in shots)
    text = ptrue_prompt(settings, shots[:1], "Where was X born?", "Oslo")
    assert text == (KADAVATH_TEMPLATE.format(question=shots[0].question, answer=shots[0].answer) + " (A)\n\n"
                    + "Question: Where was X born?\nProposed Answer: Oslo\nIs the proposed answer:\n (A) True\n (B) False\n"
                      "The proposed answer is:")


def test_auroc_on_hand_made_scores():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5, 0.9], [0.5]) == 0.75  # a tie counts half
    assert auroc([], [0.3]) is None


def _config(out, **extra):
    from knowtune.slick.protocol import AnnotateConfig

    return AnnotateConfig(data="embedded", splits=["train"], relations=["P19", "P26"], limit=6, out=str(out), method="ptrue",
                          device="cpu", chunk_size=2, batch_size=16, **extra)


def _records(out):
    return [json.loads(line) for line in (out / "ptrue.jsonl").read_text().splitlines()]


def test_an_interrupted_run_resumes_to_the_same_results_as_one_run(tmp_path):
    whole = run_ptrue(_config(tmp_path / "whole"))
    assert whole["complete"] and whole["examples"] == 6 and whole["provenance"]["run"]["examples_this_run"] == 6
    batches = []

    def stop_after_one_batch(state):
        batches.append(state["done"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ptrue(_config(tmp_path / "resumed"), on_batch=stop_after_one_batch)
    assert batches == [2]
    resumed = run_ptrue(_config(tmp_path / "resumed"))
    assert resumed["provenance"]["run"]["examples_this_run"] == 4
    assert _records(tmp_path / "resumed") == _records(tmp_path / "whole")
    assert run_ptrue(_config(tmp_path / "resumed"))["provenance"]["run"]["examples_this_run"] == 0
    saved = json.loads((tmp_path / "whole" / "protocol.json").read_text())
    assert saved["protocol"]["method"] == "ptrue" and saved["protocol"]["ptrue"]["template"] == KADAVATH_TEMPLATE
    assert whole["provenance"]["model_fingerprint"] == saved["model_fingerprint"] and whole["provenance"]["seed"] == 0
    # another P(True) prompt is another protocol: refused in the same directory, as the audit's would be
    with pytest.raises(Exception, match="another protocol or model"):
        run_ptrue(_config(tmp_path / "whole", ptrue=PTrueSettings(shots=2)))


def test_cli_writes_the_outputs_and_refuses_bad_input(capsys, tmp_path):
    out = tmp_path / "cli"
    code, stdout, err = run_cli(capsys, "annotate", "--method", "ptrue", "--data", "embedded", "--split", "dev", "--limit", "3",
                                "--out", out, "--device", "cpu", "--ptrue-shots", "2")
    assert code == 0, err
    assert "P(True)" in stdout and "AUROC" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"] == 3 and len(_records(out)) == 3
    assert json.loads((out / "protocol.json").read_text())["protocol"]["ptrue"]["shots"] == 2
    code, _, err = run_cli(capsys, "annotate", "--method", "ptrue", "--data", "embedded", "--out", tmp_path / "x", "--shard", "0/2")
    assert code == 2 and "--shard" in err
    code, _, err = run_cli(capsys, "annotate", "--method", "ptrue", "--data", "embedded", "--out", tmp_path / "y",
                           "--ptrue-template", "Is {answer} right?")
    assert code == 2 and "ptrue.template" in err


def test_slick_unknown_below_ptrue_finding_on_hand_made_results():
    from knowtune.study.methods import slick_unknown_below_ptrue

    baselines = {"questions": 6, "categories": {"a": "Unknown", "b": "Unknown", "c": "HighlyKnown", "d": "HighlyKnown", "e": "Unknown",
                                                "f": "MaybeKnown"},
                 "sft_correct": {"a": False, "b": False, "c": True, "d": True, "e": True, "f": False},
                 "p_true": {"a": 0.9, "b": 0.5, "c": 0.1, "d": 0.2, "e": 0.8, "f": 0.3}}
    found = slick_unknown_below_ptrue(baselines)  # Unknown a, b, e: 1/3 correct; lowest P(True) c, d, f: 2/3
    assert found["holds"] is True and found["value"] == pytest.approx(100 / 3)
    baselines["sft_correct"].update(c=False, d=False)
    assert slick_unknown_below_ptrue(baselines)["holds"] is False
