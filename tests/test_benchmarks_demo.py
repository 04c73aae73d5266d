"""benchmarks/demo.py's process-tree memory sampler sees the demo's worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the benchmark reads /proc (Linux)")
def test_the_sampler_counts_children_and_grandchildren(benchmark_script):
    bench = benchmark_script("demo")
    # a child that starts a grandchild holding ~200 MB, as the demo's spawned workers do
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
            "'b = bytearray(200 * 2**20); import time; time.sleep(30)']); p.wait()")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while True:
            tree = bench._children(os.getpid())
            total = sum(bench._memory_kib(pid) for pid in tree)
            if len(tree) >= 3 and total > 200 * 1024 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert child.pid in tree and len(tree) >= 3
        assert total > 200 * 1024  # KiB: the grandchild's buffer is counted
    finally:
        for pid in bench._children(child.pid)[::-1]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        child.wait()
    assert bench._memory_kib(child.pid) == 0  # gone: nothing to count
