"""Hand-made per-epoch metric records, shaped like ``knowtune train``'s ``metrics.jsonl``."""

from __future__ import annotations

from knowtune.study.analysis import Run


def record(epoch: int, *, dev: float | None = 0.4, test: float = 0.4, ood: float | None = 0.3, known: tuple[int, int] = (0, 0),
           unknown: tuple[int, int] = (0, 0), answered: float = 1.0, accuracy_answered: float | None = None,
           per_category: dict[str, float] | None = None) -> dict:
    """One evaluation: ``known``/``unknown`` are (fitted, total) training examples; rates are fractions."""
    n = known[1] + unknown[1]
    rec = {"epoch": epoch, "step": 10 * epoch, "dev/exact_match": dev, "test/exact_match": test, "ood/exact_match": ood,
           "test/answer_rate": answered, "test/accuracy_answered": (test / answered if answered else None) if accuracy_answered is None else accuracy_answered,
           "train/n": n, "train/exact_match": (known[0] + unknown[0]) / n if n else None,
           "train/correct/Known": known[0], "train/n/Known": known[1], "train/correct/Unknown": unknown[0], "train/n/Unknown": unknown[1],
           "train/exact_match/Known": known[0] / known[1] if known[1] else None,
           "train/exact_match/Unknown": unknown[0] / unknown[1] if unknown[1] else None}
    for category, value in (per_category or {}).items():
        rec[f"test/exact_match/{category}"] = value
    return rec


def ratio_run(ratio: int, tests: list[float], devs: list[float], *, size: int = 100, kind: str = "ratio", name: str | None = None,
              unknown_fit: list[float] | None = None, known_fit: list[float] | None = None, answered: float = 1.0,
              accuracy_answered: list[float] | None = None) -> Run:
    """A D_X run whose epoch e has test accuracy ``tests[e]`` and dev accuracy ``devs[e]`` (epoch 0 included)."""
    n_unk = round(size * ratio / 100)
    n_kn = size - n_unk
    epochs = len(tests)
    known_fit = known_fit or [min(1.0, 0.5 + 0.5 * e) for e in range(epochs)]
    unknown_fit = unknown_fit or [min(1.0, 0.25 * e) for e in range(epochs)]
    metrics = [record(e, dev=devs[e], test=tests[e], ood=tests[e] - 0.1, known=(round(known_fit[e] * n_kn), n_kn),
                      unknown=(round(unknown_fit[e] * n_unk), n_unk), answered=answered,
                      accuracy_answered=None if accuracy_answered is None else accuracy_answered[e])
               for e in range(epochs)]
    return Run(name=name or f"D_{ratio}", kind=kind, metrics=metrics, ratio=ratio, size=size, params={"ratio": ratio})


def default_model_study(*, train: int, samples: int, size: int, epochs: int, max_eval: int, **sections) -> dict:
    """A miniature study config of the default model: a seeded sample of the embedded world (``train`` facts per
    relation, 10 dev and 10 test), D_50 against its Known-only run, plus any further ``sections``."""
    return {
        "model": "default", "data": "embedded", "seed": 0, "device": "cpu", "train_variants": ["D_50"],
        "sample": {"train": train, "dev": 10, "test": 10},
        "annotate": {"mode": "lazy", "n_samples": samples, "splits": ["train", "test"]},
        "curate": {"unknown_ratios": [50], "size": size, "size_split": "equal", "variants": ["ratio", "known"]},
        "train": {"epochs": epochs, "learning_rate": 3e-4, "batch_size": 8, "max_eval_examples": max_eval,
                  "prompt_template": "Answer the following question. {question}", "answer_prefix": " "},
        "compare_methods": {"mixture": 50, "methods": ["sft", "filtered"]},
        **sections,
    }


def mini_key_overlap(sizes: list[int] | None = None) -> dict:
    """``key_overlap:`` settings for a miniature experiment: two key types, tiny worlds, a tiny model (seconds)."""
    return {
        "sizes": sizes or [10, 12], "relations": ["works_at", "born_in"], "workers": 1,
        "pretrain": {"vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "seq_len": 32,
                     "batch_size": 8, "epochs": 25, "learning_rate": 6e-3, "warmup_steps": 5, "save_every_steps": 10_000,
                     "corpus": {"never_seen_share": 0.0, "conflict_share": 0.0, "min_exposures": 30, "max_exposures": 30}},
        "finetune": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "eval_every_epoch": False, "max_eval_examples": None},
    }
