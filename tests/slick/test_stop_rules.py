"""Stop rules beyond the first newline: several stop strings, in the decoding loop and in the audit."""

from __future__ import annotations

import collections
import json

from knowtune.matching import extract_answer
from knowtune.slick.annotate import run_annotate
from knowtune.slick.protocol import AnnotateConfig
from knowtune.slick.tokens import stop_token_mask


def test_a_list_of_stop_strings_stops_at_tokens_holding_any_of_them(tiny_loaded):
    _, tokenizer = tiny_loaded
    vocab = len(tokenizer)
    both = stop_token_mask(tokenizer, vocab, ["\n", "."], [])
    assert bool((both == (stop_token_mask(tokenizer, vocab, "\n", []) | stop_token_mask(tokenizer, vocab, ".", []))).all())
    assert both.sum() > stop_token_mask(tokenizer, vocab, "\n", []).sum()


def test_the_audit_cuts_each_greedy_answer_at_the_earliest_stop_string(tiny_model, tiny_world, tmp_path):
    def greedy(out, **values):
        run_annotate(AnnotateConfig(model=str(tiny_model), data=str(tiny_world[0]), out=str(out), device="cpu", splits=["train"], limit=10,
                                    n_ex=2, n_samples=0, **values))
        return [json.loads(line)["greedy_answers"] for line in (out / "annotations.jsonl").read_text().splitlines()]

    newline = greedy(tmp_path / "newline")
    # a letter inside the answers (after their first character): each answer is cut at its first one
    letter = collections.Counter(ch for answers in newline for a in answers for ch in a[1:] if ch.isalpha()).most_common(1)[0][0]
    cut = greedy(tmp_path / "cut", stop=["\n", letter])
    assert cut == [[extract_answer(a, letter) for a in answers] for answers in newline]
    assert cut != newline  # the rule did cut something
    protocols = [json.loads((tmp_path / d / "protocol.json").read_text())["protocol"]["decoding"]["stop"] for d in ("newline", "cut")]
    assert protocols == ["\n", ["\n", letter]]
