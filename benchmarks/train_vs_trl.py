"""Training throughput of knowtune SFT against TRL's ``SFTTrainer`` on the same model, data, batch and steps.

Both train a fresh copy of the same model (the shipped default model unless ``--model``) on
the first ``(warmup + steps) * batch-size`` train examples of the embedded world, one epoch,
``batch-size`` rows a step, with the same optimiser settings (AdamW, knowtune's default
learning rate 3e-4, linear schedule, no warmup or weight decay, gradient clipping at 1.0,
seed 0, fp32, no gradient checkpointing) and the loss on the answer tokens only:

- **knowtune**: the trainer ``knowtune train --method sft`` builds
  (:func:`knowtune.train.sft.build_trainer`) over :func:`~knowtune.train.sft.build_sft_rows`
  with ``answer_terminator: eos``: prompt ids, then the answer's ids and EOS, labels -100 on
  the prompt;
- **trl**: ``SFTTrainer`` over a prompt-completion dataset (``prompt``: the same fine-tuning
  prompt text, ``completion``: the answer text; TRL appends EOS) with ``completion_only_loss``.
  TRL's own defaults that change the work per step are set to knowtune's
  (``gradient_checkpointing=False``, ``bf16=False``); the rest are TRL's (its fused LM head,
  its per-step entropy and token-accuracy metrics).

The benchmark checks that both tokenize every row to the same ids and label the same tokens,
and prints how many differ (TRL tokenizes prompt + completion as one text; a merge across the
boundary would move a token).

Tokens per second: the prompt and answer tokens of the rows a step trains on (padding not
counted; counted per batch by a wrapper around each trainer's collator), summed over the
timed steps, divided by the summed step times. A step is timed from ``on_step_begin`` to
``on_step_end`` (forward, loss, backward, clipping, AdamW, scheduler; collation comes before
and is not counted), the first ``--warmup`` steps of every run left out. On CPU step times
are CPU seconds of this process (``time.process_time``: the machine is shared, and with one
thread this is the time on an idle core); on CUDA wall seconds with the device synchronised.
Each round trains both, the order alternating, and the rounds' steps are pooled.

Usage (TRL is a benchmark-only dependency: ``pip install -e .[bench]``)::

    python benchmarks/train_vs_trl.py [--steps 40] [--rounds 2] [--batch-size 16] [--threads 1] [--device cpu]

The last line reads ``tokens_per_s_vs_trl=<x>`` (knowtune's tokens/s over TRL's; issue 10's target: >= 1.0).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from transformers import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selfdistill import StepTimer  # noqa: E402  (the same step timing as the self-distillation benchmark)

TRAINERS = ("knowtune", "trl")


class CountingCollator:
    """``collator`` that records the real (unpadded) tokens of every batch it builds, in order."""

    def __init__(self, collator):
        self.collator = collator
        self.tokens: list[int] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel()))
        return batch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per trainer and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each trains both, order alternating")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step (knowtune train's default: 16)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a busy 2-core machine more threads stall in OpenMP waits)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="auto: cuda when available")
    parser.add_argument("--model", default="default", help="model dir, hub id or `default`")
    return parser.parse_args(argv)


def benchmark_examples(n: int) -> list:
    """The first ``n`` train examples of the embedded world (cycled if fewer)."""
    from knowtune.world.embedded import load_embedded_world

    train = [e for e in load_embedded_world().examples if e.split == "train"]
    return [train[i % len(train)] for i in range(n)]


def knowtune_rows(examples, tokenizer) -> list[dict]:
    """knowtune's SFT rows: prompt ids + answer ids + EOS, labels on the answer and EOS."""
    from knowtune.task import DEFAULT_TASK
    from knowtune.train.sft import build_sft_rows

    return build_sft_rows(examples, tokenizer, DEFAULT_TASK, terminator="eos")


def prompt_completion_records(examples, tokenizer) -> list[dict[str, str]]:
    """TRL's prompt-completion records of the same examples: the same prompt text, the answer as completion (TRL adds EOS)."""
    from knowtune.task import DEFAULT_TASK

    prompts = DEFAULT_TASK.prompts(tokenizer)
    return [{"prompt": prompts.finetune(ex.question), "completion": DEFAULT_TASK.finetune.answer_prefix + ex.answers[0]} for ex in examples]


def differing_rows(rows: list[dict], trl_dataset) -> int:
    """Rows whose ids or trained tokens differ between knowtune's rows and TRL's tokenized dataset."""
    differ = 0
    for row, other in zip(rows, trl_dataset):
        differ += row["input_ids"] != list(other["input_ids"]) or row["labels"] != list(other["labels"])
    return differ + abs(len(rows) - len(trl_dataset))


