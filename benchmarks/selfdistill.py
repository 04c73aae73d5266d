"""Training step time of self-distillation SFT against plain SFT on the same batches.

Three trainers, as ``knowtune train`` builds them (:func:`knowtune.train.sft.build_trainer`),
train the shipped default model on the same QA rows of the embedded world
(:func:`~knowtune.train.sft.build_sft_rows`, the first ``(warmup + steps) * batch-size``
train examples, one epoch, so every trainer sees the same batches in the same order):

- **sft**: transformers ``Trainer``, the cross-entropy of the answer tokens (``method: sft``);
- **live**: ``SelfDistillationTrainer`` with a live teacher, a frozen copy of the model run
  on every batch (``method: selfdistill``, the default loss: lambda 1, tau 0.5, forward KL
  over the full vocabulary);
- **cached**: ``SelfDistillationTrainer`` with the teacher's top-k log-probs precomputed once
  (:func:`~knowtune.train.selfdistill.precompute_teacher_topk`, ``--top-k`` tokens plus a
  tail bucket, untimed) and carried in the batches (``with_teacher_topk``,
  ``TeacherTopKCollator``).

What is timed: each optimiser step inside ``Trainer.train`` from ``on_step_begin`` to
``on_step_end`` (forward, teacher, loss, backward, gradient clipping, AdamW, scheduler);
the batch's collation comes before ``on_step_begin`` and is not counted. The first
``--warmup`` steps of every run are left out (first-call allocations). Each round trains a
fresh copy of the model with each trainer, the order rotating between rounds, so a busy
spell of the machine falls on all three; the step times of all rounds are pooled.

Why self-distillation can cost less than SFT here: ``SelfDistillationTrainer`` computes the
output layer (hidden 128 x vocab 4096, the largest matrix product of the default model)
for student and teacher only at the answer positions (about 5 of 21 tokens a row,
:func:`knowtune.train.selfdistill.logits_at`), with the same loss and gradients; the plain
``Trainer`` computes logits and cross-entropy at every position.

Each step is timed in CPU seconds of this process (``time.process_time``) and in wall
seconds. On CPU the ratios of the last line are ratios of median CPU step times: the
machine is shared with other jobs, and CPU time counts only this process's work (with one
thread, the time the step takes on an idle core). On CUDA CPU time means little, so the
ratios there are of wall times, with the device synchronised at both ends of a step.

Usage::

    python benchmarks/selfdistill.py [--steps 40] [--rounds 3] [--batch-size 16] [--threads 1] [--device cpu]

The last line reads ``live_vs_sft=<x> cached_vs_sft=<y>`` (issue 5's targets: <= 1.3 and <= 1.1).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

METHODS = ("sft", "live", "cached")


class StepTimer(TrainerCallback):
    """CPU and wall seconds of every optimiser step after the first ``warmup``."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda = warmup, cuda
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if state.global_step > self.warmup:  # global_step counts this step already
            self.cpu.append(time.process_time() - self._cpu)
            self.wall.append(time.perf_counter() - self._wall)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per trainer and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each trains all three trainers, order rotating")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step (knowtune train's default: 16)")
    parser.add_argument("--top-k", type=int, default=32, help="teacher tokens cached per position (plus a tail bucket)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a busy 2-core machine more threads stall in OpenMP waits)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="auto: cuda when available")
    parser.add_argument("--model", default="default", help="model dir, hub id or `default`")
    return parser.parse_args(argv)


def benchmark_rows(tokenizer, n: int) -> list[dict]:
    """SFT rows of the first ``n`` train examples of the embedded world (cycled if fewer)."""
    from knowtune.train.sft import build_sft_rows
    from knowtune.world.embedded import load_embedded_world

    train = [e for e in load_embedded_world().examples if e.split == "train"]
    examples = [train[i % len(train)] for i in range(n)]
    return build_sft_rows(examples, tokenizer)


def make_trainer(method: str, base, tokenizer, rows, cache, args, device: str, out: Path):
    """A trainer of ``method`` on a fresh copy of ``base``, built by knowtune's ``build_trainer``."""
    from knowtune.train.config import SelfDistillSettings, TrainConfig
    from knowtune.train.selfdistill import TeacherTopKCollator, with_teacher_topk
    from knowtune.train.sft import build_trainer

    top_k = args.top_k if method == "cached" else None
    config = TrainConfig(method="sft" if method == "sft" else "selfdistill", epochs=1, batch_size=args.batch_size,
                         device=device, selfdistill=SelfDistillSettings(teacher="base", top_k=top_k))
    teacher = copy.deepcopy(base) if method == "live" else None
    if method == "cached":
        rows = with_teacher_topk(rows, cache, config.selfdistill.loss_config())
    trainer = build_trainer(config, copy.deepcopy(base).train(), tokenizer, rows, out / method, teacher=teacher, save=False)
    if method == "cached":  # build_trainer's SFTCollator pads the three SFT columns only
        trainer.data_collator = TeacherTopKCollator(pad_token_id=trainer.data_collator.pad_token_id)
    return trainer


def time_run(trainer, warmup: int, cuda: bool) -> StepTimer:
    timer = StepTimer(warmup, cuda)
    trainer.add_callback(timer)
    trainer.train()
    return timer


def summary(name: str, cpu: list[float], wall: list[float], sft_cpu: float, sft_wall: float) -> str:
    cpu_ms, wall_ms = 1000 * statistics.median(cpu), 1000 * statistics.median(wall)
    return (f"{name:7s} steps={len(cpu):4d}  median {cpu_ms:7.1f} ms cpu {wall_ms:7.1f} ms wall  "
            f"mean {1000 * statistics.fmean(cpu):7.1f} ms cpu  vs sft: cpu {cpu_ms / sft_cpu:.3f} wall {wall_ms / sft_wall:.3f}")


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    from knowtune.models import load
    from knowtune.train.selfdistill import precompute_teacher_topk

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device == "cuda"
    base, tokenizer = load(args.model, device=device, dtype="float32")
    rows = benchmark_rows(tokenizer, (args.warmup + args.steps) * args.batch_size)
    answer_tokens = sum(sum(label != -100 for label in row["labels"]) for row in rows) / len(rows)
    print(f"model={args.model} params={sum(p.numel() for p in base.parameters()):,} device={device} threads={torch.get_num_threads()} "
          f"batch={args.batch_size} steps={args.steps} warmup={args.warmup} rounds={args.rounds} top_k={args.top_k} "
          f"tokens/row={sum(len(r['input_ids']) for r in rows) / len(rows):.1f} answer_tokens/row={answer_tokens:.1f}", flush=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.process_time()
    cache = precompute_teacher_topk(base, rows, k=args.top_k, batch_size=64, temperature=0.5, pad_token_id=pad_id)
    print(f"teacher cache: {len(rows)} rows in {time.process_time() - start:.2f} s cpu (untimed below)", flush=True)

    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="knowtune-bench-") as tmp:
        for round_ in range(args.rounds):
            order = METHODS[round_ % 3:] + METHODS[:round_ % 3]
            medians = []
            for method in order:
                trainer = make_trainer(method, base, tokenizer, rows, cache, args, device, Path(tmp))
                timer = time_run(trainer, args.warmup, cuda)
                cpu[method] += timer.cpu
                wall[method] += timer.wall
                medians.append(f"{method} {1000 * statistics.median(timer.cpu):.1f}")
            print(f"round {round_ + 1}: median ms cpu: {', '.join(medians)}", flush=True)

    sft_cpu, sft_wall = 1000 * statistics.median(cpu["sft"]), 1000 * statistics.median(wall["sft"])
    for method in METHODS:
        print(summary(method, cpu[method], wall[method], sft_cpu, sft_wall))
    primary = wall if cuda else cpu
    ratio = {m: statistics.median(primary[m]) / statistics.median(primary["sft"]) for m in METHODS}
    other = cpu if cuda else wall
    print(f"{'cpu' if cuda else 'wall clock'}: live_vs_sft={statistics.median(other['live']) / statistics.median(other['sft']):.2f} "
          f"cached_vs_sft={statistics.median(other['cached']) / statistics.median(other['sft']):.2f}")
    print(f"live_vs_sft={ratio['live']:.2f} cached_vs_sft={ratio['cached']:.2f}")


if __name__ == "__main__":
    main()
