"""Benchmark of ``knowtune annotate`` against a naive SliCK implementation.

Naive baseline (what a straightforward reading of Gekhman et al., EMNLP 2024,
arXiv 2405.05904, section 3 gives): for every example and each of its N_ex = 10 prompts,
``model.generate`` on that one prompt for the greedy answer, then
``model.generate(do_sample=True, temperature=0.5, top_k=40, num_return_sequences=16)``;
batch 1, the prompt re-encoded every call. It uses the same prompts, the same stop rule
(newline tokens and EOS end a sequence) and the same ``max_new_tokens`` as knowtune.

knowtune ``exact`` and ``lazy`` run on the same examples through ``run_annotate``
(timed end to end: data, model loading, generation, store and exports).

Each side is timed in wall-clock seconds and in CPU seconds of this process
(``time.process_time``). The speed-ups of the last line are CPU-time ratios: on a machine
shared with other jobs the wall clock of a few-second run depends on what the others do
in those seconds, while CPU time counts only this process's work (with one thread, the
wall time it would take on an idle core). The wall-clock ratios are printed on the line
before.

Usage::

    python benchmarks/annotate.py                       # default model, 200 train examples of the embedded world
    python benchmarks/annotate.py --model DIR --data FILE --examples 200 --pick first

The last line reads ``lazy_vs_naive=<x> exact_vs_naive=<y> greedy_agreement=<percent>``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from knowtune.matching import extract_answer
from knowtune.slick.annotate import plan_audit, run_annotate
from knowtune.slick.tokens import decode_batch, eos_token_ids, stop_token_mask


@dataclass
class Timer:
    """Wall-clock and process CPU seconds of a block."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    def __str__(self) -> str:
        return f"{self.wall:8.2f} s wall {self.cpu:8.2f} s cpu"
from knowtune.models import load
from knowtune.slick.prompts import PromptBuilder
from knowtune.slick.protocol import AnnotateConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model dir, hub id or `default`")
    parser.add_argument("--data", default=None, help="dataset path; default: the embedded world's train split")
    parser.add_argument("--split", default="train", help="split to audit")
    parser.add_argument("--examples", type=int, default=200, help="number of audited examples")
    parser.add_argument("--pick", choices=["spread", "first"], default="spread",
                        help="spread: the examples are taken round-robin over the relations; first: in dataset order")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both sides (1: on a busy 2-core machine more threads stall in OpenMP waits)")
    parser.add_argument("--out", default=None, help="keep knowtune outputs here (default: a temp dir)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both sides run; on cuda the last line's ratios are of wall-clock times")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights' dtype on both sides")
    return parser.parse_args()


def benchmark_data(source: str | None, split: str, n: int, pick: str, tmp: Path) -> str:
    """A JSONL file with the ``n`` audited examples of ``split`` (taken round-robin over the
    relations, or the first ``n``) and every example of the other splits (the exemplar pool)."""
    from knowtune.data import load_examples, save_examples
    from knowtune.world.embedded import load_embedded_world

    examples = list(load_embedded_world().examples) if source is None else load_examples(source)
    audited = [e for e in examples if e.split == split]
    if pick == "spread":
        by_relation: dict[str, list] = {}
        for e in audited:
            by_relation.setdefault(e.relation, []).append(e)
        queues = [by_relation[r] for r in sorted(by_relation)]
        audited = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    chosen = {e.id for e in audited[:n]}
    path = tmp / "benchmark.jsonl"
    save_examples([e for e in examples if e.split != split or e.id in chosen], path)
    return str(path)


