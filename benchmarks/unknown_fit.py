"""What fitting Unknown examples does to a study's test answers, epoch by epoch (docs/world.md, "Why a reader's
accuracy rises while it fits Unknown examples").

    python benchmarks/unknown_fit.py --study STUDY_DIR
    python benchmarks/unknown_fit.py --study STUDY_DIR --probe WORK_DIR [--variant D_100]

The first form tabulates a finished ``knowtune study``'s training dynamics (``analysis.json``'s
``regression_points``, the points of the paper's regression): per variant and epoch, the share of Known and of
Unknown training examples fitted and the test and OOD exact match. These are the per-epoch columns quoted in
docs/world.md's reading tables.

The second fine-tunes the study's base model again on one variant (``knowtune train`` with that run's saved
config, one checkpoint per epoch, into WORK_DIR; reused when it is there) and answers, at the base model and at
each epoch's checkpoint, the test facts the study evaluates (the same seeded sample of ``max_eval_examples``).
Per epoch it prints the exact match, the share of answers that are the answer of some training example of the
variant (a memorised Unknown target given to an unrelated test question: a hallucination the fit put there),
the number of distinct answers, the exact match among the other answers, the share of answers that are an object of
the question's relation (the answer of some fact of that relation in the study's data), and the answer given most
often with its count.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

import torch

from knowtune.data.loaders import load_examples
from knowtune.evaluate import evaluate_examples
from knowtune.matching import normalize_answer
from knowtune.models import load
from knowtune.task import load_task
from knowtune.train.callbacks import eval_subset

PROBED_EPOCHS = (0, 1, 2, 3, 4, 6, 8, 12)


def dynamics_table(study: Path) -> None:
    points = json.loads((study / "analysis.json").read_text())["regression_points"]
    print(f"{'variant':>10} {'epoch':>5} {'known fit':>9} {'unknown fit':>11} {'test EM':>7} {'OOD EM':>6}")
    for p in points:
        print(f"{p['variant']:>10} {p['epoch']:>5} {p['known']:>9.3f} {p['unknown']:>11.3f} {p['test']:>7.1f} {p['ood']:>6.1f}")


def probe(study: Path, variant: str, work: Path) -> None:
    run = study / "runs" / variant
    run_record = json.loads((run / "run.json").read_text())
    base = Path(run_record["base_model"])
    config = run_record["config"]
    train_file = study / "variants" / variant / "train.jsonl"
    out = work / variant
    if not (out / "model").is_dir():
        subprocess.run([sys.executable, "-m", "knowtune", "train", "--config", str(run / "config.yaml"), "--model", str(base),
                        "--data", str(train_file), "--save-every-epoch", "--no-eval-every-epoch", "--out", str(out)], check=True)
    task = load_task(run / "task.yaml")
    facts = load_examples(study / "data" / "examples.jsonl")
    test = eval_subset([ex for ex in facts if ex.split == "test"], config["max_eval_examples"], config["seed"])
    trained = {normalize_answer(a, task.match) for ex in load_examples(train_file) for a in ex.answers}
    relation_objects = {(ex.relation, normalize_answer(a, task.match)) for ex in facts for a in ex.answers}
    steps_per_epoch = min(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    checkpoints = {0: base} | {int(p.name.split("-")[1]) // steps_per_epoch: p for p in (out / "checkpoints").iterdir()}
    _, tokenizer = load(base)
    print(f"{variant}: {len(test)} test facts, {len(trained)} distinct training answers")
    print(f"{'epoch':>5} {'test EM':>7} {'a training answer':>17} {'distinct answers':>16} {'EM of the others':>16} "
          f"{'relation objects':>16}  most repeated answer")
    for epoch in sorted(e for e in checkpoints if e in PROBED_EPOCHS):
        model, _ = load(checkpoints[epoch])
        result = evaluate_examples(model, tokenizer, test, task=task, batch_size=256)
        answers = [normalize_answer(p.prediction, task.match) for p in result.predictions]
        memorised = [a in trained for a in answers]
        others = [p.correct for p, m in zip(result.predictions, memorised, strict=True) if not m]
        of_relation = sum((p.relation, a) in relation_objects for p, a in zip(result.predictions, answers, strict=True))
        (top, count), = collections.Counter(p.prediction for p in result.predictions).most_common(1)
        print(f"{epoch:>5} {100 * result.exact_match:>7.1f} {sum(memorised) / len(answers):>17.3f} {len(set(answers)):>16} "
              f"{100 * sum(others) / max(1, len(others)):>16.1f} {of_relation / len(answers):>16.3f}  {count} x {top!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished `knowtune study` output directory")
    parser.add_argument("--probe", type=Path, help="work directory for the per-epoch re-run and its answers")
    parser.add_argument("--variant", default="D_100", help="the variant re-run with --probe")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.probe is None:
        dynamics_table(args.study)
    else:
        probe(args.study, args.variant, args.probe)


if __name__ == "__main__":
    main()
