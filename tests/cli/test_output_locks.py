"""One writer per output directory: every stage refuses an --out another process is writing to
(exit 2, naming the holder), and works again once that process is gone (kill -9 included)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from knowtune.testing import run_cli

_HOLD = """
import sys, time
from knowtune.io import OutputLock
with OutputLock(sys.argv[1], "knowtune test-holder"):
    print("locked", flush=True)
    time.sleep(120)
"""

STAGES = {
    "annotate": lambda out: ["annotate", "--model", "default", "--data", "embedded", "--limit", "4", "--n-ex", "1", "--n-samples", "2", "--out", out],
    "train": lambda out: ["train", "--data", "embedded", "--epochs", "1", "--max-eval-examples", "4", "--out", out],
    "evaluate": lambda out: ["evaluate", "--model", "default", "--data", "embedded", "--limit", "4", "--out", out],
    "study": lambda out: ["study", "--model", "default", "--data", "embedded", "--out", out],
}


@pytest.fixture
def holder(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield out, process
    process.kill()
    process.wait()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_second_process_on_the_same_out_is_refused(capsys, holder, stage):
    out, process = holder
    code, _, err = run_cli(capsys, *STAGES[stage](out))
    text = " ".join(err.split())
    assert code == 2 and f"is in use by knowtune test-holder (pid {process.pid}" in text and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".knowtune.lock"]  # nothing written


def test_the_lock_of_a_killed_run_is_recovered(capsys, holder):
    out, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    code, _, err = run_cli(capsys, *STAGES["evaluate"](out))
    assert code == 0, err
    assert (out / "metrics.json").is_file()
