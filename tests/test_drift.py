"""knowtune.drift on the tiny knowtune-pretrained Llama: subject positions, entity states and cosine drift."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from knowtune.drift import DEFAULT_LAYER, cosine_drift, entity_states, subject_token_positions
from knowtune.errors import ConfigError, KnowtuneError
from knowtune.evaluate import PromptFormat
from knowtune.models import load
from knowtune.testing import tiny_world


@pytest.fixture(scope="module")
def tiny(tiny_pretrained):
    return load(tiny_pretrained)


@pytest.fixture(scope="module")
def held_out():
    return tiny_world().split("test")


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_position_is_the_last_token_of_the_subject(tiny, held_out):
    _, tokenizer = tiny
    prompts = PromptFormat().prompts(held_out)
    positions = subject_token_positions(tokenizer, prompts, [ex.subject for ex in held_out])
    for ex, prompt, position in zip(held_out, prompts, positions):
        ids = _ids(tokenizer, prompt)
        through = tokenizer.decode(ids[: position + 1])
        assert through.endswith(ex.subject), (through, ex.subject)
        assert not tokenizer.decode(ids[:position]).endswith(ex.subject)  # the subject is not complete one token earlier
        assert ex.subject.endswith(tokenizer.decode(ids[position]).strip())


def test_position_of_a_subject_that_occurs_twice_is_its_last_occurrence(tiny):
    _, tokenizer = tiny
    prompt = "Edo Penham met Linia Vancemont. Where does Edo Penham work?\n"
    (position,) = subject_token_positions(tokenizer, [prompt], ["Edo Penham"])
    ids = _ids(tokenizer, prompt)
    assert tokenizer.decode(ids[: position + 1]) == "Edo Penham met Linia Vancemont. Where does Edo Penham"
    (first,) = subject_token_positions(tokenizer, ["Edo Penham met Linia Vancemont.\n"], ["Edo Penham"])
    assert first < position


def test_a_token_running_past_the_subject_holds_its_last_character(tiny):
    _, tokenizer = tiny
    prompt = "Where does Edo Penham work?"
    (position,) = subject_token_positions(tokenizer, [prompt], ["Edo Pen"])  # "Penham" may be one token
    through = tokenizer.decode(_ids(tokenizer, prompt)[: position + 1])
    assert "Edo Pen" in through and not tokenizer.decode(_ids(tokenizer, prompt)[:position]).endswith("Edo Pen")


def test_subject_missing_from_the_prompt_and_slow_tokenizers_are_errors(tiny):
    _, tokenizer = tiny
    with pytest.raises(KnowtuneError, match="'Ada Lovelace' does not occur in the prompt"):
        subject_token_positions(tokenizer, ["Where does Edo Penham work?"], ["Ada Lovelace"])

    class Slow:
        is_fast = False

    with pytest.raises(KnowtuneError, match="no character offsets") as error:
        subject_token_positions(Slow(), ["Where?"], ["x"])
    assert "fast tokenizer" in error.value.fix


def test_states_are_the_hidden_state_at_the_subject_token(tiny, held_out):
    model, tokenizer = tiny
    states = entity_states(model, tokenizer, held_out, layer=2, batch_size=5)  # uneven batches, right padding
    assert states.shape == (len(held_out), model.config.hidden_size) and states.dtype == torch.float32 and states.device.type == "cpu"
    prompts = PromptFormat().prompts(held_out)
    positions = subject_token_positions(tokenizer, prompts, [ex.subject for ex in held_out])
    for i in (0, 5, len(held_out) - 1):  # one prompt alone, no padding: the reference computation
        with torch.no_grad():
            hidden = model(torch.tensor([_ids(tokenizer, prompts[i])]), output_hidden_states=True).hidden_states[2]  # (1, T, H)
        torch.testing.assert_close(states[i], hidden[0, positions[i]], rtol=0, atol=1e-5)
    torch.testing.assert_close(states, entity_states(model, tokenizer, held_out, layer=2, batch_size=64), rtol=0, atol=1e-5)


def test_drift_is_zero_for_the_same_model_and_positive_after_a_perturbation(tiny, held_out):
    model, tokenizer = tiny
    base = entity_states(model, tokenizer, held_out)
    assert cosine_drift(base, entity_states(model, tokenizer, held_out)) == 0.0
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        torch.manual_seed(0)
        for parameter in perturbed.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    drift = cosine_drift(base, entity_states(perturbed, tokenizer, held_out))
    assert 0.0 < drift < 1.0


def test_layer_selects_the_hidden_state(tiny, held_out):
    model, tokenizer = tiny
    count = model.config.num_hidden_layers + 1
    states = [entity_states(model, tokenizer, held_out, layer=layer) for layer in range(count)]
    assert all(not torch.allclose(states[i], states[i + 1]) for i in range(count - 1))
    torch.testing.assert_close(entity_states(model, tokenizer, held_out, layer=-count), states[0], rtol=0, atol=0)
    assert DEFAULT_LAYER == -1 and torch.equal(entity_states(model, tokenizer, held_out), states[-1])
    assert cosine_drift(states[1], states[2]) > 0
    with pytest.raises(ConfigError, match=f"drift layer {count} is out of range"):
        entity_states(model, tokenizer, held_out, layer=count)


def test_template_moves_the_position_and_mode_is_restored(tiny, held_out):
    model, tokenizer = tiny
    model.train()
    try:
        plain = entity_states(model, tokenizer, held_out[:3], template="{question}", layer=0)
        assert model.training
    finally:
        model.eval()
    # layer 0 = token embeddings: the subject's last token is the same token under any template
    torch.testing.assert_close(plain, entity_states(model, tokenizer, held_out[:3], layer=0), rtol=0, atol=0)
    assert not torch.allclose(entity_states(model, tokenizer, held_out[:3], template="{question}", layer=1),
                              entity_states(model, tokenizer, held_out[:3], layer=1))


def test_peft_model_states_equal_the_base_until_the_adapter_changes(tiny, held_out):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    base = entity_states(model, tokenizer, held_out)
    fresh = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # B = 0: the base function
    assert cosine_drift(base, entity_states(fresh, tokenizer, held_out)) == pytest.approx(0.0, abs=1e-12)
    torch.manual_seed(0)
    changed = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert cosine_drift(base, entity_states(changed, tokenizer, held_out)) > 1e-4
    with changed.disable_adapter():
        assert cosine_drift(base, entity_states(changed, tokenizer, held_out)) == pytest.approx(0.0, abs=1e-12)


def test_examples_without_a_usable_subject_name_the_example(tiny, held_out):
    model, tokenizer = tiny
    no_subject = held_out[1].model_copy(update={"subject": None})
    with pytest.raises(KnowtuneError, match=f"example '{no_subject.id}' has no subject") as error:
        entity_states(model, tokenizer, [held_out[0], no_subject])
    assert "subject" in error.value.fix
    misspelt = held_out[2].model_copy(update={"subject": "Somebody Else"})
    with pytest.raises(KnowtuneError, match=f"example '{misspelt.id}': its subject 'Somebody Else' does not occur"):
        entity_states(model, tokenizer, [misspelt])


def test_cosine_drift_matches_one_minus_cosine():
    torch.manual_seed(0)
    a, b = torch.randn(7, 16), torch.randn(7, 16)
    expected = (1 - F.cosine_similarity(a.double(), b.double(), dim=-1)).mean().item()
    assert cosine_drift(a, b) == pytest.approx(expected, abs=1e-12)
    assert cosine_drift(a, 3 * a) == pytest.approx(0.0, abs=1e-15)  # scale-free
    assert cosine_drift(a, -a) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one shape"):
        cosine_drift(a, b[:3])
