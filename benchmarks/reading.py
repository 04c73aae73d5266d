"""Does a model knowtune pretrained read an answer from retrieved passages? (docs/world.md, "Reading lessons")

On the facts its corpus never showed (``exposures.jsonl``: no gold and no distractor line), a BM25
store of those facts' own passages (:class:`knowtune.retrieval.RetrievalStore`) is built, and the
model answers each question closed-book and with the top k = 1 and 2 passages before the
fine-tuning prompt, as ``knowtune evaluate --retrieval`` does. A model that reads answers from
the passage; one that does not scores as closed-book. It also answers 200 fresh reading lessons
(:mod:`knowtune.world.reading`: invented subjects, instruction form, a seed no pretraining uses)
from their own passages. Last line:
``heldout=<n> closed_em=<x> k1_em=<x> k2_em=<x> gold_in_top1=<x> k2_vs_closed=<EM points gained> fresh_lesson_em=<x> fresh_qa_lesson_em=<x>``
(the same lessons asked as ``Q:``/``A:`` pairs).

    .venv/bin/python benchmarks/reading.py --model DIR [--world embedded|DIR] [--limit 300]
"""

from __future__ import annotations

import argparse

import torch

from knowtune.evaluate import evaluate_examples
from knowtune.models import load
from knowtune.pretrain import load_exposures
from knowtune.retrieval import RetrievalStore, retrieval_contexts
from knowtune.world.embedded import resolve_world
from knowtune.world.reading import fresh_lesson_exact_match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model knowtune pretrained (its directory holds exposures.jsonl)")
    parser.add_argument("--world", default="embedded", help="the world it was pretrained on")
    parser.add_argument("--limit", type=int, default=None, help="questions asked (the first N never-seen facts by id)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    world = resolve_world(args.world)
    exposures = load_exposures(args.model)
    model, tokenizer = load(args.model)
    never = sorted((ex for ex in world.examples if exposures[ex.id]["exposures"] + exposures[ex.id]["distractor_exposures"] == 0),
                   key=lambda ex: ex.id)
    store = RetrievalStore.build(never, world.relations)
    asked = never[: args.limit] if args.limit else never
    closed = evaluate_examples(model, tokenizer, asked).overall.exact_match
    em, gold = {}, {}
    for k in (1, 2):
        contexts = retrieval_contexts(store, asked, k)
        em[k] = evaluate_examples(model, tokenizer, asked, contexts=contexts).overall.exact_match
        gold[k] = sum(ex.answers[0] in context for ex, context in zip(asked, contexts)) / len(asked)
    fresh = fresh_lesson_exact_match(model, tokenizer, world, 200, seed="benchmark")
    fresh_qa = fresh_lesson_exact_match(model, tokenizer, world, 200, seed="benchmark", form="qa")
    print(f"store: {len(never)} never-seen facts; gold passage in the top 1 / 2: {gold[1]:.3f} / {gold[2]:.3f}")
    print(f"heldout={len(asked)} closed_em={closed:.3f} k1_em={em[1]:.3f} k2_em={em[2]:.3f} gold_in_top1={gold[1]:.3f} "
          f"k2_vs_closed={100 * (em[2] - closed):+.1f} fresh_lesson_em={fresh:.3f} fresh_qa_lesson_em={fresh_qa:.3f}")


if __name__ == "__main__":
    main()
