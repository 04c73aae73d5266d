"""``knowtune serve``: llama.cpp's ``llama-server`` for a knowtune model (build it, start it).

``knowtune serve build`` compiles ``llama-server`` into knowtune's cache (once);
``knowtune serve llama-server --model default`` exports the model to GGUF (cached) and runs
the server in the foreground; ``knowtune annotate --backend openai --base-url URL`` audits
through it (docs/serving.md).
"""

from __future__ import annotations

from typing import Optional

import typer

from knowtune.cli import app, err_console

serve_app = typer.Typer(help="Serve a model with llama.cpp's llama-server for `--backend openai` (docs/serving.md).", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("build")
def build_command(jobs: int = typer.Option(2, "--jobs", "-j", help="Parallel compile jobs.")) -> None:
    """Build llama-server (CPU) from the llama.cpp that llama-cpp-python's sdist vendors; print its path (last line).

    Cached in $KNOWTUNE_CACHE_DIR (default ~/.cache/knowtune); needs cmake, make, a C++ compiler and PyPI.
    """
    from knowtune.serving.llama import build_llama_server

    typer.echo(str(build_llama_server(jobs=jobs, log=lambda line: err_console.print(line, highlight=False))))


@serve_app.command("llama-server", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def llama_server_command(
    ctx: typer.Context,
    model: str = typer.Option("default", "--model", help="A model directory, a cached hub id, or `default` (exported to GGUF once, cached)."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="Serve this GGUF file instead of exporting --model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    parallel: int = typer.Option(4, "--parallel", help="Slots: requests decoded together, and the most samples (n) per request."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: llama.cpp's choice)."),
    build: bool = typer.Option(True, "--build/--no-build", help="Build llama-server first if it is not in the cache."),
) -> None:
    """Run llama-server for --model on HOST:PORT in the foreground (Ctrl-C stops it).

    Arguments after the options go to llama-server unchanged (e.g. `-- --api-key-file FILE`).
    """
    import os

    from knowtune.errors import KnowtuneError
    from knowtune.serving.llama import build_llama_server, llama_server_command as command_line, llama_server_path, model_gguf

    binary = build_llama_server(log=lambda line: err_console.print(line, highlight=False)) if build else llama_server_path()
    if not binary.is_file():
        raise KnowtuneError(f"{binary}: llama-server is not built", fix="run `knowtune serve build` (or drop --no-build)")
    path = gguf or str(model_gguf(model))
    alias = model if gguf is None else None
    command = command_line(binary, path, host=host, port=port, parallel=parallel, threads=threads, alias=alias) + list(ctx.args)
    err_console.print(f"serving {path} at http://{host}:{port}/v1 ({parallel} slots): " + " ".join(command), highlight=False, soft_wrap=True)
    os.execv(command[0], command)
