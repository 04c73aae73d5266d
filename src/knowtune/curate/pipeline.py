"""``knowtune curate``: build every requested variant in memory, validate, then write them.

Output layout (``out``)::

    variants.json              index of the variants (written last)
    config.yaml                the resolved CurateConfig
    <variant>/train.jsonl      QAExample records (category, p0, ps in metadata)
    <variant>/manifest.json    counts per category, relation and relation x category,
                               size, seed, source, config and provenance
    <variant>/retrieval/       with ``route_unknown: retrieval``: the variant's Unknown examples
                               as a BM25 store (:mod:`knowtune.retrieval`) instead of training data

Nothing is written until every variant has been built and checked, and each file is
written atomically, so an error leaves ``out`` as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer

from knowtune.config import StageConfig, save_config
from knowtune.curate.annotated import AnnotatedExample, annotation_source, load_annotated
from knowtune.curate.variants import (
    SizeSplit,
    filter_unknown,
    natural_sample,
    relabel_unknown,
    single_category_sets,
    unknown_ratio_variants,
)
from knowtune.errors import KnowtuneError
from knowtune.slick.categories import CATEGORIES

VariantKind = Literal["ratio", "known", "single", "natural", "idk", "filtered"]
VARIANT_KINDS: tuple[str, ...] = ("ratio", "known", "single", "natural", "idk", "filtered")
INDEX_FILE = "variants.json"
RETRIEVAL_DIR = "retrieval"

_DESCRIPTIONS = {
    "ratio": "|D| examples, {ratio}% Unknown taken per relation (fixed relation mix)",
    "known": "D_{ratio} with its Unknown examples dropped",
    "single": "only {category} examples, per relation as many as in every D_X",
    "natural": "|D| examples drawn uniformly from all annotated examples (natural category and relation mix)",
    "idk": "D_{ratio} with the answers of its Unknown examples replaced by {phrase!r}",
    "filtered": "every annotated example of the split except the Unknown ones",
}


class CurateConfig(StageConfig):
    """Settings of ``knowtune curate`` (YAML keys = CLI flags with ``-`` for ``_``)."""

    annotations: str | None = None
    """Output dir of `knowtune annotate` (annotations.jsonl)."""
    data: str | None = None
    """The annotated dataset, joined by id (needed when records lack question/answers)."""
    out: str | None = None
    """Output dir: one folder per variant plus variants.json."""
    split: Literal["train", "dev", "test", "all"] = "train"
    """Which annotated split to curate from: train, dev, test or all."""
    unknown_ratios: list[int] = Field(default_factory=lambda: [0, 25, 50, 75, 100])
    """Percentages of Unknown of the D_X variants (comma-separated or repeated)."""
    size: int | None = Field(default=None, ge=1)
    """|D| of every fixed-size variant; default: the paper's rule (per relation its smallest category, summed)."""
    size_split: SizeSplit = "paper"
    """How |D| is split over relations: paper (in proportion to the paper rule) or equal."""
    seed: int = 0
    """Seed of every draw."""
    idk_phrase: str = "I don't know"
    """Answer that replaces Unknown answers in D_IDK."""
    idk_base_ratio: int = Field(default=50, ge=0, le=100)
    """D_IDK relabels D_X for this X."""
    variants: list[VariantKind] = Field(default_factory=lambda: list(VARIANT_KINDS), min_length=1)
    """Kinds to build: ratio, known, single, natural, idk, filtered (comma-separated or repeated)."""
    route_unknown: Literal["train", "retrieval"] = "train"
    """Where Unknown examples go: train (into the variants) or retrieval (each variant's Unknown examples to its own BM25 store, <variant>/retrieval)."""

    @field_validator("unknown_ratios")
    @classmethod
    def _ratios(cls, value: list[int]) -> list[int]:
        bad = [r for r in value if not 0 <= r <= 100]
        if bad:
            raise ValueError(f"ratios are percentages between 0 and 100, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("a ratio is listed twice")
        return value

    @field_validator("variants")
    @classmethod
    def _unique_kinds(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a variant kind is listed twice")
        return value

    @field_validator("idk_phrase")
    @classmethod
    def _phrase(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the phrase is blank")
        return value

    @model_serializer(mode="wrap")
    def _without_default_route(self, handler) -> dict[str, Any]:
        """The record without ``route_unknown: train`` (added later), so saved configs and study stage keys stay as they were."""
        record = handler(self)
        if record.get("route_unknown") == "train":
            del record["route_unknown"]
        return record


@dataclass
class Variant:
    """One curated training set: its name, kind, examples and the parameters that made it."""

    name: str
    kind: str
    examples: list[AnnotatedExample]
    params: dict[str, Any] = field(default_factory=dict)
    routed: list[AnnotatedExample] = field(default_factory=list)
    """Unknown examples routed to the variant's retrieval store (``route_unknown: retrieval``)."""

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self.kind].format(**self.params)


def select_split(examples: Sequence[AnnotatedExample], split: str) -> list[AnnotatedExample]:
    """The examples of ``split`` (``all``: every example); none is an error naming the splits present."""
    chosen = list(examples) if split == "all" else [e for e in examples if e.split == split]
    if not chosen:
        present = sorted({e.split for e in examples})
        raise KnowtuneError(f"no annotated example is in the {split!r} split (splits present: {', '.join(present)})",
                            fix="pass --split with one of those, or --split all")
    return chosen


def build_variants(examples: Sequence[AnnotatedExample], config: CurateConfig) -> list[Variant]:
    """Every variant ``config.variants`` asks for, from the examples of ``config.split``; raises before writing anything."""
    pool = select_split(examples, config.split)
    kinds = set(config.variants)
    sizing = {"size": config.size, "seed": config.seed, "size_split": config.size_split}
    ratios = list(config.unknown_ratios) if kinds & {"ratio", "known"} else []
    if "idk" in kinds and config.idk_base_ratio not in ratios:
        ratios.append(config.idk_base_ratio)
    by_ratio = unknown_ratio_variants(pool, ratios, **sizing) if ratios else {}
    variants: list[Variant] = []
    if "ratio" in kinds:
        variants += [Variant(f"D_{x}", "ratio", by_ratio[x], {"ratio": x}) for x in config.unknown_ratios]
    if "known" in kinds:  # D_Known_0 would equal D_0 and D_Known_100 be empty
        variants += [Variant(f"D_Known_{x}", "known", filter_unknown(by_ratio[x]), {"ratio": x}) for x in config.unknown_ratios if 0 < x < 100]
    if "single" in kinds:
        sets = single_category_sets(pool, **sizing)
        variants += [Variant(f"D_{c}", "single", sets[c], {"category": c}) for c in CATEGORIES]
    if "natural" in kinds:
        variants.append(Variant("D_Natural", "natural", natural_sample(pool, config.size, config.seed)))
    if "idk" in kinds:
        x = config.idk_base_ratio
        variants.append(Variant(f"D_IDK_{x}", "idk", relabel_unknown(by_ratio[x], config.idk_phrase), {"ratio": x, "phrase": config.idk_phrase}))
    if "filtered" in kinds:
        variants.append(Variant("D_Filtered", "filtered", filter_unknown(pool)))
    empty = [v.name for v in variants if not v.examples]
    if empty:
        raise KnowtuneError(f"these variants would hold no examples: {', '.join(empty)}",
                            fix="drop them from --variants / --unknown-ratios, or annotate more data")
    return variants


def route_unknown(variants: Sequence[Variant], pool: Sequence[AnnotatedExample]) -> tuple[list[Variant], list[dict[str, str]]]:
    """Move each variant's Unknown examples from its training set to ``routed`` (its retrieval store);
    D_Filtered, which never held them, routes every Unknown example of ``pool`` (the curated split).

    Variants left without training examples (D_100, D_Unknown) and D_IDK (its Unknown answers
    would be relabelled, not retrieved) are not built; they are returned as ``{name, reason}``."""
    kept, skipped = [], []
    for variant in variants:
        known = filter_unknown(variant.examples)
        if variant.kind == "idk":
            skipped.append({"name": variant.name, "reason": "its Unknown examples go to retrieval, so there is nothing to relabel"})
        elif not known:
            skipped.append({"name": variant.name, "reason": "it holds only Unknown examples, all routed to retrieval"})
        else:
            unknown = pool if variant.kind == "filtered" else variant.examples
            kept.append(Variant(variant.name, variant.kind, known, variant.params, [e for e in unknown if not e.known]))
    if not kept:
        raise KnowtuneError("with --route-unknown retrieval no variant keeps a training example",
                            fix="add variant kinds or ratios with Known examples (e.g. --variants ratio --unknown-ratios 50)")
    return kept, skipped


def counts(examples: Sequence[AnnotatedExample]) -> dict[str, Any]:
    """Examples per category, per relation and per relation x category, and the Unknown share."""
    by_pair = Counter((e.relation, e.category) for e in examples)
    relations = sorted({e.relation for e in examples})
    per_category = Counter(e.category for e in examples)
    return {
        "per_category": {c: per_category[c] for c in CATEGORIES},
        "per_relation": {r: sum(by_pair[r, c] for c in CATEGORIES) for r in relations},
        "per_relation_category": {r: {c: by_pair[r, c] for c in CATEGORIES} for r in relations},
        "unknown_share": per_category["Unknown"] / len(examples) if examples else 0.0,
    }


def write_variants(variants: Sequence[Variant], out: str | Path, config: CurateConfig, source: dict[str, Any],
                   skipped: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """Write each variant's ``train.jsonl``, its chat exports (:mod:`knowtune.curate.export`),
    ``manifest.json`` and retrieval store (when it routed examples), then ``config.yaml`` and the index; return the index."""
    from knowtune.curate.export import write_chat_exports
    from knowtune.io import atomic_write_json, atomic_write_jsonl
    from knowtune.provenance import provenance

    out = Path(out)
    blocked = [p for p in (out, *(out / v.name for v in variants)) if p.exists() and not p.is_dir()]
    if blocked:
        raise KnowtuneError(f"{blocked[0]} exists and is not a directory", fix="pass another --out, or move that file away")
    settings = config.model_dump(mode="json")
    record = provenance(settings, seed=config.seed, source=source)
    prepared = [(v, [e.to_record() for e in v.examples], _manifest(v, config, settings, source, record)) for v in variants]
    stores = _retrieval_stores(variants, config, settings, source)
    for variant, records, manifest in prepared:
        atomic_write_jsonl(out / variant.name / "train.jsonl", records)
        write_chat_exports(variant.examples, out / variant.name)
        if variant.name in stores:
            stores[variant.name].save(out / variant.name / RETRIEVAL_DIR)
        atomic_write_json(out / variant.name / "manifest.json", manifest)
    save_config(config, out / "config.yaml")
    index = {
        "variants": [
            {"name": v.name, "kind": v.kind, "size": len(v.examples), "unknown_share": m["counts"]["unknown_share"],
             "train": f"{v.name}/train.jsonl", "chat": f"{v.name}/chat.jsonl", "chat_parquet": f"{v.name}/chat.parquet", "manifest": f"{v.name}/manifest.json", "description": v.description,
             **({"retrieval": f"{v.name}/{RETRIEVAL_DIR}", "routed": len(v.routed)} if v.name in stores else {})}
            for v, _, m in prepared
        ],
        **({"route_unknown": config.route_unknown, "skipped": list(skipped)} if config.route_unknown != "train" else {}),
        "seed": config.seed, "source": source, "config": settings, "provenance": record,
    }
    atomic_write_json(out / INDEX_FILE, index)
    return index


def _retrieval_stores(variants: Sequence[Variant], config: CurateConfig, settings: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The BM25 store of each variant's routed examples (passages from the world's statement templates when --data is a world)."""
    routed = [v for v in variants if v.routed]
    if not routed:
        return {}
    from knowtune.retrieval import RetrievalStore, relation_specs

    relations = relation_specs(config.data)
    return {v.name: RetrievalStore.build(v.routed, relations, settings=settings, source={**source, "variant": v.name}) for v in routed}


def _manifest(variant: Variant, config: CurateConfig, settings: dict[str, Any], source: dict[str, Any],
              record: dict[str, Any]) -> dict[str, Any]:
    manifest = {
        "name": variant.name, "kind": variant.kind, "description": variant.description, "params": variant.params,
        "size": len(variant.examples), "seed": config.seed, "split": config.split, "counts": counts(variant.examples),
    }
    if variant.kind == "idk":
        manifest["relabelled"] = sum(e.category == "Unknown" for e in variant.examples)
    if variant.routed:
        manifest["retrieval"] = {"path": RETRIEVAL_DIR, "routed": len(variant.routed), "counts": counts(variant.routed)}
    manifest.update({"source": source, "config": settings, "provenance": record})
    return manifest


def run_curate(config: CurateConfig) -> dict[str, Any]:
    """Load the annotations, build and validate every variant, then write them; returns the index."""
    if not config.annotations:
        raise KnowtuneError("no annotation directory given", fix="pass --annotations DIR (the --out of `knowtune annotate`)")
    if not config.out:
        raise KnowtuneError("no output directory given", fix="pass --out DIR")
    from knowtune.data.loaders import _garbage_collection_paused  # curation makes no reference cycles either

    from knowtune.io import OutputLock, command_name

    with _garbage_collection_paused():
        examples = load_annotated(config.annotations, config.data)
        variants = build_variants(examples, config)
        variants, skipped = route_unknown(variants, select_split(examples, config.split)) if config.route_unknown == "retrieval" else (variants, [])
        source = {**annotation_source(config.annotations), "data": config.data, "annotated_examples": len(examples), "split": config.split}
        with OutputLock(config.out, command_name()):
            return write_variants(variants, config.out, config, source, skipped)
