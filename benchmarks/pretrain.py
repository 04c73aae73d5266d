"""How long pretraining the default base model takes on this machine.

Times ``--steps`` optimiser steps of the default ``PretrainConfig`` (same model, batch and
sequence length, AdamW) on the embedded world's corpus, projects the full run's duration,
and compares it with the 15-minute budget of the issue. Last line:
``projected_s=<s> budget_s=900 projected_vs_budget=<ratio> tokens_per_s=<t>``.

    .venv/bin/python benchmarks/pretrain.py [--steps 60]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    from knowtune.pretrain import PackedBlocks, PretrainConfig, build_model, train_tokenizer
    from knowtune.world.corpus import assign_exposures, render_corpus
    from knowtune.world.embedded import load_embedded_world

    config = PretrainConfig()
    world = load_embedded_world()
    start = time.monotonic()
    documents = render_corpus(world, assign_exposures(world, config.corpus), config.corpus)
    tokenizer = train_tokenizer(documents, config.vocab_size)
    blocks = PackedBlocks(documents, tokenizer, config.seq_len)
    setup_s = time.monotonic() - start
    model = build_model(config, tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(0)
    warmup = 5
    for step in range(args.steps + warmup):
        if step == warmup:
            start = time.monotonic()
        index = torch.randint(len(blocks), (config.batch_size,), generator=generator)
        batch = blocks.blocks[index]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step_s = (time.monotonic() - start) / args.steps
    total_steps = int(-(-len(blocks) // config.batch_size) * config.epochs)
    projected = setup_s + total_steps * step_s
    tokens_per_s = config.batch_size * config.seq_len / step_s
    print(f"threads={torch.get_num_threads()} setup_s={setup_s:.1f} step_s={step_s:.3f} total_steps={total_steps}")
    print(f"projected_s={projected:.0f} budget_s=900 projected_vs_budget={projected / 900:.2f} tokens_per_s={tokens_per_s:.0f}")


if __name__ == "__main__":
    main()
