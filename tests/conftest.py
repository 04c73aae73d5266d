"""Shared fixtures: paths to the shared EntityQuestions data, a tiny pretrained model, and a real llama.cpp
``llama-server`` serving the default model (the ``--backend openai`` tests of annotate and evaluate)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_EQ = REPO.parent / "shared" / "datasets" / "entityquestions"


@pytest.fixture(scope="session")
def entityquestions_dir() -> Path:
    assert SHARED_EQ.is_dir(), f"{SHARED_EQ} is missing: the shared EntityQuestions data sits beside the repo"
    return SHARED_EQ


@pytest.fixture(scope="session")
def benchmark_script():
    """A loader of the scripts in benchmarks/ (not a package): ``benchmark_script("demo")`` is benchmarks/demo.py as a module."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny model pretrained by knowtune on a tiny synthetic world (seconds)."""
    from knowtune.pretrain import pretrain
    from knowtune.testing import tiny_pretrain_config, tiny_world

    out = tmp_path_factory.mktemp("tiny-model")
    pretrain(tiny_world(), tiny_pretrain_config(), out, log=lambda _: None)
    return out


#: Slots (--parallel) of the session's llama-server.
LLAMA_SLOTS = 4


@pytest.fixture(scope="session")
def llama_binary() -> Path:
    """The cached llama-server (``knowtune serve build``); skipped without it, failed instead under
    ``KNOWTUNE_REQUIRE_LLAMA_SERVER=1`` (``make test``)."""
    from knowtune.serving.llama import llama_server_path

    path = llama_server_path()
    if not path.is_file():
        message = f"llama-server is not built ({path}): run `knowtune serve build` (make test does)"
        if os.environ.get("KNOWTUNE_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def default_gguf(tmp_path_factory) -> Path:
    """The default model exported to GGUF."""
    from knowtune.models.gguf import export_gguf

    return export_gguf("default", tmp_path_factory.mktemp("gguf") / "default.gguf")


@pytest.fixture(scope="session")
def llama_server(llama_binary, default_gguf, tmp_path_factory):
    """llama-server serving the default model (as ``default``) on 127.0.0.1 with LLAMA_SLOTS slots, for the whole session."""
    from knowtune.serving.llama import LlamaServer, free_port, llama_server_command

    port = free_port()
    command = llama_server_command(llama_binary, default_gguf, port=port, parallel=LLAMA_SLOTS, threads=1, alias="default")
    with LlamaServer(command, host="127.0.0.1", port=port, log_path=tmp_path_factory.mktemp("llama") / "server.log") as running:
        yield running


def pytest_configure(config):
    # Tiny models train fastest single-threaded, and CI machines have 2 cores.
    import torch

    torch.set_num_threads(1)
