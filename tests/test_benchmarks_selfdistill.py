"""benchmarks/selfdistill.py runs end to end on the default model and ends with its ratio line."""

from __future__ import annotations

import re

from transformers.utils import logging as hf_logging


def test_selfdistill_benchmark_prints_the_ratio_line(benchmark_script, capsys):
    bench = benchmark_script("selfdistill")
    verbosity = hf_logging.get_verbosity()
    try:
        bench.main(["--steps", "2", "--warmup", "1", "--rounds", "1", "--batch-size", "4", "--top-k", "8"])
    finally:
        hf_logging.set_verbosity(verbosity)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"live_vs_sft=\d+\.\d\d cached_vs_sft=\d+\.\d\d", lines[-1]), lines[-1]
    for method in ("sft", "live", "cached"):  # two timed steps of each trainer
        assert any(re.match(rf"{method}\s+steps=\s*2\b", line) for line in lines), lines
