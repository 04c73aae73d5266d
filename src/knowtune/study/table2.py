"""Training on one SliCK category at a time: the paper's Table 2 (Gekhman et al., EMNLP 2024, section 5).

Gekhman et al. fine-tune on sets of one fixed size that each hold a single SliCK category
(D_HighlyKnown, D_MaybeKnown, D_WeaklyKnown, D_Unknown) and on D_Natural (the data's own
category mix), and report test exact match overall and per test category at EARLY_STOP and
CONVERGENCE. Their result: D_MaybeKnown gives the best overall accuracy (43.6 at ES against
40.5 for D_HighlyKnown); the model needs MaybeKnown examples to handle MaybeKnown test facts.

With a ``table2:`` section the study curates these sets apart from its other variants, into
``OUT/table2/variants`` (``knowtune curate --variants single,natural``), because their size
is bounded by the rarest category: by default the paper's size rule, n_r = min over the four
categories of relation r's examples, |D| = sum_r n_r (docs/curate.md). Each set trains with the
study's ``train:`` settings (plus ``overrides``) into ``OUT/runs/table2/<set>``, evaluating the
training facts, dev (for EARLY_STOP) and in-distribution test facts every epoch; the OOD test
set is left out, as Table 2 has no OOD column.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from knowtune.config import StageConfig
from knowtune.curate.variants import SizeSplit
from knowtune.slick.categories import CATEGORIES
from knowtune.study.analysis import Run, category_table, es_conv

if TYPE_CHECKING:
    from knowtune.curate import CurateConfig
    from knowtune.study.pipeline import Study
    from knowtune.train.config import TrainConfig

Table2Variant = Literal["D_HighlyKnown", "D_MaybeKnown", "D_WeaklyKnown", "D_Unknown", "D_Natural"]
VARIANTS: tuple[str, ...] = ("D_HighlyKnown", "D_MaybeKnown", "D_WeaklyKnown", "D_Unknown", "D_Natural")
STAGE = "table2"
VARIANTS_DIR = Path("table2") / "variants"
RUNS_DIR = Path("runs") / "table2"
#: train: keys that change speed only, left out of the stage key.
_RUN_KEYS = {"device", "eval_batch_size", "report_to"}


class Table2Config(StageConfig):
    """The ``table2:`` section of a study config (docs/study.md, "Training on one category")."""

    variants: list[Table2Variant] = Field(default_factory=lambda: list(VARIANTS))
    """Sets trained: D_HighlyKnown, D_MaybeKnown, D_WeaklyKnown, D_Unknown, D_Natural."""
    size: int | None = Field(None, ge=1)
    """|D| of every set; default: the paper's rule (per relation, its smallest SliCK category)."""
    size_split: SizeSplit = "paper"
    """How size is split over relations: paper (in proportion to the smallest category) or equal."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """train: keys changed for these runs, e.g. {max_eval_examples: 600}."""

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[str]) -> list[str]:
        from knowtune.study.methods import distinct_choices

        return distinct_choices(value, "trains nothing; leave variants unset to train all of " + ", ".join(VARIANTS), "a set")

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The study's ``train:`` settings with ``overrides`` merged in (nested keys key by key); validated."""
        from knowtune.study.methods import merge_settings
        from knowtune.train.config import TrainConfig

        settings = base.model_dump(mode="json")
        merge_settings(settings, self.overrides)
        return TrainConfig.model_validate(settings)

    def curate_config(self, base: CurateConfig, out: Path) -> CurateConfig:
        """The study's curation (same audit, data, split and seed) building only the single-category
        sets and D_Natural, at this section's size, into ``out``."""
        return base.model_copy(update={"variants": ["single", "natural"], "size": self.size, "size_split": self.size_split,
                                       "route_unknown": "train", "out": str(out)})