def training_settings(args) -> dict:
    """The ``TrainingArguments`` values both trainers get (knowtune's ``TrainConfig`` defaults)."""
    from knowtune.train.config import TrainConfig

    config = TrainConfig(method="sft")
    return dict(num_train_epochs=1, per_device_train_batch_size=args.batch_size, learning_rate=config.learning_rate,
                lr_scheduler_type=config.lr_scheduler, weight_decay=config.weight_decay, seed=config.seed, data_seed=config.seed,
                max_grad_norm=1.0)


def make_knowtune(base, tokenizer, rows, args, device: str, out: Path):
    from knowtune.train.config import TrainConfig
    from knowtune.train.sft import build_trainer

    config = TrainConfig(method="sft", epochs=1, batch_size=args.batch_size, device=device, answer_terminator="eos")
    trainer = build_trainer(config, copy.deepcopy(base).train(), tokenizer, rows, out / "knowtune", save=False)
    assert trainer.args.max_grad_norm == 1.0 and trainer.args.learning_rate == config.learning_rate
    return trainer


def make_trl(base, tokenizer, records, args, device: str, out: Path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(output_dir=str(out / "trl"), completion_only_loss=True, gradient_checkpointing=False, bf16=False, fp16=False,
                       logging_strategy="epoch", save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                       use_cpu=device == "cpu", **training_settings(args))
    trainer = SFTTrainer(model=copy.deepcopy(base).train(), args=config, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # as knowtune's trainer: no per-log prints
    return trainer


def run(trainer, warmup: int, cuda: bool) -> tuple[StepTimer, list[int]]:
    """Train; the step timer and the real tokens of each step's batch."""
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    timer = StepTimer(warmup, cuda)
    trainer.add_callback(timer)
    trainer.train()
    return timer, counter.tokens


def main(argv: list[str] | None = None) -> None:
    import datasets
    import trl
    from transformers.utils import logging as hf_logging

    from knowtune.models import load

    args = parse_args(argv)
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device == "cuda"
    base, tokenizer = load(args.model, device=device, dtype="float32")
    examples = benchmark_examples((args.warmup + args.steps) * args.batch_size)
    rows, records = knowtune_rows(examples, tokenizer), prompt_completion_records(examples, tokenizer)

    seconds = {name: 0.0 for name in TRAINERS}
    tokens = {name: 0 for name in TRAINERS}
    steps = {name: 0 for name in TRAINERS}
    with tempfile.TemporaryDirectory(prefix="knowtune-bench-") as tmp:
        probe = make_trl(base, tokenizer, records, args, device, Path(tmp))
        differ = differing_rows(rows, probe.train_dataset)
        print(f"model={args.model} params={sum(p.numel() for p in base.parameters()):,} device={device} threads={torch.get_num_threads()} "
              f"batch={args.batch_size} steps={args.steps} warmup={args.warmup} rounds={args.rounds} trl={trl.__version__} "
              f"tokens/row={sum(len(r['input_ids']) for r in rows) / len(rows):.1f} "
              f"answer_tokens/row={sum(sum(x != -100 for x in r['labels']) for r in rows) / len(rows):.1f} "
              f"rows_tokenized_differently={differ}/{len(rows)}", flush=True)
        del probe
        for round_ in range(args.rounds):
            order = TRAINERS if round_ % 2 == 0 else TRAINERS[::-1]
            line = []
            for name in order:
                trainer = (make_knowtune(base, tokenizer, rows, args, device, Path(tmp)) if name == "knowtune"
                           else make_trl(base, tokenizer, records, args, device, Path(tmp)))
                timer, batch_tokens = run(trainer, args.warmup, cuda)
                times = timer.wall if cuda else timer.cpu
                timed = batch_tokens[args.warmup:args.warmup + len(times)]
                seconds[name] += sum(times)
                tokens[name] += sum(timed)
                steps[name] += len(times)
                line.append(f"{name} {sum(timed) / sum(times):,.0f} tokens/s")
            print(f"round {round_ + 1}: {', '.join(line)}", flush=True)

    rate = {name: tokens[name] / seconds[name] for name in TRAINERS}
    for name in TRAINERS:
        print(f"{name:8s} steps={steps[name]:4d} tokens={tokens[name]:7d} {'wall' if cuda else 'cpu'}_s={seconds[name]:8.2f} "
              f"tokens/s={rate[name]:10,.0f} ms/step={1000 * seconds[name] / steps[name]:7.1f}")
    print(f"tokens_per_s_vs_trl={rate['knowtune'] / rate['trl']:.2f}")


if __name__ == "__main__":
    main()
