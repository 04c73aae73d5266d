"""``knowtune world``: inspect, slice, synthesise and render knowledge worlds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from knowtune.cli import app
from knowtune.cli.options import with_config_flags
from knowtune.config import load_config, save_config
from knowtune.world.corpus import CorpusConfig
from knowtune.world.entityquestions import EMBEDDED_SLICE, SliceSpec
from knowtune.world.synthetic import SyntheticWorldConfig

world_app = typer.Typer(help="Knowledge worlds: the embedded EntityQuestions slice, synthetic worlds, pretraining corpora.", no_args_is_help=True)
app.add_typer(world_app, name="world")
console = Console(markup=False)


@world_app.command("info")
def info(world: str = typer.Argument("embedded", help="A world directory, or `embedded`.")) -> None:
    """Relations (question template, OOD or not) and fact counts per split."""
    from knowtune.world.embedded import resolve_world
    from knowtune.world.spec import split_counts

    loaded = resolve_world(world)
    counts = split_counts(list(loaded.examples))
    table = Table(title=f"world {loaded.name}: {len(loaded.examples):,} facts")
    for column in ("relation", "question template", "OOD", "train", "dev", "test"):
        table.add_column(column, justify="right" if column in ("train", "dev", "test") else "left")
    for relation, spec in loaded.relations.items():
        c = counts.get(relation, {})
        table.add_row(relation, spec.question_template, "yes" if spec.ood else "", *(str(c.get(s, 0)) for s in ("train", "dev", "test")))
    console.print(table)


@world_app.command("path")
def path() -> None:
    """Print the embedded world's directory (EntityQuestions layout, usable as --data)."""
    from knowtune.world.embedded import EMBEDDED_DIR

    typer.echo(str(EMBEDDED_DIR))


@world_app.command("slice")
@with_config_flags(SliceSpec, defaults=EMBEDDED_SLICE, commas=["relations", "ood_relations"])
def slice_(
    source: Path = typer.Option(..., help="EntityQuestions root (holds relation_query_templates.json)."),
    out: Path = typer.Option(..., help="Directory to write the world to."),
    config: Optional[Path] = typer.Option(None, help="YAML with SliceSpec keys (default: the embedded slice's); flags override it."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Sample a world from EntityQuestions, with the paper's filters applied (every SliceSpec key is a flag)."""
    from knowtune.world.entityquestions import slice_entityquestions

    spec = load_config(SliceSpec, config, overrides, flags, base=EMBEDDED_SLICE)
    world = slice_entityquestions(source, spec)
    world.save(out)
    save_config(spec, out / "slice_config.yaml")
    console.print(f"wrote {len(world.examples):,} facts to {out}")


@world_app.command("synth")
@with_config_flags(SyntheticWorldConfig, aliases={"num_entities": ["--entities"]})
def synth(
    out: Path = typer.Option(..., help="Directory to write the world to."),
    config: Optional[Path] = typer.Option(None, help="YAML with SyntheticWorldConfig keys; flags override it."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Generate a synthetic world of invented entities (for tests and the key-overlap study; every key is a flag)."""
    from knowtune.world.synthetic import generate_synthetic_world

    settings = load_config(SyntheticWorldConfig, config, overrides, flags)
    world = generate_synthetic_world(settings)
    world.save(out)
    save_config(settings, out / "synthetic_config.yaml")
    console.print(f"wrote {len(world.examples):,} facts to {out}")


@world_app.command("corpus")
@with_config_flags(CorpusConfig)
def corpus(
    out: Path = typer.Option(..., help="Directory for corpus.txt and exposures.jsonl."),
    world: str = typer.Option("embedded", help="A world directory, or `embedded`."),
    config: Optional[Path] = typer.Option(None, help="YAML with CorpusConfig keys; flags override it."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Render the pretraining corpus with its exposure schedule (the ground truth)."""
    from knowtune.io import atomic_write_jsonl, atomic_write_text
    from knowtune.world.corpus import assign_exposures, render_corpus
    from knowtune.world.embedded import resolve_world

    settings = load_config(CorpusConfig, config, overrides, flags)
    loaded = resolve_world(world)
    schedule = assign_exposures(loaded, settings)
    documents = render_corpus(loaded, schedule, settings)
    atomic_write_text(out / "corpus.txt", "\n".join(documents) + "\n")
    atomic_write_jsonl(out / "exposures.jsonl", [item.to_record() for item in schedule])
    save_config(settings, out / "corpus_config.yaml")
    shown = sum(1 for item in schedule if item.exposures)
    console.print(f"{len(documents):,} corpus lines; {shown:,} of {len(schedule):,} facts shown; wrote {out}")
