"""The ``knowtune`` command line: thin typer commands that wire library pieces."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from knowtune import __version__
from knowtune.errors import EXIT_USAGE, KnowtuneError

app = typer.Typer(
    name="knowtune",
    help="Fine-tune language models without teaching them to hallucinate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"knowtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fine-tune language models without teaching them to hallucinate."""


def _register() -> None:
    # Each module adds its commands to ``app``; imported here so ``knowtune --help`` lists them.
    from knowtune.cli import commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app (click reports usage errors with exit 2); a
    :class:`KnowtuneError` becomes a message on stderr and exit status 2, no traceback."""
    _register()
    try:
        app(args=argv, prog_name="knowtune")
    except KnowtuneError as error:
        err_console.print(f"[bold red]error:[/] {error.render()}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
