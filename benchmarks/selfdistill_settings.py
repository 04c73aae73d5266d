"""Self-distillation settings against forgetting: the sweep behind docs/study.md's table.

Kaplan, Gekhman et al. (arXiv 2604.15574, 2026) report lambda = 1 and tau = 0.5 and leave
the tau^2 factor, the KL direction, the token mask and the teacher's training open. This
script trains self-distillation with each setting below on the mixture of a finished study
that has a ``compare_methods:`` section (``knowtune demo --methods``), with the study's own
training settings, evaluation sets and categories, and judges each run exactly as the
finding ``selfdistill_reduces_forgetting`` does, against the study's SFT and Known-only
(``filtered``) runs. Runs are resumable (``knowtune.train.sft.train_model``) and go to
``STUDY/selfdistill-settings/<name>``.

    knowtune demo --methods --out knowtune-methods
    python benchmarks/selfdistill_settings.py --study knowtune-methods [--workers 2] [--only tau1 paper]

One line per setting (teacher test EM at epoch 0, best new-fact learning, held-out points lost
beyond the Known-only run by SFT / self-distillation at the same new-fact level, and their
ratio); last line ``paper_ratio=<x> methods_yaml_ratio=<y>`` (the paper's settings, and
those of ``knowtune/study/methods.yaml``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

#: name -> (teacher format-stage epochs, temperature, tau^2 factor, KL tokens, direction)
SETTINGS = {
    "paper": (1, 0.5, True, "answer", "forward"),
    "paper_sequence": (1, 0.5, True, "sequence", "forward"),
    "teacher3": (3, 0.5, True, "answer", "forward"),
    "teacher3_sequence": (3, 0.5, True, "sequence", "forward"),
    "teacher3_no_t2": (3, 0.5, False, "answer", "forward"),
    "teacher3_no_t2_sequence": (3, 0.5, False, "sequence", "forward"),
    "teacher3_reverse": (3, 0.5, True, "answer", "reverse"),
    "tau1": (3, 1.0, True, "answer", "forward"),
}


def _selfdistill(name: str) -> dict:
    epochs, tau, t2, tokens, direction = SETTINGS[name]
    return {"format_stage_epochs": epochs, "temperature": tau, "scale_by_t2": t2, "kl_tokens": tokens, "direction": direction}


def _ratio(value: float | None) -> str:
    return "inf" if value is None else f"{value:.2f}"  # None: self-distillation lost nothing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished study with compare_methods (sft and filtered)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=None)
    args = parser.parse_args(argv)

    from knowtune.config import load_config
    from knowtune.data import load_examples
    from knowtune.errors import KnowtuneError
    from knowtune.study import workers
    from knowtune.study.config import StudyConfig
    from knowtune.study.methods import MethodRun, compare, selfdistill_reduces_forgetting
    from knowtune.study.pipeline import Study
    from knowtune.train.callbacks import read_metrics

    study = Study(load_config(StudyConfig, args.study / "config.yaml"), log=lambda _: None)
    study.open()
    compare_config = study.config.compare_methods
    if compare_config is None or not {"sft", "filtered"} <= set(study.state.methods or {}):
        raise KnowtuneError(f"{args.study}: no finished compare_methods with sft and filtered", fix="run `knowtune demo --methods` first")
    variant = compare_config.variants()["sft"]
    examples = load_examples(args.study / "variants" / study.variant_index()[variant]["train"])
    splits, categories = study.eval_splits(), study.categories()
    names = args.only or list(SETTINGS)
    out = args.study / "selfdistill-settings"
    jobs = []
    for name in names:
        overrides = {"method": "selfdistill", "selfdistill": _selfdistill(name)}
        config = compare_config.model_copy(update={"overrides": {"selfdistill": overrides}}).train_config("selfdistill", study.config.train)
        jobs.append(workers.TrainJob(name, config, study.config.model, splits.with_train(examples), categories, out / name))
    workers.train(jobs, args.workers, print, lambda name: print(f"{name} finished"))

    def run(method: str, directory: Path) -> MethodRun:
        return MethodRun(method, variant, read_metrics(directory / "metrics.jsonl"))

    baseline = [run("sft", args.study / study.state.methods["sft"].dir), run("filtered", args.study / study.state.methods["filtered"].dir)]
    ratios = {}
    for name in names:
        sd = run("selfdistill", out / name)
        finding = selfdistill_reduces_forgetting(compare([*baseline, sd]))
        best = max(p["new_facts"] or 0.0 for p in compare([sd])["curves"]["selfdistill"] if p["epoch"] >= 1)
        lost = re.search(r"SFT \(epoch \d+\) loses ([\d.]+) .* self-distillation \(epoch \d+\) ([\d.]+)", finding["detail"])
        ratios[name] = finding["value"]
        epochs, tau, t2, tokens, direction = SETTINGS[name]
        print(f"{name:24s} teacher {epochs} ep (test EM at epoch 0 {100 * sd.metrics[0]['test/exact_match']:.0f}%)  tau {tau}  "
              f"tau^2 {'yes' if t2 else 'no '}  KL on {tokens:8s} {direction:7s}  best new facts {best:.0f}%  "
              f"lost SFT / SD {lost.group(1)} / {lost.group(2)}  ratio {_ratio(finding['value'])}")
    summary = [f"{key}_ratio={_ratio(ratios[name])}" for key, name in (("paper", "paper"), ("methods_yaml", "tau1")) if name in ratios]
    print(" ".join(summary))


if __name__ == "__main__":
    main()
