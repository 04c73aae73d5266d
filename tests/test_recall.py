from knowtune.models import load_model_and_tokenizer
from knowtune.recall import few_shot_prompt, newline_token_ids


def test_newline_token_ids_are_every_newline_token_plus_eos():
    _, tokenizer = load_model_and_tokenizer("default")
    ids = newline_token_ids(tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer("\n", add_special_tokens=False)["input_ids"][0] in ids
    assert all("\n" in tokenizer.decode([i]) for i in ids if i != tokenizer.eos_token_id)
    assert not any("\n" in tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in ids)


def test_few_shot_prompt_is_the_slick_format():
    from knowtune.data.schema import QAExample

    shot = QAExample(id="a", relation="r", question="Where was A born?", answers=("Rome",), split="dev")
    assert few_shot_prompt([shot], "Where was B born?") == "Q: Where was A born?\nA: Rome\nQ: Where was B born?\nA:"
