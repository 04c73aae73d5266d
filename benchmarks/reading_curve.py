"""How many reading lessons does the default architecture need before it reads? (docs/world.md, "Reading lessons")

Trains a freshly initialised model of the default's shape (``PretrainConfig``: hidden 128, 4
layers, 4 heads, FFN 512) on nothing but reading lessons (:mod:`knowtune.world.reading`), each
seen once, and every ``--every`` steps asks 300 fresh lessons (invented subjects, instruction
form, another seed) from their own passages, greedily. ``--packed``: lessons joined by EOS in
128-token blocks of 16, as ``knowtune pretrain`` packs renewed lessons
(``corpus.reading_renew``); otherwise 32 lessons a step, each its own sequence. AdamW at
``--lr`` with ``--beta2``, 100 warm-up steps, cosine to 10%. One line per evaluation:
``step=<n> lessons=<seen> loss=<x> fresh_lesson_em=<x>``.

    .venv/bin/python benchmarks/reading_curve.py [--world DIR] [--steps 1000] [--packed] [--beta2 0.999]
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import set_seed

from knowtune.pretrain import PretrainConfig, build_model, lesson_tokens, train_tokenizer
from knowtune.world.embedded import resolve_world
from knowtune.world.reading import fresh_lesson_exact_match, reading_lessons

SEQ_LEN, PACKED_BATCH, DOCUMENT_BATCH = 128, 16, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="embedded", help="the world whose relations and names the lessons recombine")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--packed", action="store_true", help="EOS-joined lessons in 128-token blocks (knowtune pretrain's packing)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beta2", type=float, default=0.95)
    args = parser.parse_args()
    torch.set_num_threads(1)

    world = resolve_world(args.world)
    per_step = PACKED_BATCH * SEQ_LEN // 30 if args.packed else DOCUMENT_BATCH  # lessons are ~30-50 tokens
    lessons = reading_lessons(world, per_step * args.steps, 2, seed="curve", qa_weight=0.5, instruction_weight=0.5)
    tokenizer = train_tokenizer(lessons[:20000], 4096)
    set_seed(0)
    model = build_model(PretrainConfig(), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, args.beta2))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    if args.packed:
        stream = lesson_tokens(lessons, tokenizer)
        ends = [i for i, token in enumerate(stream) if token == tokenizer.eos_token_id]
        blocks = torch.tensor(stream[: len(stream) // SEQ_LEN * SEQ_LEN]).view(-1, SEQ_LEN)
        if len(blocks) < PACKED_BATCH * args.steps:
            raise SystemExit(f"{len(blocks)} blocks rendered, {PACKED_BATCH * args.steps} needed; lessons are longer than assumed")
    for step in range(args.steps):
        if args.packed:
            ids = blocks[step * PACKED_BATCH : (step + 1) * PACKED_BATCH]
            loss = model(input_ids=ids, labels=ids).loss
            seen = sum(1 for end in ends if end < (step + 1) * PACKED_BATCH * SEQ_LEN)
        else:
            batch = [[tokenizer.bos_token_id, *tokenizer(text)["input_ids"], tokenizer.eos_token_id]
                     for text in lessons[step * DOCUMENT_BATCH : (step + 1) * DOCUMENT_BATCH]]
            width = max(map(len, batch))
            ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in batch])
            labels = torch.tensor([row + [-100] * (width - len(row)) for row in batch])
            loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
            seen = (step + 1) * DOCUMENT_BATCH
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                em = fresh_lesson_exact_match(model, tokenizer, world, 300, seed="curve-test")
            model.train()
            print(f"step={step + 1} lessons={seen} loss={loss.item():.3f} fresh_lesson_em={em:.3f}", flush=True)


if __name__ == "__main__":
    main()
