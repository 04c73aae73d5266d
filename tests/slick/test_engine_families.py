"""The audit engine's half of the architecture matrix: every family of ``knowtune.testing.FAMILIES``
(and a few variants: ALiBi Falcon, sliding windows wider and narrower than the prompt).

Per family, on a tiny random-init model and few-shot prompts of the tiny world: the prompts are
a real test (the greedy answer to a question changes with its few-shot prefix); the audit
backend's greedy answers equal plain ``model.generate`` at batch 1, and its samples equal
the exact path's; the path verification chose is the expected one, and wrong paths forced on
a model are caught by what they compute, not by a list of names.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from packaging.version import Version

import knowtune.slick.generation as generation
from knowtune.errors import KnowtuneError
from knowtune.matching import extract_answer
from knowtune.models import load
from knowtune.slick.annotate import plan_audit
from knowtune.slick.engine import EXACT, PER_ROW, SHARED
from knowtune.slick.generation import GREEDY, HFBackend, Request
from knowtune.slick.protocol import AnnotateConfig
from knowtune.slick.sampling import row_key
from knowtune.slick.tokens import decode_batch
from knowtune.testing import FAMILIES, run_cli, tiny_family_model

MAX_NEW = 6
DEVICE = os.environ.get("KNOWTUNE_TEST_DEVICE", "cpu")  # `cuda` on a GPU machine: the same checks there (docs/benchmarks.md)
VARIANTS = {family: (family, {}) for family in FAMILIES} | {
    "falcon-alibi": ("falcon", {"alibi": True}),
    "gemma2-wide-window": ("gemma2", {"sliding_window": 512}),
    "qwen2-sliding-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 24, "max_window_layers": 0}),
}
# The path verification picks. GPT-2 hands extra arguments down to its attention from transformers 5.
EXPECTED = {
    "llama": SHARED, "mistral": SHARED, "qwen2": SHARED, "qwen3": SHARED, "phi3": SHARED, "gpt_neox": SHARED, "opt": SHARED,
    "gpt2": SHARED if Version(transformers.__version__) >= Version("5") else PER_ROW,
    "bloom": PER_ROW, "falcon": PER_ROW, "falcon-alibi": PER_ROW,  # attention outside the registry
    "gemma2-wide-window": PER_ROW,  # soft-capped attention logits
    "gemma2": EXACT, "qwen2-sliding-window": EXACT,  # a window shorter than the prompts
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (model dir, model, tokenizer), built on first use."""
    root, cache = tmp_path_factory.mktemp("families"), {}

    def get(name: str):
        if name not in cache:
            family, overrides = VARIANTS[name]
            directory = tiny_family_model(family, root / name, **overrides)
            cache[name] = (directory, *load(directory, DEVICE, "float32"))
        return cache[name]

    return get


def _config(tiny_world, **keys) -> AnnotateConfig:
    return AnnotateConfig(data=str(tiny_world[0]), splits=["test"], relations=["born_in", "founded"], limit=4, n_ex=3,
                          max_new_tokens=MAX_NEW, **keys)


@pytest.fixture(scope="module")
def prompts(tiny_world, models):
    """(prefix ids, [(prefix index, prompt ids)], question of each prompt): 4 questions x 3 prefixes."""
    _, _, tokenizer = models("llama")  # every family shares the default model's tokenizer
    plan = plan_audit(_config(tiny_world), "float32")
    builder = plan.task.prompts(tokenizer)
    relations = sorted(plan.sets)
    offset = {r: 3 * i for i, r in enumerate(relations)}
    prefixes = builder.encode([builder.prefix(s.exemplars) for r in relations for s in plan.sets[r]])
    items = [(offset[e.relation] + s, e.id, builder.fewshot(sets.for_example(e.id), e.question))
             for _, e in plan.examples for s, sets in enumerate(plan.sets[e.relation])]
    encoded = builder.encode([text for _, _, text in items])
    return prefixes, [(p, tuple(ids)) for (p, _, _), ids in zip(items, encoded)], [q for _, q, _ in items]


def _generate(model, backend, ids) -> list[int]:
    """Plain ``model.generate`` greedy at batch 1, cut after the first stop token."""
    x = torch.tensor([ids], device=model.device)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=0)
    tokens = []
    for token in out[0, x.shape[1]:].tolist():
        tokens.append(token)
        if backend.is_stop[token]:
            break
    return tokens


