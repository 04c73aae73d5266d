"""``knowtune study``, ``knowtune report`` and ``knowtune demo``: the controlled study of Gekhman
et al. (EMNLP 2024) end to end, its report, and the study on the embedded default."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from knowtune.cli import app, err_console

console = Console()


def _log(line: str) -> None:
    err_console.print(line, highlight=False, markup=False, soft_wrap=True)


def print_findings(findings: list[dict[str, Any]]) -> None:
    """One line per finding (verdict, name, value), its detail indented below."""
    console.print("findings:", highlight=False)
    for f in findings:
        verdict = {True: "[green]holds[/]        ", False: "[red]does not hold[/]", None: "[yellow]not tested[/]   "}[f["holds"]]
        value = "-" if f["value"] is None else f"{f['value']:.2f}"
        console.print(f"  {verdict} {f['name']} (value {value})", highlight=False)
        console.print(f"      {f['detail']}", highlight=False, markup=False, soft_wrap=True)


def _run(settings, report: bool) -> Path:
    """Run the study (and the report); print stages and findings; return the study dir or the report page."""
    from knowtune.report.build import build_report
    from knowtune.study.pipeline import run_study

    started = time.perf_counter()
    result = run_study(settings, log=_log)
    console.print("stages: " + ", ".join(f"{name} {status}" for name, status in result["stages"].items()), highlight=False)
    print_findings(result["analysis"]["findings"])
    if not report:
        return Path(result["out"])
    page = build_report(result["out"])
    _log(f"study and report in {time.perf_counter() - started:.0f} s")
    return page


@app.command("study")
def study_command(
    config: Optional[Path] = typer.Option(None, "--config", help="study.yaml: model, data, out, train_variants and annotate:/curate:/train: sections."),
    out: Optional[Path] = typer.Option(None, "--out", help="Study directory (overrides out: of the config); rerunning resumes."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model: a directory, a hub id, or `default`."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset with train/dev/test splits, or `embedded`."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every stage (sections may set their own)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda, for the audit and training."),
    report: bool = typer.Option(False, "--report/--no-report", help="Also write the report (STUDY_DIR/report)."),
) -> None:
    """Annotate, curate, train every variant, evaluate and analyse (Gekhman et al. 2024): see docs/study.md."""
    from knowtune.config import load_config
    from knowtune.study.config import StudyConfig

    overrides = {"out": str(out) if out else None, "model": model, "data": data, "seed": seed, "device": device}
    settings = load_config(StudyConfig, config, overrides)
    typer.echo(str(_run(settings, report)))


@app.command("report")
def report_command(
    study_dir: Path = typer.Argument(..., help="The directory of a finished `knowtune study`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report directory [STUDY_DIR/report]."),
) -> None:
    """Write the study's report: one self-contained HTML page, PNGs and results.json (last line: the page)."""
    import json

    from knowtune.report.build import build_report

    page = build_report(study_dir, out)
    results = json.loads((page.parent / "results.json").read_text(encoding="utf-8"))
    print_findings(results["findings"])
    typer.echo(str(page))


@app.command("demo")
def demo_command(
    out: Optional[Path] = typer.Option(None, "--out", help="Study directory (default knowtune-demo, or knowtune-methods with --methods); rerunning resumes."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda."),
    methods: bool = typer.Option(False, "--methods", help="Run the method comparison and mechanism study (Kaplan, Gekhman et al. 2026) instead."),
) -> None:
    """The study on the embedded world and default model (minutes on 2 CPU cores); ends with the report's path.

    Without options: Gekhman et al. 2024 (demo.yaml). With --methods: fine-tuning without forgetting (methods.yaml).
    """
    from knowtune.config import load_config
    from knowtune.study.config import METHODS_CONFIG, StudyConfig, demo_config_path

    path = demo_config_path(METHODS_CONFIG) if methods else demo_config_path()
    out = out or Path("knowtune-methods" if methods else "knowtune-demo")
    settings = load_config(StudyConfig, path, {"out": str(out), "device": device})
    typer.echo(str(_run(settings, report=True)))


@app.command("keys")
def keys_command(
    config: Optional[Path] = typer.Option(None, "--config", help="keys.yaml: the key_overlap settings (docs/mechanism.md); defaults without it."),
    out: Path = typer.Option(Path("knowtune-keys"), "--out", help="Output directory; rerunning skips finished cells."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Cells run at a time, each a single-threaded process."),
) -> None:
    """The key-overlap experiment alone (Kaplan, Gekhman et al. 2026): name-like against random entity keys.

    Prints one line per cell and the finding; the last line is OUT/summary.json.
    """
    from knowtune.config import load_config
    from knowtune.study.keys import SUMMARY_FILE, KeyOverlapConfig, run_key_overlap

    settings = load_config(KeyOverlapConfig, config, {"workers": workers})
    summary = run_key_overlap(settings, out, log=_log)
    print_findings([summary["finding"]])
    typer.echo(str(out / SUMMARY_FILE))
