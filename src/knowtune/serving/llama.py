"""llama.cpp's ``llama-server`` for knowtune models: build it, feed it a GGUF, start it.

* :func:`build_llama_server` compiles ``llama-server`` (CPU) from the llama.cpp tree that PyPI's
  ``llama-cpp-python`` source distribution vendors, with CMake, and caches the binary outside
  any repository: ``$KNOWTUNE_CACHE_DIR`` (default ``${XDG_CACHE_HOME:-~/.cache}/knowtune``)
  ``/llama.cpp/<version>/bin/llama-server``. Needs ``cmake``, a C++17 compiler and ``make``
  (``apt-get install -y cmake g++ make``) and pip access to PyPI; about 20-40 minutes on 2 cores.
  ``$KNOWTUNE_LLAMA_SERVER`` points at a binary of one's own instead.
* :func:`model_gguf` exports a model to GGUF once (:mod:`knowtune.models.gguf`), cached by the
  model's fingerprint.
* :func:`llama_server_command` / :class:`LlamaServer` start it on one host and port and wait
  until its ``/health`` answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from knowtune.errors import KnowtuneError

LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp is built
_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",  # tuned to this machine: the cache is per machine
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # no web UI download: builds offline once the sdist is here
)


def cache_dir() -> Path:
    """knowtune's cache: ``$KNOWTUNE_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/knowtune``."""
    explicit = os.environ.get("KNOWTUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knowtune"


def llama_server_path(version: str = LLAMA_CPP_VERSION) -> Path:
    """Where the binary is: ``$KNOWTUNE_LLAMA_SERVER`` if set, else the cached build (which may not exist yet)."""
    explicit = os.environ.get("KNOWTUNE_LLAMA_SERVER")
    return Path(explicit) if explicit else cache_dir() / "llama.cpp" / version / "bin" / "llama-server"


def build_llama_server(version: str = LLAMA_CPP_VERSION, *, jobs: int = 2, log=print) -> Path:
    """The ``llama-server`` binary, built into the cache first if it is not there (see the module doc)."""
    target = llama_server_path(version)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    if os.environ.get("KNOWTUNE_LLAMA_SERVER"):
        raise KnowtuneError(f"KNOWTUNE_LLAMA_SERVER={target} is not an executable file", fix="point it at a llama-server binary, or unset it to build one")
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None]
    if missing or not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise KnowtuneError(f"building llama-server needs cmake, make and a C++ compiler; missing: {', '.join(missing) or 'a C++ compiler'}",
                            fix="install them (Debian/Ubuntu: apt-get install -y cmake g++ make), or set KNOWTUNE_LLAMA_SERVER to a built binary")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build.", dir=target.parent.parent) as work:
        source = _vendored_source(version, Path(work), log)
        build = Path(work) / "build"
        log(f"building llama-server {version} with {jobs} jobs (tens of minutes on a few cores)")
        _run(["cmake", "-S", str(source), "-B", str(build), *_CMAKE_FLAGS])
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)])
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copy2(build / "bin" / "llama-server", partial)
        partial.replace(target)  # atomic: a killed build leaves no half binary behind
    return target


def _vendored_source(version: str, work: Path, log) -> Path:
    """Download and unpack the llama-cpp-python sdist; its ``vendor/llama.cpp`` tree."""
    log(f"downloading the llama-cpp-python {version} source distribution (it vendors llama.cpp)")
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", str(work)])
    archives = sorted(work.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise KnowtuneError(f"pip did not download llama-cpp-python=={version}", fix="check access to PyPI (pip download llama-cpp-python)")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else archive.extractall(work)
    source = work / archives[0].name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise KnowtuneError(f"{archives[0].name} holds no vendor/llama.cpp tree", fix=f"use the default version {LLAMA_CPP_VERSION}")
    return source


def _run(command: list[str]) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-25:])
        raise KnowtuneError(f"`{' '.join(command[:4])} ...` failed (exit {result.returncode}):\n{tail}",
                            fix="see the output above; cmake >= 3.14 and a C++17 compiler are needed")


def model_gguf(model: str = "default", *, out: str | Path | None = None) -> Path:
    """The GGUF of ``model``: ``out`` if given (always written), else a cached export keyed by the model's fingerprint."""
    from knowtune.models import resolve_model_dir
    from knowtune.models.gguf import EXPORT_VERSION, export_gguf
    from knowtune.provenance import model_fingerprint

    if out is not None:
        return export_gguf(model, out)
    cached = cache_dir() / "gguf" / f"{model_fingerprint(resolve_model_dir(model))}-v{EXPORT_VERSION}.gguf"
    return cached if cached.is_file() else export_gguf(model, cached)


def llama_server_command(binary: str | Path, gguf: str | Path, *, host: str = "127.0.0.1", port: int = 8080, parallel: int = 4,
                         ctx_per_slot: int = 512, threads: int | None = None, alias: str | None = None) -> list[str]:
    """The ``llama-server`` command line: ``parallel`` slots (llama.cpp's cap on ``n``) of ``ctx_per_slot`` tokens each."""
    command = [str(binary), "-m", str(gguf), "--host", host, "--port", str(port), "--parallel", str(parallel),
               "--ctx-size", str(ctx_per_slot * parallel), "--no-webui"]
    if alias:
        command += ["--alias", alias]
    if threads:
        command += ["--threads", str(threads), "--threads-batch", str(threads)]
    return command


class LlamaServer:
    """A ``llama-server`` process for the life of a ``with`` block: started, waited for, stopped.

    ``base_url`` is its OpenAI base (``http://host:port/v1``). The server listens on ``host`` only
    (127.0.0.1 by default).
    """

    def __init__(self, command: list[str], *, host: str, port: int, log_path: str | Path | None = None, startup_timeout: float = 120.0):
        self.command, self.host, self.port = command, host, port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> "LlamaServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if self.log_path:
                log.close()
        self._wait_healthy()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                where = f"; its log: {self.log_path}" if self.log_path else ""
                raise KnowtuneError(f"llama-server exited with status {self.process.returncode} at start-up{where}",
                                    fix="run the command by hand to see why: " + " ".join(self.command))
            try:
                if httpx.get(f"http://{self.host}:{self.port}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise KnowtuneError(f"llama-server did not answer /health within {self.startup_timeout:g} s", fix="check the port and the log")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
