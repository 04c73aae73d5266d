"""``knowtune data ...``: inspect QA datasets without writing anything, and index one as a retrieval store."""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app
from knowtune.data import SPLITS, QAExample, apply_filters, load_examples, load_relation_templates
from knowtune.data.filters import FilterReport

data_app = typer.Typer(help="Validate and inspect QA datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

TEMPLATES_NAME = "relation_query_templates.json"
SplitChoice = Enum("SplitChoice", {name: name for name in SPLITS}, type=str)  # --split choices
QUESTION_FIELD = typer.Option(None, "--question-field", help="Record key holding the question [question].")
ANSWER_FIELD = typer.Option(None, "--answer-field", help="Record key holding the gold answer(s) [answers, or answer].")
RELATION_FIELD = typer.Option(None, "--relation-field", help="Record key holding the relation [relation].")
SPLIT_FIELD = typer.Option(None, "--split-field", help="Record key holding the split [split].")
ID_FIELD = typer.Option(None, "--id-field", help="Record key holding the example id [id].")


@data_app.command("check")
def check(
    path: Path = typer.Argument(..., help="A .jsonl/.json/.parquet/.csv/.tsv file, a `datasets` save_to_disk folder, hf:NAME (cached), or an EntityQuestions folder (docs/data.md)."),
    split: Optional[SplitChoice] = typer.Option(None, "--split", help="Count only this split (filters still see every split)."),
    drop_multi_answer: bool = typer.Option(False, "--drop-multi-answer", help="Drop examples with more than one gold answer (as the paper does)."),
    drop_test_overlap: bool = typer.Option(False, "--drop-test-overlap", help="Drop train examples whose subject is also a test subject (as the paper does)."),
    templates: Optional[Path] = typer.Option(None, "--templates", help=f"Relation question templates; default: {TEMPLATES_NAME} inside PATH when it is a folder."),
    question_field: Optional[str] = QUESTION_FIELD,
    answer_field: Optional[str] = ANSWER_FIELD,
    relation_field: Optional[str] = RELATION_FIELD,
    split_field: Optional[str] = SPLIT_FIELD,
    id_field: Optional[str] = ID_FIELD,
    model: Optional[str] = typer.Option(None, "--model", help="Also check that every question and answer fits this model's context (a directory, a cached hub id, or default)."),
) -> None:
    """Validate a dataset and print its examples per relation and split; write nothing.

    Bad input stops with the file, the line and the fix (exit status 2); with --model, so does an
    example too long for the model's context.
    """
    from knowtune.data.formats import DataFields

    fields = DataFields(question=question_field, answer=answer_field, relation=relation_field, split=split_field, id=id_field)
    examples = load_examples(path, fields=fields)
    if model is not None:
        from knowtune.validate import check_lengths, check_model

        directory, tokenizer = check_model(model)
        check_lengths(examples, tokenizer, directory, answers=True, data=str(path))
    relation_templates = _templates(path, templates) if drop_test_overlap else None
    kept, report = apply_filters(examples, multi_answer=drop_multi_answer, test_overlap=drop_test_overlap, templates=relation_templates)
    if split is not None:
        kept = [example for example in kept if example.split == split.value]
    console = Console()
    scope = f" in the {split.value} split" if split else ""
    console.print(f"{path}: {len(examples)} valid examples; {len(kept)} kept{scope}", soft_wrap=True, highlight=False)
    console.print(_counts_table(kept, splits=(split.value,) if split else SPLITS))
    if report.steps:
        console.print(_filter_table(report))


@data_app.command("store")
def store(
    path: str = typer.Argument(..., help="A dataset (as for `data check`), or `embedded`: its facts become the store's passages."),
    out: Path = typer.Option(..., "--out", help="The store directory to write (new or empty)."),
    split: Optional[SplitChoice] = typer.Option(None, "--split", help="Index only this split [every split]."),
    relations: Optional[str] = typer.Option(None, "--relations", help="A knowtune world (`embedded` or a directory with relations.json) whose statement templates phrase the passages [PATH's own, when it is a world]."),
    question_field: Optional[str] = QUESTION_FIELD,
    answer_field: Optional[str] = ANSWER_FIELD,
    relation_field: Optional[str] = RELATION_FIELD,
    split_field: Optional[str] = SPLIT_FIELD,
    id_field: Optional[str] = ID_FIELD,
) -> None:
    """Index a dataset's facts as a BM25 retrieval store, one passage per fact, for `evaluate --retrieval` and
    `train --retrieval` (docs/train.md). A knowtune world's facts are written as statements, others as `Q: ... A: ...`."""
    from knowtune.data.formats import DataFields
    from knowtune.errors import KnowtuneError
    from knowtune.retrieval import RetrievalStore, relation_specs
    from knowtune.world.embedded import resolve_data_path

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KnowtuneError(f"{out} exists and is not an empty directory", fix="pass a new --out directory")
    fields = DataFields(question=question_field, answer=answer_field, relation=relation_field, split=split_field, id=id_field)
    examples = load_examples(resolve_data_path(path), fields=fields)
    if split is not None:
        examples = [example for example in examples if example.split == split.value]
    specs = relation_specs(relations if relations is not None else path)
    if relations is not None and specs is None:
        raise KnowtuneError(f"--relations {relations}: not a knowtune world (no relations.json)", fix="pass `embedded` or a `knowtune world` directory")
    built = RetrievalStore.build(examples, specs, settings={"split": split.value if split else None, "relations": relations}, source={"data": str(path)})
    built.save_complete(out)
    Console(highlight=False).print(f"{out}: a retrieval store of {len(examples):,} passages ({built.record['passage_kind']})", soft_wrap=True)


def _templates(path: Path, templates: Path | None) -> dict[str, str] | None:
    if templates is not None:
        return load_relation_templates(templates)
    beside = path / TEMPLATES_NAME
    return load_relation_templates(beside) if path.is_dir() and beside.is_file() else None


def _counts_table(examples: list[QAExample], splits: tuple[str, ...]) -> Table:
    counts = Counter((example.relation, example.split) for example in examples)
    relations = sorted({relation for relation, _ in counts}, key=_relation_order)
    table = Table(title="examples per relation and split", show_footer=True)
    table.add_column("relation", footer="total")
    for split in splits:
        table.add_column(split, justify="right", footer=str(sum(counts[r, split] for r in relations)))
    table.add_column("total", justify="right", footer=str(len(examples)))
    for relation in relations:
        row = [counts[relation, split] for split in splits]
        table.add_row(relation, *map(str, row), str(sum(row)))
    return table


def _relation_order(relation: str) -> tuple[str, int, str]:
    """Wikidata ids in numeric order (P17 before P106), then every other name alphabetically."""
    digits = relation[1:]
    return (relation[0], int(digits), "") if relation[:1].isalpha() and digits.isdigit() else ("~", 0, relation)


def _filter_table(report: FilterReport) -> Table:
    table = Table(title="examples removed by each filter, in order")
    table.add_column("filter", no_wrap=True)
    for split in SPLITS:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    table.add_column("remaining", justify="right")
    for step in report.steps:
        per_split = [str(step.removed_by_split[split]) for split in SPLITS]
        table.add_row(step.name, *per_split, str(step.removed), str(step.remaining))
    return table