def _backend(model, tokenizer, prefixes, **keys) -> HFBackend:
    backend = HFBackend(model, tokenizer, stop="\n", max_new_tokens=MAX_NEW, temperature=0.5, top_k=40, batch_size=64, **keys)
    backend.set_prefixes(prefixes)
    return backend


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_greedy_answers_equal_generate_on_every_family(name, models, prompts):
    _, model, tokenizer = models(name)
    prefixes, items, questions = prompts
    lines = []
    backend = _backend(model, tokenizer, prefixes, log=lines.append)
    reference = [_generate(model, backend, ids) for _, ids in items]
    by_question: dict[str, set] = {}
    for question, answer in zip(questions, reference):
        by_question.setdefault(question, set()).add(tuple(answer))
    assert any(len(answers) > 1 for answers in by_question.values()), "the answers do not depend on the few-shot prefix"
    keys = [(GREEDY, *(row_key(0, i, 0, t) for t in range(3))) for i in range(len(items))]
    outputs = backend.generate([Request(p, ids, k) for (p, ids), k in zip(items, keys)])
    assert [rows[0] for rows in outputs] == reference
    assert (backend.engine, lines) == (EXPECTED[name], [backend.engine_note])
    if name == "gpt2" and backend.engine == PER_ROW:
        assert "does not receive knowtune's prefix" in backend.engine_note
    exact = _backend(model, tokenizer, prefixes, engine="exact").generate([Request(p, ids, k) for (p, ids), k in zip(items, keys)])
    assert outputs == exact  # the samples too


def test_a_model_that_drops_the_prefix_is_caught(models, prompts, monkeypatch):
    """Falcon's attention is outside the registry; past the static check, the probe still sees
    that its attention never reads the shared prefix (the GPT-2 failure of transformers 4)."""
    _, model, tokenizer = models("falcon")
    prefixes, items, _ = prompts
    monkeypatch.setattr(generation, "supports_shared_prefix", lambda model: True)
    with pytest.raises(KnowtuneError, match="does not receive knowtune's prefix: logits differ"):
        _backend(model, tokenizer, prefixes, engine="shared-prefix").generate([Request(p, ids, (GREEDY,)) for p, ids in items])
    backend = _backend(model, tokenizer, prefixes)
    backend.generate([Request(p, ids, (GREEDY,)) for p, ids in items[:2]])
    assert backend.engine == PER_ROW and "does not receive knowtune's prefix" in backend.engine_note


def test_positions_off_by_one_are_caught(models, prompts, monkeypatch):
    """A subtly wrong path (learned positions shifted by one) fails the tolerance."""
    _, model, tokenizer = models("gpt2")
    prefixes, items, _ = prompts
    suffixes = HFBackend._suffixes

    def shifted(self, requests):
        ids, mask, positions, shared = suffixes(self, requests)
        return ids, mask, positions + 1, shared

    monkeypatch.setattr(HFBackend, "_suffixes", shifted)
    with pytest.raises(KnowtuneError, match="per-row-copy.*logits differ from the exact path"):
        _backend(model, tokenizer, prefixes, engine="per-row-copy").generate([Request(p, ids, (GREEDY,)) for p, ids in items])


@pytest.mark.parametrize(("name", "reason"), [("gemma2", "it fails: RuntimeError"), ("qwen2-sliding-window", "logits differ")])
def test_a_window_shorter_than_the_prompt_is_caught_without_the_window_rule(name, reason, models, prompts):
    _, model, tokenizer = models(name)
    prefixes, items, _ = prompts
    backend = _backend(model, tokenizer, prefixes, engine="per-row-copy")
    backend.window = None  # the rule that keeps long batches off the fast paths, switched off
    with pytest.raises(KnowtuneError, match=reason):
        backend.generate([Request(p, ids, (GREEDY,)) for p, ids in items])


@pytest.mark.parametrize("name", ["gpt2", "gemma2"])
def test_annotate_cli_matches_generate(name, models, tiny_world, tmp_path, capsys):
    directory, model, tokenizer = models(name)
    code, _, err = run_cli(capsys, "annotate", "--model", directory, "--data", tiny_world[0], "--out", tmp_path, "--split", "test",
                           "--relations", "born_in,founded", "--limit", 4, "--n-ex", 3, "--max-new-tokens", MAX_NEW,
                           "--mode", "exact", "--n-samples", 2, "--device", DEVICE, "--dtype", "float32")
    assert code == 0, err
    assert f"using {'the exact path' if EXPECTED[name] == EXACT else 'per-row prefix copies' if EXPECTED[name] == PER_ROW else 'shared'}" in err
    records = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["provenance"]["run"]["engine"].startswith("engine: ")
    plan = plan_audit(_config(tiny_world), "float32")
    builder = plan.task.prompts(tokenizer)
    backend = _backend(model, tokenizer, [])
    for record in records:
        example = next(e for _, e in plan.examples if e.id == record["id"])
        prompts = builder.encode([builder.fewshot(s.for_example(example.id), example.question) for s in plan.sets[example.relation]])
        texts = decode_batch(tokenizer, [_generate(model, backend, ids) for ids in prompts])
        assert record["greedy_answers"] == [extract_answer(t, "\n") for t in texts]


def test_a_forced_engine_the_model_does_not_reproduce_is_exit_status_2(models, tiny_world, tmp_path, capsys):
    directory, _, _ = models("bloom")
    code, _, err = run_cli(capsys, "annotate", "--model", directory, "--data", tiny_world[0], "--out", tmp_path, "--split", "test",
                           "--limit", 1, "--n-ex", 2, "--max-new-tokens", MAX_NEW, "--device", DEVICE, "--engine", "shared-prefix")
    assert code == 2 and "engine 'shared-prefix' cannot be used for BloomForCausalLM" in err and "--engine auto" in err
    assert not (tmp_path / "annotations.jsonl").exists()
