"""``knowtune study``, ``knowtune report`` and ``knowtune demo``: the controlled study of Gekhman
et al. (EMNLP 2024) end to end, its report, and the study on the embedded default."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from knowtune.cli import app, err_console
from knowtune.cli.options import with_config_flags
from knowtune.study.config import StudyConfig
from knowtune.study.keys import KeyOverlapConfig

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


def _run(settings, report: bool) -> Path | None:
    """Run the study (and the report); print stages and findings; return the study dir or the report page
    (None on the other ranks of a launcher, which print nothing)."""
    from contextlib import nullcontext

    from knowtune.io import command_name
    from knowtune.report.build import build_report
    from knowtune.study import launch
    from knowtune.study.pipeline import run_study
    from knowtune.train import distributed
    from knowtune.validate import preflight_study

    preflight_study(settings)
    launch.start(settings)  # under accelerate launch / torchrun: every rank runs the study (docs/study.md, Several GPUs)
    started = time.perf_counter()
    with distributed.output_lock(settings.out, command_name(), device=settings.resolved().train.device) if settings.out else nullcontext():
        result = run_study(settings, log=_log if distributed.is_main() else lambda _: None)
    if not distributed.is_main():
        return None
    console.print("stages: " + ", ".join(f"{name} {status}" for name, status in result["stages"].items()), highlight=False)
    print_findings(result["analysis"]["findings"])
    if not report:
        return Path(result["out"])
    page = build_report(result["out"])
    _log(f"study and report in {time.perf_counter() - started:.0f} s")
    return page


def _echo(path: Path | None) -> None:
    if path is not None:  # the main process's result, printed once
        typer.echo(str(path))


@app.command("study")
@with_config_flags(StudyConfig, exclude=["annotate.model", "annotate.data", "annotate.out", "curate.annotations", "curate.data", "curate.out"],
                   commas=["annotate.relations", "train_variants"], panels=True)
def study_command(
    config: Optional[Path] = typer.Option(None, "--config", help="study.yaml: model, data, out, train_variants and annotate:/curate:/train: sections."),
    report: bool = typer.Option(False, "--report/--no-report", help="Also write the report (STUDY_DIR/report)."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """Annotate, curate, train every variant, evaluate and analyse (Gekhman et al. 2024): see docs/study.md.

    Every StudyConfig key is a flag, sections' keys prefixed by the section: --train-epochs, --annotate-n-ex,
    --train-selfdistill-teacher; flags override --config.
    """
    from knowtune.config import load_config

    settings = load_config(StudyConfig, config, overrides, flags)
    _echo(_run(settings, report))


@app.command("report")
def report_command(
    directory: Path = typer.Argument(..., help="A finished `knowtune study` directory, or a `knowtune annotate` output directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Study: report directory [STUDY_DIR/report]. Audit: the page [AUDIT_DIR/audit.html]."),
) -> None:
    """Write the report (last line: the page): a study's page, PNGs and results.json, or one audit's page."""
    import json

    from knowtune.report.audit_page import write_audit_page
    from knowtune.report.build import build_report

    if (directory / "annotations.jsonl").is_file() or (directory / "protocol.json").is_file():
        typer.echo(str(write_audit_page(directory, out)))
        return
    page = build_report(directory, out)
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
    from knowtune.study.config import METHODS_CONFIG, demo_config_path

    path = demo_config_path(METHODS_CONFIG) if methods else demo_config_path()
    out = out or Path("knowtune-methods" if methods else "knowtune-demo")
    settings = load_config(StudyConfig, path, {"out": str(out), "device": device})
    _echo(_run(settings, report=True))


@app.command("keys")
@with_config_flags(KeyOverlapConfig)
def keys_command(
    config: Optional[Path] = typer.Option(None, "--config", help="keys.yaml: the key_overlap settings (docs/mechanism.md); defaults without it."),
    out: Path = typer.Option(Path("knowtune-keys"), "--out", help="Output directory; rerunning skips finished cells."),
    overrides: Optional[dict] = None,
    flags: Optional[dict] = None,
) -> None:
    """The key-overlap experiment alone (Kaplan, Gekhman et al. 2026): name-like against random entity keys.

    Every key_overlap key is a flag (--sizes 100,200, --finetune-epochs 10); flags override --config.
    Prints one line per cell and the finding; the last line is OUT/summary.json.
    """
    from knowtune.config import load_config
    from knowtune.study.keys import SUMMARY_FILE, run_key_overlap

    settings = load_config(KeyOverlapConfig, config, overrides, flags)
    summary = run_key_overlap(settings, out, log=_log)
    print_findings([summary["finding"]])
    typer.echo(str(out / SUMMARY_FILE))
