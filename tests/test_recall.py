from knowtune.models import load
from knowtune.recall import few_shot_prompts, left_padded, stop_token_ids


def test_stop_token_ids_are_every_newline_token_plus_eos():
    _, tokenizer = load("default")
    ids = stop_token_ids(tokenizer, "\n")
    assert tokenizer.eos_token_id in ids
    assert tokenizer("\n", add_special_tokens=False)["input_ids"][0] in ids
    assert all("\n" in tokenizer.decode([i]) for i in ids if i != tokenizer.eos_token_id)
    assert not any("\n" in tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in ids)


def test_few_shot_prompt_is_the_slick_format():
    from knowtune.data.schema import QAExample

    shot = QAExample(id="a", relation="r", question="Where was A born?", answers=("Rome",), split="dev")
    fact = QAExample(id="b", relation="r", question="Where was B born?", answers=("Oslo",), split="train")
    assert few_shot_prompts(None, [fact], [shot]) == ["Q: Where was A born?\nA: Rome\nQ: Where was B born?\nA:"]


def test_left_padding_puts_every_row_at_the_right_edge():
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
