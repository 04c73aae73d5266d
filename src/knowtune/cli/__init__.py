"""The ``knowtune`` command line: thin typer commands that wire library pieces."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import sys
import threading

import typer
from rich.console import Console
from rich.text import Text

from knowtune import __version__
from knowtune.errors import EXIT_USAGE, KnowtuneError

app = typer.Typer(
    name="knowtune",
    help="Fine-tune language models without teaching them to hallucinate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True, markup=False)  # messages quote user values: "[1, 2]" is no style tag


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"knowtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fine-tune language models without teaching them to hallucinate."""


#: The module that registers each top-level command. A command's flags are generated from its
#: config model (:mod:`knowtune.cli.options`), which imports the stage's library code: only the
#: module of the command being run is imported; every one for ``knowtune --help``.
COMMAND_MODULES = {
    "annotate": "annotate", "curate": "curate", "data": "data", "pretrain": "models", "models": "models", "world": "world",
    "train": "train", "evaluate": "evaluate", "study": "study", "report": "study", "demo": "study", "keys": "study",
    "diff": "diff", "serve": "serve",
}


def _register(argv: list[str] | None = None) -> None:
    """Import the command module of the command in ``argv`` (each adds its commands to ``app``), or all of them."""
    import importlib.util

    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    module = COMMAND_MODULES.get(words[0]) if words else None
    if module is not None and importlib.util.find_spec(f"knowtune.cli.{module}") is not None:
        importlib.import_module(f"knowtune.cli.{module}")
    else:
        from knowtune.cli import commands  # noqa: F401


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds the command (output locks released, worker processes
    killed, the batch in flight dropped) past click, which would turn a KeyboardInterrupt into exit 1."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


#: OS errors of the storage, not of knowtune: a full disk or quota, a file-size limit, a read-only file system.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
#: The same errors as the Rust and C++ writers of safetensors and torch.save word them (they raise no OSError).
_STORAGE_PHRASES = tuple(os.strerror(code) for code in sorted(_STORAGE_ERRNOS)) + ("os error 28",)
#: torch.save's zip writer loses the OS error of a failed write and reports only this.
_TORCH_WRITE_FAILURE = ("PytorchStreamWriter failed", "inline_container.cc")


def _storage_error(error: BaseException) -> str | None:
    """The message for a write that the storage refused (disk full, read-only), else None."""
    text = str(error)
    if isinstance(error, sqlite3.OperationalError):
        if "disk is full" not in text and "readonly database" not in text and "disk I/O error" not in text:
            return None
        where = "a results database"
    elif isinstance(error, OSError) and error.errno is not None:
        if error.errno not in _STORAGE_ERRNOS:
            return None
        text, where = error.strerror or text, error.filename or "a file"
    elif any(phrase in text for phrase in _STORAGE_PHRASES):
        where = "a model file"
    elif any(phrase in text for phrase in _TORCH_WRITE_FAILURE):
        text = f"torch.save could not finish the file ({text.strip()}), as it reports a full disk or a refused write"
        where = "a checkpoint"
    else:
        return None
    return (f"writing {where} failed: {text}. Everything stored before is kept.\n"
            "Fix: free disk space (or write to another --out), then rerun the same command to resume.")


def _print_error(label: str, message: str) -> None:
    """``label`` in bold red, then ``message`` as written (no rich markup: it quotes config values and paths)."""
    err_console.print(Text.assemble((label, "bold red"), " ", message), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app (click reports usage errors with exit 2); a
    :class:`KnowtuneError` becomes a message on stderr and exit status 2, no traceback.
    SIGINT and SIGTERM stop the command cleanly with status 128 + the signal (130, 143)."""
    # transformers 5 and datasets draw a progress bar per model load and save; knowtune prints its own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _register(argv)
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in handled}
    try:
        app(args=argv, prog_name="knowtune")
    except KnowtuneError as error:
        _print_error("error:", error.render())
        sys.exit(EXIT_USAGE)
    except Exception as error:  # a refused write surfaces as OSError, sqlite3, safetensors or torch errors
        message = _storage_error(error)
        if message is None:
            raise
        _print_error("error:", message)
        sys.exit(EXIT_USAGE)
    except Interrupted as stop:
        words = (argv if argv is not None else sys.argv[1:])[:1]
        _print_error("stopped", f"by {signal.Signals(stop.signum).name}: knowtune {' '.join(words)} kept every result it had "
                     "stored and dropped the work in flight.\nTo resume: rerun the same command.")
        sys.exit(128 + stop.signum)
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