def run_stage(study: Study) -> str:
    """Curate the sets, train each (``workers`` at a time; finished runs are kept); ``ran`` or ``skipped``."""
    from knowtune.provenance import config_hash

    config = study.config.table2
    curate = config.curate_config(study.config.curate_config(study.out, study.data_path), study.out / VARIANTS_DIR)
    train = config.train_config(study.config.train)
    splits = dataclasses.replace(study.eval_splits(), ood=())
    key = config_hash({"curate": curate.model_dump(mode="json", exclude={"annotations", "data", "out"}),
                       "train": train.model_dump(mode="json", exclude=_RUN_KEYS), "variants": config.variants,
                       "annotate": study.state.stages["annotate"].key, "eval": {n: [e.id for e in x] for n, x in splits.evaluation.items()}})
    done = all((study.out / RUNS_DIR / name / "provenance.json").is_file() for name in config.variants)

    def work() -> dict[str, Any]:
        from knowtune.curate import run_curate
        from knowtune.data import load_examples
        from knowtune.study import workers

        index = {entry["name"]: entry for entry in run_curate(curate)["variants"]}
        categories = study.categories()
        jobs = [workers.TrainJob(f"table2 {name}", train, study.config.model,
                                 splits.with_train(load_examples(study.out / VARIANTS_DIR / index[name]["train"])), categories,
                                 study.out / RUNS_DIR / name) for name in config.variants]
        workers.train(jobs, study.config.workers, study.log, lambda name: study.log(f"[{STAGE}] {name} finished"))
        return {"sizes": {name: index[name]["size"] for name in config.variants}}

    return study._stage(STAGE, key, done, work)


def load_runs(study_out: str | Path, variants: list[str]) -> list[Run]:
    """The trained sets' runs (metrics per epoch, size and kind from their curation manifests)."""
    from knowtune.train.callbacks import read_metrics

    out = Path(study_out)
    runs = []
    for name in variants:
        manifest = json.loads((out / VARIANTS_DIR / name / "manifest.json").read_text(encoding="utf-8"))
        runs.append(Run(name=name, kind=manifest["kind"], metrics=read_metrics(out / RUNS_DIR / name / "metrics.jsonl"),
                        size=manifest["size"], params=manifest.get("params", {})))
    return runs


def split_categories(annotations: str | Path, split: str) -> dict[str, int]:
    """SliCK category counts of the audited examples of ``split`` (what the sets are drawn from)."""
    counts: Counter[str] = Counter()
    with open(annotations, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if split == "all" or record["split"] == split:
                counts[record["category"]] += 1
    return {c: counts[c] for c in CATEGORIES}


def analyse_table2(runs: list[Run], per_relation: dict[str, int] | None = None, pool: dict[str, int] | None = None) -> dict[str, Any]:
    """Table 2 of the runs: per set, ES and CONV epochs and test accuracy overall and per category
    (:func:`knowtune.study.analysis.category_table`), each set's size, and the test questions per
    category behind each accuracy (``test_n``). ``per_relation`` (n_r) and ``pool`` (category counts
    of the curated split) say how large the data let the sets be."""
    results = es_conv(runs)
    last = {run.name: max(run.metrics, key=lambda r: r["epoch"]) for run in runs}
    some = next(iter(last.values()), {})
    return {
        "variants": results,
        "rows": [{**row, "size": run.size} for row, run in zip(category_table(results), runs)],
        "test_n": {"full": some.get("test/n"), **{c: some.get(f"test/n/{c}") for c in CATEGORIES}},
        "per_relation": per_relation,
        "pool": pool,
    }


def analysis_part(study: Study) -> dict[str, Any] | None:
    """``analysis.json``'s ``table2`` entry for a study with a ``table2:`` section, else None."""
    config = study.config.table2
    if config is None:
        return None
    runs = load_runs(study.out, config.variants)
    single = next((name for name in config.variants if name != "D_Natural"), None)  # every single set has the same n_r
    per_relation = None
    if single is not None:
        manifest = json.loads((study.out / VARIANTS_DIR / single / "manifest.json").read_text(encoding="utf-8"))
        per_relation = manifest["counts"]["per_relation"]
    pool = split_categories(study.out / "audit" / "annotations.jsonl", study.config.curate.split)
    return analyse_table2(runs, per_relation, pool)
