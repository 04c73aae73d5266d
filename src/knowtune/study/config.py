"""``StudyConfig``: the controlled study of Gekhman et al. (EMNLP 2024, arXiv 2405.05904) in one file.

A study names a model and a dataset, then nests the settings of each stage it runs:
``annotate:`` (:class:`~knowtune.slick.protocol.AnnotateConfig`), ``curate:``
(:class:`~knowtune.curate.CurateConfig`) and ``train:``
(:class:`~knowtune.train.config.TrainConfig`), plus which curated variants to train.
The study wires the paths between stages (``OUT/audit``, ``OUT/variants``, ``OUT/runs``),
so the sections must not set them. Every key is documented in docs/study.md.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from knowtune.config import StageConfig
from knowtune.curate import CurateConfig
from knowtune.slick.protocol import AnnotateConfig
from knowtune.study.keys import KeyOverlapConfig
from knowtune.study.methods import CompareMethodsConfig
from knowtune.study.retrieval_route import RetrievalRouteConfig
from knowtune.study.table2 import Table2Config
from knowtune.train.config import TrainConfig

#: Keys that the study sets in each section itself.
_WIRED = {"annotate": ("model", "data", "out"), "curate": ("annotations", "data", "out")}
#: Keys that may change between two runs of one study directory (speed or scope only).
RUN_KEYS = ("out", "device", "workers", "train_variants", "reaudit")
_SECTION_RUN_KEYS = {"annotate": ("device", "batch_size", "chunk_size"), "train": ("device", "eval_batch_size", "report_to")}
DEMO_CONFIG = "demo.yaml"
METHODS_CONFIG = "methods.yaml"


class SampleConfig(StageConfig):
    """A seeded sample of the dataset, per relation and split (None keeps the whole split): quick studies."""

    train: int | None = Field(None, ge=1)
    """Train examples kept per relation (all when unset)."""
    dev: int | None = Field(None, ge=1)
    """Dev examples kept per relation (all when unset)."""
    test: int | None = Field(None, ge=1)
    """Test examples kept per relation (all when unset)."""


class StudyConfig(StageConfig):
    """Settings of ``knowtune study`` (see docs/study.md)."""

    model: str = "default"
    """Base model: a directory, a hub id, or default."""
    data: str = "embedded"
    """Dataset with train/dev/test splits, or embedded."""
    out: str | None = None
    """Study directory; rerunning resumes."""
    dev: str | None = None
    """Dev examples from another dataset (its records default to split dev)."""
    test: str | None = None
    """Test examples from another dataset (its records default to split test)."""
    ood: str | None = None
    """OOD test examples; default: the test examples of relations absent from the training data."""
    seed: int | None = None
    """Seed of every stage (sections may set their own)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """auto, cpu or cuda, for the audit and training (sections may set their own)."""
    workers: int = Field(1, ge=1)
    """Processes run at a time (audit shards, training runs), each single-threaded."""
    train_variants: list[str] | None = None
    """Curated variants to train, in order; default: every one but D_Filtered."""
    sample: SampleConfig | None = None
    """Train on a seeded sample of the dataset per relation and split (quick studies)."""
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    """The audit's settings (annotate: section)."""
    curate: CurateConfig = Field(default_factory=CurateConfig)
    """The curation's settings (curate: section)."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The training settings of every variant (train: section)."""
    compare_methods: CompareMethodsConfig | None = None
    """Compare fine-tuning methods on one mixture (Kaplan, Gekhman et al. 2026)."""
    key_overlap: KeyOverlapConfig | None = None
    """Run the key-overlap experiment (Kaplan, Gekhman et al. 2026)."""
    reaudit: bool = False
    """Audit each trained variant's model at CONV (and ES, with train.save_best) on its training facts and as many held-out ones; the report shows the category transition matrices (costly)."""
    table2: Table2Config | None = None
    """Train the single-category sets D_HighlyKnown ... D_Unknown and D_Natural (the paper's Table 2)."""
    retrieval_route: RetrievalRouteConfig | None = None
    """Compare SFT on the compare_methods mixture with SFT on its Known facts plus retrieval of its Unknown ones, and retrieval alone."""

    @field_validator("train_variants")
    @classmethod
    def _variant_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty list trains nothing; leave train_variants unset to train every curated variant")
            if len(set(value)) != len(value):
                raise ValueError("a variant is listed twice")
        return value

    @model_validator(mode="after")
    def _sections_leave_paths_to_the_study(self) -> "StudyConfig":
        for section, keys in _WIRED.items():
            block = getattr(self, section)
            given = [k for k in keys if getattr(block, k) != type(block).model_fields[k].default]
            if given:
                raise ValueError(f"{section}.{given[0]} is set by the study itself (from the top-level model/data/out); "
                                 f"remove it from the {section}: section")
        return self

    @model_validator(mode="after")
    def _curation_builds_the_compared_variants(self) -> "StudyConfig":
        compare = self.compare_methods
        if compare is None:
            return self
        needs = {"ratio"} | ({"known"} if "filtered" in compare.methods else set()) | ({"idk"} if "idk" in compare.methods else set())
        missing = sorted(needs - set(self.curate.variants))
        if missing:
            raise ValueError(f"compare_methods needs the curated variant kinds {', '.join(missing)}: add them to curate.variants")
        if compare.mixture not in self.curate.unknown_ratios:
            raise ValueError(f"compare_methods.mixture {compare.mixture} is not in curate.unknown_ratios {self.curate.unknown_ratios}: add it")
        if "idk" in compare.methods and self.curate.idk_base_ratio != compare.mixture:
            raise ValueError(f"compare_methods.mixture is {compare.mixture} but curate.idk_base_ratio is {self.curate.idk_base_ratio}: make them equal")
        for method in compare.trained_methods():
            compare.train_config(method, self.train)
        return self

    @model_validator(mode="after")
    def _table2_and_retrieval_route_can_run(self) -> "StudyConfig":
        if self.retrieval_route is not None and (self.compare_methods is None or not {"sft", "filtered"} <= set(self.compare_methods.methods)):
            raise ValueError("retrieval_route compares with the compare_methods runs sft (D_X) and filtered (D_Known_X): "
                             "add a compare_methods: section whose methods include sft and filtered")
        if self.table2 is not None:
            self.table2.train_config(self.train)
        return self

    def resolved(self) -> "StudyConfig":
        """The config with the top-level ``seed`` and ``device`` copied into every section that did not set its own
        (``seed`` and ``workers`` into ``key_overlap``)."""
        updates: dict[str, Any] = {}
        keys = self.key_overlap
        if keys is not None:
            values = {"workers": self.workers} if "workers" not in keys.model_fields_set else {}
            if self.seed is not None and "seed" not in keys.model_fields_set:
                values["seed"] = self.seed
            updates["key_overlap"] = keys.model_copy(update=values)
        for section in ("annotate", "curate", "train"):
            block = getattr(self, section)
            values = {}
            if self.seed is not None and "seed" not in block.model_fields_set:
                values["seed"] = self.seed
            if self.device is not None and section != "curate" and "device" not in block.model_fields_set:
                values["device"] = self.device
            if values:
                updates[section] = block.model_copy(update=values)
        return self.model_copy(update=updates)

    @property
    def study_seed(self) -> int:
        """The seed recorded in provenance: the top-level one, else the training seed."""
        return self.seed if self.seed is not None else self.train.seed

    def annotate_config(self, out: Path, data: Path, relations: list[str]) -> AnnotateConfig:
        """The audit's config: the study's model on ``data``, writing to ``out/audit``; ``relations``
        (the relations with training examples) unless the section names its own."""
        update: dict[str, Any] = {"model": self.model, "data": str(data), "out": str(out / "audit")}
        if self.annotate.relations is None:
            update["relations"] = relations
        return self.annotate.model_copy(update=update)

    def curate_config(self, out: Path, data: Path) -> CurateConfig:
        """The curation's config, reading ``out/audit`` (joined to ``data``) and writing ``out/variants``."""
        return self.curate.model_copy(update={"annotations": str(out / "audit"), "data": str(data), "out": str(out / "variants")})

    def comparable(self) -> dict[str, Any]:
        """The settings that decide results (run keys left out): two runs of one study directory must agree on them."""
        dump = self.model_dump(mode="json", exclude=set(RUN_KEYS))
        for section, keys in _SECTION_RUN_KEYS.items():
            for key in keys:
                dump[section].pop(key, None)
        if self.key_overlap is not None:
            dump["key_overlap"] = self.key_overlap.comparable()
        return dump


def demo_config_path(name: str = DEMO_CONFIG) -> Path:
    """A shipped study YAML (``knowtune/study/demo.yaml`` by default, or ``methods.yaml``)."""
    return Path(str(resources.files("knowtune.study") / name))
