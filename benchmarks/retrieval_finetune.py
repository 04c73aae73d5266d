"""The retrieval route's measures of fine-tuned runs, or of the base model, on a finished study (docs/train.md,
"Fine-tuning with passages").

    python benchmarks/retrieval_finetune.py --study STUDY_DIR --run RUN_DIR [--run RUN_DIR ...]
    python benchmarks/retrieval_finetune.py --study STUDY_DIR --base MODEL

STUDY_DIR is a finished `knowtune study` with `compare_methods` and `retrieval_route` (its Unknown store in
``retrieval/variants/D_X/retrieval``, its audit and its data sample). Each RUN_DIR is a `knowtune train` output,
asked with its own task (``task.yaml``): the store's Unknown facts closed-book and with their top 1 / 2 passages,
and the held-out HighlyKnown test facts of the study's evaluation sample closed-book and with the top 2 passages
(distractors for them), as :mod:`knowtune.study.retrieval_route` measures. ``--base`` asks the base model the
Unknown facts zero-shot and 4-shot in the audit's ``Q:``/``A:`` format. One line per run:
``run=<dir> unknown_closed=<%> unknown_k1=<%> unknown_k2=<%> heldout=<n> heldout_closed=<%> heldout_k2=<%>``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from knowtune.data import load_examples
from knowtune.evaluate import evaluate_examples
from knowtune.models import load
from knowtune.retrieval import RetrievalStore, retrieval_contexts
from knowtune.task import TaskSpec
from knowtune.train.callbacks import eval_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path)
    parser.add_argument("--run", action="append", default=[], type=Path, help="a knowtune train output directory (repeatable)")
    parser.add_argument("--base", help="also ask this base model zero-shot and 4-shot")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = yaml.safe_load((args.study / "config.yaml").read_text())
    store_dir = next((args.study / "retrieval" / "variants").glob("D_*/retrieval"))
    store = RetrievalStore.load(store_dir)
    unknown = load_examples(store_dir / "examples.jsonl")
    categories = {r["id"]: r["category"] for r in map(json.loads, (args.study / "audit" / "annotations.jsonl").read_text().splitlines())}
    sample = load_examples(args.study / "data" / "examples.jsonl")
    relations = {ex.relation for ex in unknown}
    test = eval_subset([ex for ex in sample if ex.split == "test" and ex.relation in relations], config["train"]["max_eval_examples"], config["seed"])
    held_out = [ex for ex in test if categories.get(ex.id) == "HighlyKnown"]

    def em(model, tokenizer, examples, k=0, **options) -> float:
        contexts = retrieval_contexts(store, examples, k) if k else None
        return 100 * evaluate_examples(model, tokenizer, examples, contexts=contexts, **options).overall.exact_match

    print(f"store {store_dir}: {len(store.passages)} Unknown facts; held-out HighlyKnown test facts: {len(held_out)}")
    if args.base:
        from knowtune.slick.protocol import AnnotateConfig

        model, tokenizer = load(args.base)
        audit = AnnotateConfig.model_validate(yaml.safe_load((args.study / "audit" / "config.yaml").read_text())).task_spec()
        pool = [ex for ex in sample if ex.split == audit.fewshot.exemplars_from]
        for shots in (0, audit.fewshot.k):
            options = {"task": audit.updated(k=shots), "fewshot": True, "seed": config["seed"], "exemplar_pool": pool}
            print(f"base={args.base} shots={shots} unknown_closed={em(model, tokenizer, unknown, **options):.1f} "
                  f"unknown_k1={em(model, tokenizer, unknown, 1, **options):.1f} unknown_k2={em(model, tokenizer, unknown, 2, **options):.1f}")
    for run in args.run:
        model, tokenizer = load(run / "model")
        task = TaskSpec.model_validate(yaml.safe_load((run / "task.yaml").read_text()))
        print(f"run={run} unknown_closed={em(model, tokenizer, unknown, task=task):.1f} unknown_k1={em(model, tokenizer, unknown, 1, task=task):.1f} "
              f"unknown_k2={em(model, tokenizer, unknown, 2, task=task):.1f} heldout={len(held_out)} "
              f"heldout_closed={em(model, tokenizer, held_out, task=task):.1f} heldout_k2={em(model, tokenizer, held_out, 2, task=task):.1f}")


if __name__ == "__main__":
    main()
