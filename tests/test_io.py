"""Crash-safe writes readable under the user's umask, and one writer per output directory."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from knowtune.errors import KnowtuneError
from knowtune.io import LOCK_FILE, OutputLock, atomic_write_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode


_HOLD = """
import sys, time
from knowtune.io import OutputLock
with OutputLock(sys.argv[1], "knowtune annotate"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(KnowtuneError) as error:
            with OutputLock(out):
                pass
        assert f"is in use by knowtune annotate (pid {holder.pid}" in error.value.render() and "another --out" in error.value.render()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (out / ".results.jsonl.abc123.tmp").write_text("half")
    with OutputLock(out):  # the kernel released the killed holder's lock
        assert not (out / ".results.jsonl.abc123.tmp").exists() and (out / LOCK_FILE).is_file()
    with OutputLock(out):  # and released ours on exit
        pass


def test_lock_errors_name_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(KnowtuneError, match="exists and is not a directory"):
        with OutputLock(tmp_path / "file"):
            pass
    if os.geteuid() != 0:  # root writes anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o500)
        with pytest.raises(KnowtuneError, match="cannot write here"):
            with OutputLock(read_only / "out"):
                pass


def test_a_directory_the_lock_created_is_removed_when_nothing_was_written(tmp_path):
    with OutputLock(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists()
    with OutputLock(tmp_path / "used"):
        atomic_write_text(tmp_path / "used" / "out.json", "{}")
    assert (tmp_path / "used" / "out.json").is_file()
