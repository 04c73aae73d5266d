"""Signals, with real processes: SIGINT/SIGTERM stop a command cleanly (status 130/143, a message
saying how to resume, the rerun resumes), and a study's worker processes die with their parent,
kill -9 included (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from knowtune.testing import run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process parents from /proc")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from knowtune.cli import main; main()", *map(str, args)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_line(process: subprocess.Popen, needle: str, timeout_s: float = 180.0) -> list[str]:
    """Stderr lines of ``process`` up to the first containing ``needle``."""
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"exited ({process.wait()}) before printing {needle!r}:\n{''.join(lines)[-3000:]}")
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} within {timeout_s} s:\n{''.join(lines)[-3000:]}")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc/*/stat parent ids)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie has exited
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


_POOL = """
import sys, time
from knowtune.study.workers import process_pool
with process_pool(2) as pool:
    for _ in range(4):
        pool.submit(time.sleep, 0.2).result()  # the workers have started and run their initializer
    jobs = [pool.submit(time.sleep, 300) for _ in range(2)]
    print("[pool] ready", file=sys.stderr, flush=True)
    time.sleep(300)
"""


def test_a_killed_parents_workers_die_with_it(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", _POOL], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _assert_workers_die(process, "[pool] ready", signal.SIGKILL)


def test_sigterm_stops_annotate_cleanly_and_the_rerun_resumes(capsys, tmp_path):
    out = tmp_path / "audit"
    args = ["annotate", "--model", "default", "--data", "embedded", "--limit", "24", "--chunk-size", "4", "--batch-size", "4",
            "--n-ex", "2", "--n-samples", "4", "--device", "cpu", "--out", out]
    process = _start(*args)
    _wait_for_line(process, "annotate: 4/24 examples")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    text = " ".join(err.split())
    assert process.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in text and "To resume: rerun the same command." in text and "Traceback" not in err
    assert not list(out.glob(".*.tmp")) and (out / "annotations.sqlite").is_file()

    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["overall"]["examples"] == 24
    assert 0 < summary["provenance"]["run"]["examples_this_run"] < 24  # the stored batches were kept


def test_sigint_stops_a_study_and_its_workers(tmp_path):
    process = _start("study", "--model", "default", "--data", "embedded", "--workers", "2", "--device", "cpu", "--out", tmp_path / "study",
                     "--annotate-n-ex", "2", "--annotate-n-samples", "2", "--annotate-chunk-size", "8")
    err = _assert_workers_die(process, "[annotate 0/2]", signal.SIGINT)  # a worker has started auditing: its initializer ran
    assert process.returncode == 130 and "stopped by SIGINT" in err and "To resume: rerun the same command." in err, err[-3000:]
    assert "Traceback" not in err


def _assert_workers_die(process: subprocess.Popen, ready: str, signum: int) -> str:
    """Send ``signum`` to ``process`` once it printed ``ready``; assert its descendants are gone within 10 s; its stderr."""
    workers: set[int] = set()
    try:
        lines = _wait_for_line(process, ready)
        workers = _descendants(process.pid)
        assert len(workers) >= 2, workers
        process.send_signal(signum)
        _, rest = process.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), f"workers {sorted(_alive(workers))} outlived their parent"
    finally:
        for pid in _alive(workers):  # only when the test failed: leave no process behind
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()
    return " ".join(("".join(lines) + rest).split())
