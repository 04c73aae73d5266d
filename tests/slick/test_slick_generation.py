"""The fast backend: shared-prefix KV reuse gives plain ``generate``'s greedy answers,
samples are reproducible whatever the batching, finished rows leave the batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from knowtune.errors import KnowtuneError
from knowtune.slick.annotate import plan_audit
from knowtune.slick.generation import GREEDY, HFBackend, Request, compact_prefills
from knowtune.models import load
from knowtune.slick.sampling import gumbel_noise, row_key, sample_keys
from knowtune.slick.protocol import stable_hash
from knowtune.slick.prompts import PromptBuilder
from knowtune.slick.protocol import AnnotateConfig


def _setup(tiny_world, tiny_loaded, *, instruction="", exemplar_template="Q: {question}\nA: {answer}\n", query_template="Q: {question}\nA:",
           batch_size=64, top_k=40, temperature=0.5, relation="born_in", n=6, engine="auto"):
    model, tokenizer = tiny_loaded
    config = AnnotateConfig(data=str(tiny_world[0]), exemplar_template=exemplar_template, query_template=query_template)
    plan = plan_audit(config, "float32")
    builder = PromptBuilder(tokenizer, instruction=instruction, exemplar_template=exemplar_template,
                            query_template=query_template, chat_template=False)
    backend = HFBackend(model, tokenizer, stop="\n", max_new_tokens=12, temperature=temperature, top_k=top_k,
                        batch_size=batch_size, engine=engine)
    sets = plan.sets[relation]
    backend.set_prefixes(builder.encode([builder.prefix(s.exemplars) for s in sets]))
    examples = [e for _, e in plan.examples if e.relation == relation and e.split != "dev"][:n]
    prompts = [(s, builder.encode([builder.prompt(sets[s].for_example(e.id), e.question)])[0]) for e in examples for s in range(len(sets))]
    return model, backend, prompts


def _reference(model, backend, prompt_ids):
    """Plain ``model.generate`` greedy on the full prompt, cut after the first stop token."""
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=backend.max_new_tokens, pad_token_id=0)
    tokens = []
    for token in out[0, ids.shape[1]:].tolist():
        tokens.append(token)
        if backend.is_stop[token]:
            break
    return tokens


ENGINES = ["shared-prefix", "per-row-copy", "exact"]


@pytest.mark.parametrize(("batch_size", "engine"), [(7, e) for e in ENGINES] + [(64, e) for e in ENGINES])
def test_kv_reuse_greedy_equals_plain_generate(tiny_world, tiny_loaded, batch_size, engine):
    model, backend, prompts = _setup(tiny_world, tiny_loaded, batch_size=batch_size, engine=engine)
    outputs = backend.generate([Request(s, tuple(ids), (GREEDY,)) for s, ids in prompts])
    assert backend.engine == engine
    assert [rows[0] for rows in outputs] == [_reference(model, backend, ids) for _, ids in prompts]


def test_auto_engine_verifies_and_picks_shared_prefix_for_llama(tiny_world, tiny_loaded):
    lines = []
    model, backend, prompts = _setup(tiny_world, tiny_loaded, n=2)
    backend.log = lines.append
    backend.generate([Request(s, tuple(ids), (GREEDY,)) for s, ids in prompts])
    backend.generate([Request(s, tuple(ids), (GREEDY,)) for s, ids in prompts])
    assert backend.engine == "shared-prefix"
    assert lines == ["engine: using shared-prefix attention (verified against the exact path)"] == [backend.engine_note]  # said once


@pytest.mark.parametrize("engine", ENGINES)
def test_prefix_that_tokenizes_differently_falls_back_exactly(tiny_world, tiny_loaded, engine):
    # The same text as the default template, cut so that the prefix ends in "Q: ": the
    # trailing space merges with the question's first word ("ĠWhere") in the full prompt,
    # so the cached prefix and the prompt diverge at the prefix's last token.
    model, backend, prompts = _setup(tiny_world, tiny_loaded, instruction="Q: ", exemplar_template="{question}\nA: {answer}\nQ: ",
                                     query_template="{question}\nA:", n=3, engine=engine)
    requests = [Request(s, tuple(ids), (GREEDY,)) for s, ids in prompts]
    assert all(backend.shared_length(r) < len(backend.prefix_ids[r.prefix_index]) for r in requests)
    outputs = backend.generate(requests)
    assert [rows[0] for rows in outputs] == [_reference(model, backend, ids) for _, ids in prompts]


def test_only_suffixes_are_fed_and_finished_rows_leave_the_batch(tiny_world, tiny_loaded):
    model, backend, prompts = _setup(tiny_world, tiny_loaded, batch_size=4096, temperature=2.0)  # hot: answers of many lengths
    backend.generate([Request(0, tuple(prompts[0][1]), (GREEDY,))])  # the engine is verified (and chosen) at the first call
    shapes = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    try:
        keys = tuple(row_key(0, 1, 0, t) for t in range(16))
        outputs = backend.generate([Request(s, tuple(ids), (GREEDY, *keys)) for s, ids in prompts if s == 0])
    finally:
        hook.remove()
    prefill, steps = shapes[0], shapes[1:]
    assert prefill[0] == len(outputs) and prefill[1] < min(len(ids) for _, ids in prompts) / 2  # the prefix came from the cache
    assert steps[0][0] == 17 * len(outputs)  # one prefill shared by 1 greedy + 16 sampled rows
    assert [b for b, _ in steps] == sorted((b for b, _ in steps), reverse=True) and steps[-1][0] < steps[0][0]
    lengths = {len(row) for rows in outputs for row in rows}
    assert len(lengths) > 1


def test_samples_do_not_depend_on_batching(tiny_world, tiny_loaded):
    _, backend, prompts = _setup(tiny_world, tiny_loaded, batch_size=4096, temperature=2.0, n=3)
    requests = [Request(s, tuple(ids), tuple(row_key(0, j, s, t) for t in range(16))) for j, (s, ids) in enumerate(prompts)]
    together = backend.generate(requests)
    backend.batch_size = 16
    one_by_one = [backend.generate([r])[0] for r in reversed(requests)][::-1]
    assert together == one_by_one
    assert all(len({tuple(row) for row in rows}) > 1 for rows in together)  # the 16 samples of a prompt differ


def test_every_engine_draws_the_same_samples(tiny_world, tiny_loaded):
    results = []
    for engine in ENGINES:
        _, backend, prompts = _setup(tiny_world, tiny_loaded, temperature=1.0, n=3, engine=engine)
        keys = [(GREEDY, *(row_key(0, j, s, t) for t in range(8))) for j, (s, _) in enumerate(prompts)]
        results.append(backend.generate([Request(s, tuple(ids), k) for (s, ids), k in zip(prompts, keys)]))
    assert results[0] == results[1] == results[2]
    assert all(len({tuple(row) for row in rows}) > 1 for rows in results[0])  # the rows of a prompt differ: samples, not copies


def test_top_k_one_sampling_is_greedy(tiny_world, tiny_loaded):
    _, backend, prompts = _setup(tiny_world, tiny_loaded, top_k=1, n=2)
    outputs = backend.generate([Request(s, tuple(ids), (GREEDY, row_key(0, 5, s, 0), row_key(0, 5, s, 1))) for s, ids in prompts])
    assert all(rows[0] == rows[1] == rows[2] for rows in outputs)


def test_gumbel_max_samples_the_softmax():
    """argmax(l/T + G) ~ softmax(l/T): two tokens with probabilities 1/4 and 3/4."""
    keys = torch.arange(40000, dtype=torch.int64) * 2654435761 % (2**32)
    logits = torch.tensor([0.0, math.log(3.0)])
    tokens = torch.tensor([[7, 9]]).expand(len(keys), 2)
    picks = (logits + gumbel_noise(keys, 3, tokens)).argmax(-1)
    assert abs(picks.float().mean().item() - 0.75) < 0.01
    assert not torch.equal(gumbel_noise(keys[:100], 0, tokens[:100]), gumbel_noise(keys[:100], 1, tokens[:100]))
    swapped = gumbel_noise(keys[:100], 0, tokens[:100].flip(1))  # noise follows the token, not its rank
    assert torch.equal(swapped.flip(1), gumbel_noise(keys[:100], 0, tokens[:100]))


def test_newline_tokens_and_eos_stop(tiny_loaded, tiny_world):
    _, tokenizer = tiny_loaded
    _, backend, _ = _setup(tiny_world, tiny_loaded, n=1)
    stops = backend.is_stop.nonzero().squeeze(1).tolist()
    assert tokenizer.eos_token_id in stops
    assert all("\n" in tokenizer.decode([t]) for t in stops if t != tokenizer.eos_token_id)
    assert tokenizer.convert_tokens_to_ids("Ċ") in stops


def test_vectorised_sample_keys_equal_row_key():
    example_keys = [stable_hash("a"), stable_hash("b"), 12345]
    keys = sample_keys(7, example_keys, n_prompts=3, n_samples=4)
    assert keys == [[tuple(row_key(7, e, p, t) for t in range(4)) for p in range(3)] for e in example_keys]
    assert len({k for per_example in keys for per_prompt in per_example for k in per_prompt}) == 36


def test_kept_prefills_decode_like_a_fresh_prefill(tiny_world, tiny_loaded):
    _, backend, prompts = _setup(tiny_world, tiny_loaded, temperature=1.0, n=3)
    _, prefills = backend.generate_keeping_prefills([Request(s, tuple(ids), (GREEDY,)) for s, ids in prompts])
    assert all(p is not None for p in prefills)
    keys = [tuple(row_key(0, j, s, t) for t in range(8)) for j, (s, _) in enumerate(prompts)]
    fresh = backend.generate([Request(s, tuple(ids), k) for (s, ids), k in zip(prompts, keys)])
    reused = backend.generate([Request(s, tuple(ids), k, p) for (s, ids), k, p in zip(prompts, keys, compact_prefills(prefills))])
    assert reused == fresh


@pytest.mark.parametrize("engine", ["per-row-copy", "exact"])
def test_paths_without_kept_prefills_return_none(tiny_world, tiny_loaded, engine):
    _, backend, prompts = _setup(tiny_world, tiny_loaded, n=2, engine=engine)
    outputs, prefills = backend.generate_keeping_prefills([Request(s, tuple(ids), (GREEDY,)) for s, ids in prompts])
    assert prefills == [None] * len(prompts) and all(len(rows) == 1 for rows in outputs)


CHAT = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"


def test_chat_template_prompts_use_the_template_and_match_generate(tiny_world, tiny_loaded):
    model, tokenizer = tiny_loaded
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT
    plan = plan_audit(AnnotateConfig(data=str(tiny_world[0])), "float32")
    builder = PromptBuilder(chat_tokenizer, instruction="", exemplar_template="Q: {question}\nA: {answer}\n",
                            query_template="Q: {question}\nA:", chat_template=True)
    sets = plan.sets["founded"]
    example = next(e for _, e in plan.examples if e.relation == "founded" and e.split == "test")
    prompt = builder.prompt(sets[0].exemplars, example.question)
    assert prompt.startswith("<s>[user] Q: ") and prompt.endswith(f"Q: {example.question}\nA:\n[assistant]")
    assert prompt.startswith(builder.prefix(sets[0].exemplars))
    backend = HFBackend(model, chat_tokenizer, stop="\n", max_new_tokens=12, temperature=0.5, top_k=40, batch_size=64)
    backend.set_prefixes(builder.encode([builder.prefix(s.exemplars) for s in sets]))
    prompts = [builder.encode([builder.prompt(s.exemplars, example.question)])[0] for s in sets]
    assert prompts[0].count(chat_tokenizer.bos_token_id) == 1  # the template's <s>, no second one added
    outputs = backend.generate([Request(i, tuple(ids), (GREEDY,)) for i, ids in enumerate(prompts)])
    assert [rows[0] for rows in outputs] == [_reference(model, backend, ids) for ids in prompts]


def test_chat_template_requires_one():
    class NoTemplate:
        chat_template = None

    with pytest.raises(KnowtuneError, match="no chat template"):
        PromptBuilder(NoTemplate(), instruction="", exemplar_template="{question}{answer}", query_template="{question}", chat_template=True)


def test_bfloat16_runs_and_mostly_agrees_with_float32(tiny_model, tiny_world, tiny_loaded):
    model32, _ = tiny_loaded
    model16, tokenizer = load(tiny_model, "cpu", "bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    answers = []
    for model in (model32, model16):
        _, backend, prompts = _setup(tiny_world, (model, tokenizer), n=4)
        outputs = backend.generate([Request(s, tuple(ids), (GREEDY, row_key(0, 1, s, 0))) for s, ids in prompts])
        answers.append([rows[0] for rows in outputs])
        assert all(len(rows) == 2 for rows in outputs)
    agree = sum(a == b for a, b in zip(*answers)) / len(answers[0])
    assert agree >= 0.8


@pytest.mark.parametrize("engine", ENGINES)
def test_rejected_samples_stop_early_and_greedy_rows_never_do(tiny_world, tiny_loaded, engine):
    _, backend, prompts = _setup(tiny_world, tiny_loaded, temperature=2.0, n=2, engine=engine)
    keys = [(GREEDY, *(row_key(0, j, s, t) for t in range(8))) for j, (s, _) in enumerate(prompts)]
    full = backend.generate([Request(s, tuple(ids), k) for (s, ids), k in zip(prompts, keys)])
    pruned = backend.generate([Request(s, tuple(ids), k, alive=lambda text: False) for (s, ids), k in zip(prompts, keys)])
    for rows_full, rows_pruned in zip(full, pruned):
        assert rows_pruned[0] == rows_full[0]  # the greedy answer is always decoded in full
        assert all(len(p) == 1 and p == f[:1] for p, f in zip(rows_pruned[1:], rows_full[1:]))  # stopped after 1 token
    assert any(len(row) > 1 for rows in full for row in rows[1:])