@torch.inference_mode()
def naive(config: AnnotateConfig) -> tuple[Timer, dict[str, list[str]]]:
    """Time and greedy answers per example id of the batch-1 ``model.generate`` baseline."""
    plan = plan_audit(config, config.dtype)
    model, tokenizer = load(config.model, config.device, config.dtype)
    builder = PromptBuilder(tokenizer, instruction=config.instruction, exemplar_template=config.exemplar_template,
                            query_template=config.query_template, chat_template=config.chat_template)
    vocab = model.get_output_embeddings().weight.shape[0]
    stops = stop_token_mask(tokenizer, vocab, config.stop, eos_token_ids(model, tokenizer)).nonzero().squeeze(1).tolist()
    common = {"max_new_tokens": config.max_new_tokens, "eos_token_id": stops,
              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]}
    greedy: dict[str, list[str]] = {}
    warm = torch.tensor(builder.encode(["Q: warm up\nA:"]), device=model.device)
    model.generate(warm, attention_mask=torch.ones_like(warm), do_sample=False, **common)  # first-call costs untimed
    torch.manual_seed(config.seed)
    with Timer() as timer:
        for _, example in plan.examples:
            answers = []
            for exemplar_set in plan.sets[example.relation]:
                text = builder.prompt(exemplar_set.for_example(example.id), example.question)
                ids = torch.tensor(builder.encode([text]), device=model.device)
                n = ids.shape[1]
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **common)
                answers.append(extract_answer(decode_batch(tokenizer, [out[0, n:].tolist()])[0], config.stop))
                model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=config.temperature,
                               top_k=config.top_k, num_return_sequences=config.n_samples, **common)
            greedy[example.id] = answers
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return timer, greedy


def knowtune_run(config: AnnotateConfig, out: Path) -> tuple[Timer, dict[str, list[str]], dict]:
    """Time, greedy answers per id and summary of one ``run_annotate`` call."""
    shutil.rmtree(out, ignore_errors=True)
    with Timer() as timer:
        summary = run_annotate(config.model_copy(update={"out": str(out)}))
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    return timer, {r["id"]: r["greedy_answers"] for r in records}, summary


def agreement(reference: dict[str, list[str]], *others: dict[str, list[str]]) -> float:
    """Percent of (example, prompt) greedy answers identical to the reference, over all others."""
    same = total = 0
    for other in others:
        for key, answers in reference.items():
            same += sum(a == b for a, b in zip(answers, other[key]))
            total += len(answers)
    return 100.0 * same / total


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="knowtune-bench-"))
    out = Path(args.out) if args.out else tmp
    data = benchmark_data(args.data, args.split, args.examples, args.pick, tmp)
    config = AnnotateConfig(model=args.model, data=data, splits=[args.split], device=args.device, dtype=args.dtype)
    print(f"model={args.model} data={args.data or 'embedded'} split={args.split} examples={args.examples} ({args.pick}) "
          f"threads={torch.get_num_threads()} device={args.device} dtype={args.dtype}", flush=True)
    knowtune_run(config.model_copy(update={"limit": 2}), out / "warmup")  # imports and first-call costs untimed
    t_lazy, g_lazy, s_lazy = knowtune_run(config.model_copy(update={"mode": "lazy"}), out / "lazy")
    print(s_lazy["provenance"]["run"]["engine"], flush=True)  # the decoding path measured, and why
    print(f"knowtune lazy:  {t_lazy}  generations={s_lazy['overall']['generations']}  counts={s_lazy['overall']['counts']}", flush=True)
    t_exact, g_exact, s_exact = knowtune_run(config.model_copy(update={"mode": "exact"}), out / "exact")
    print(f"knowtune exact: {t_exact}  generations={s_exact['overall']['generations']}  counts={s_exact['overall']['counts']}", flush=True)
    t_naive, g_naive = naive(config)
    print(f"naive:          {t_naive}  generations={len(g_naive) * config.n_ex * (1 + config.n_samples)}", flush=True)
    same_categories = s_lazy["overall"]["counts"] == s_exact["overall"]["counts"]
    print(f"lazy and exact category counts equal: {same_categories}")
    print(f"wall clock: lazy_vs_naive={t_naive.wall / t_lazy.wall:.1f} exact_vs_naive={t_naive.wall / t_exact.wall:.1f}")
    # On a GPU the process's CPU time is mostly waiting on kernels: there the wall clock is the measure.
    t = (lambda timer: timer.wall) if args.device == "cuda" else (lambda timer: timer.cpu)
    print(f"lazy_vs_naive={t(t_naive) / t(t_lazy):.1f} exact_vs_naive={t(t_naive) / t(t_exact):.1f} "
          f"greedy_agreement={agreement(g_naive, g_lazy, g_exact):.1f}")


if __name__ == "__main__":
    main()
