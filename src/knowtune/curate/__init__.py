"""Curation: the training-set variants of the controlled study (Gekhman et al., EMNLP 2024,
arXiv 2405.05904, section 3) from the SliCK categories that ``knowtune annotate`` wrote.

:mod:`.annotated` reads the annotations, :mod:`.variants` draws the variants (size rule,
Unknown share per relation, single-category sets, D_Natural, "I don't know" relabelling),
:mod:`.pipeline` validates and writes them. See docs/curate.md.
"""

from knowtune.curate.annotated import AnnotatedExample, annotation_source, load_annotated
from knowtune.curate.pipeline import VARIANT_KINDS, CurateConfig, Variant, build_variants, counts, run_curate, select_split, write_variants
from knowtune.curate.variants import (
    Shortfall,
    filter_unknown,
    largest_remainder,
    natural_sample,
    paper_sizes,
    relabel_unknown,
    relation_sizes,
    single_category_sets,
    unknown_count,
    unknown_ratio_variants,
)

__all__ = [
    "VARIANT_KINDS",
    "AnnotatedExample",
    "CurateConfig",
    "Shortfall",
    "Variant",
    "annotation_source",
    "build_variants",
    "counts",
    "filter_unknown",
    "largest_remainder",
    "load_annotated",
    "natural_sample",
    "paper_sizes",
    "relabel_unknown",
    "relation_sizes",
    "run_curate",
    "select_split",
    "single_category_sets",
    "unknown_count",
    "unknown_ratio_variants",
    "write_variants",
]
