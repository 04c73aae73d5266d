"""Where a knowtune-pretrained model's MaybeKnown facts come from (docs/world.md, "Toward the paper's MaybeKnown share").

    python benchmarks/maybeknown.py --annotations AUDIT_DIR --model MODEL_DIR
    python benchmarks/maybeknown.py --margins --model MODEL_DIR [--facts 40]
    python benchmarks/maybeknown.py --write-sample audit900.jsonl

The audit sample of docs/world.md's MaybeKnown tables (``--write-sample``): the embedded default's 360 dev
facts (for the exemplars), then 900 of its train facts drawn with ``random.Random(0)``. Audit it with
``knowtune annotate --model MODEL_DIR --data audit900.jsonl --split train --out AUDIT_DIR``, then
``knowtune models exposure-check --annotations AUDIT_DIR --model MODEL_DIR``.

The first form splits a finished `knowtune annotate` run's train facts by the model's exposure record
(``exposures.jsonl``): clean or contested (a distractor object in the corpus) x exposures per pass, and prints the
share of each SliCK category per cell (``knowtune models exposure-check`` gives the overall rho).
The second asks the model, for contested facts of 8+ exposures and clean facts of 3-10, log P(gold) - log P(other)
(teacher-forced; other: the distractor, else a random object of the relation) under 10 random four-shot ``Q:``/``A:``
prompts of dev exemplars, and prints its mean and its standard deviation across the prompts: how far the
exemplars move a fact's margin.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
from pathlib import Path

import torch

from knowtune.data.loaders import save_examples
from knowtune.data.splits import load_splits
from knowtune.models import DEFAULT_MODEL_DIR, load
from knowtune.pretrain import load_exposures
from knowtune.slick.categories import CATEGORIES
from knowtune.world.embedded import load_embedded_world

BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 40), (41, None))


def bucket(exposures: int) -> str:
    return next(f"{lo}-{hi}" if hi is not None else f"{lo}+" for lo, hi in BUCKETS if exposures >= lo and (hi is None or exposures <= hi))


def categories_by_cell(annotations: Path, exposures: dict[str, dict]) -> None:
    records = [json.loads(line) for line in (annotations / "annotations.jsonl").read_text().splitlines()]
    records = [r for r in records if r["id"] in exposures and r["split"] == "train"]
    cells: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        item = exposures[r["id"]]
        kind = "contested" if item.get("distractor_exposures") else "clean"
        cells[(kind, "all")][r["category"]] += 1
        cells[(kind, bucket(item["exposures"]))][r["category"]] += 1
    print(f"{len(records)} audited train facts; share of each category per cell")
    print(f"{'cell':>22} {'n':>5} " + " ".join(f"{c:>11}" for c in CATEGORIES))
    order = ["all"] + [bucket(lo) for lo, _ in BUCKETS]
    for kind, b in sorted(cells, key=lambda cell: (cell[0], order.index(cell[1]))):
        counts = cells[(kind, b)]
        n = sum(counts.values())
        print(f"{kind + ' ' + b:>22} {n:5d} " + " ".join(f"{counts[c] / n:11.2f}" for c in CATEGORIES))


def prompt_margins(model_dir: str, exposures: dict[str, dict], facts: int) -> None:
    model, tokenizer = load(model_dir)
    world = load_embedded_world()
    dev: dict[str, list] = {}
    for ex in world.examples:
        if ex.split == "dev":
            dev.setdefault(ex.relation, []).append(ex)
    rng = random.Random(0)

    def logp(prompt: str, answer: str) -> float:
        head = tokenizer(prompt)["input_ids"]
        tail = tokenizer(" " + answer + "\n", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = torch.log_softmax(model(torch.tensor([head + tail])).logits[0, :-1].float(), -1)
        return sum(logits[len(head) - 1 + i, token].item() for i, token in enumerate(tail))

    train = [ex for ex in world.examples if ex.split == "train" and ex.relation in dev]
    rng.shuffle(train)
    groups = {
        "contested": [ex for ex in train if exposures[ex.id].get("distractor") and exposures[ex.id]["exposures"] + exposures[ex.id]["distractor_exposures"] >= 8],
        "clean 3-10": [ex for ex in train if not exposures[ex.id].get("distractor") and 3 <= exposures[ex.id]["exposures"] <= 10],
    }
    for kind, group in groups.items():
        spreads = []
        for ex in group[:facts]:
            other = exposures[ex.id].get("distractor") or rng.choice(dev[ex.relation]).answers[0]
            margins = []
            for _ in range(10):
                shots = "".join(f"Q: {e.question}\nA: {e.answers[0]}\n" for e in rng.sample(dev[ex.relation], 4))
                prompt = f"{shots}Q: {ex.question}\nA:"
                margins.append(logp(prompt, ex.answers[0]) - logp(prompt, other))
            spreads.append(statistics.stdev(margins))
            print(f"{kind} exposures={exposures[ex.id]['exposures']} distractor={exposures[ex.id]['distractor_exposures']} "
                  f"margin={statistics.mean(margins):.2f} sd_across_prompts={spreads[-1]:.2f}")
        print(f"{kind}: median sd across prompts {statistics.median(spreads):.2f} nats over {len(spreads)} facts")


def write_sample(path: Path, size: int, seed: int) -> None:
    splits = load_splits("embedded")
    train = {ex.id: ex for ex in splits.train}
    chosen = random.Random(seed).sample([ex.id for ex in splits.train], size)
    save_examples(list(splits.dev) + [train[i] for i in chosen], path)
    print(f"{path}: {size} train facts (seed {seed}) and {len(splits.dev)} dev facts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a knowtune-pretrained model directory, or `default`")
    parser.add_argument("--annotations", type=Path, help="a knowtune annotate output directory")
    parser.add_argument("--margins", action="store_true", help="print the prompt-to-prompt spread of fact margins")
    parser.add_argument("--facts", type=int, default=40)
    parser.add_argument("--write-sample", type=Path, metavar="OUT.jsonl", help="write the audit sample the world.md tables use")
    parser.add_argument("--sample-size", type=int, default=900)
    parser.add_argument("--sample-seed", type=int, default=0)
    args = parser.parse_args()
    if args.write_sample:
        write_sample(args.write_sample, args.sample_size, args.sample_seed)
    if not args.model:
        if args.annotations or args.margins:
            parser.error("--annotations and --margins need --model")
        return
    torch.set_num_threads(1)
    exposures = load_exposures(DEFAULT_MODEL_DIR if args.model == "default" else args.model)
    if args.annotations:
        categories_by_cell(args.annotations, exposures)
    if args.margins:
        prompt_margins(args.model, exposures, args.facts)


if __name__ == "__main__":
    main()
