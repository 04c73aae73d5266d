"""benchmarks/train_vs_trl.py: its data pieces give TRL the very rows knowtune trains on; end to end only where TRL is
installed (a benchmark-only dependency, ``pip install -e .[bench]``; not in the test environment)."""

from __future__ import annotations

import re

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("train_vs_trl")


def test_prompt_completion_records_are_knowtunes_rows(bench):
    """TRL tokenizes prompt and prompt + completion + EOS; the answer-only labels are then knowtune's (answer_terminator: eos)."""
    from transformers import AutoTokenizer

    from knowtune.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    examples = bench.benchmark_examples(40)
    rows, records = bench.knowtune_rows(examples, tokenizer), bench.prompt_completion_records(examples, tokenizer)
    assert len(rows) == len(records) == 40
    for row, record in zip(rows, records):
        prompt = tokenizer(record["prompt"])["input_ids"]
        whole = tokenizer(record["prompt"] + record["completion"] + tokenizer.eos_token)["input_ids"]
        assert row["input_ids"] == whole and row["labels"] == [-100] * len(prompt) + whole[len(prompt):]
        assert whole[-1] == tokenizer.eos_token_id and record["completion"] in [e.answers[0] for e in examples]


def test_counting_collator_counts_real_tokens_only(bench):
    from knowtune.train.sft import SFTCollator

    counter = bench.CountingCollator(SFTCollator(pad_token_id=0))
    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": [5] * n} for n in (3, 7)]
    batch = counter(rows)
    assert batch["input_ids"].shape == (2, 7) and counter.tokens == [10]


def test_benchmark_prints_the_ratio_line(bench, capsys):
    pytest.importorskip("trl")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        bench.main(["--steps", "2", "--warmup", "1", "--rounds", "1", "--batch-size", "4"])
    finally:
        hf_logging.set_verbosity(verbosity)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "rows_tokenized_differently=0/12" in lines[0], lines[0]
    assert re.fullmatch(r"tokens_per_s_vs_trl=\d+\.\d\d", lines[-1]), lines[-1]
    for name in ("knowtune", "trl"):
        assert any(re.match(rf"{name}\s+steps=\s*2\b", line) for line in lines), lines
