"""Crash-safe file writing (write to a temporary file in the same directory, then rename)
and one writer per output directory (:class:`OutputLock`)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

LOCK_FILE = ".knowtune.lock"
_TEMP_GLOBS = (".*.tmp",)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give under the user's umask (``mkstemp`` gives 0600)."""
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, readable_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the hidden temporary files that killed atomic writes left in ``directory`` (not
    recursive); call only while holding the directory's :class:`OutputLock`."""
    removed = []
    for pattern in _TEMP_GLOBS:
        for path in Path(directory).glob(pattern):
            if path.is_file() and path.name != LOCK_FILE:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class OutputLock:
    """An exclusive lock on an output directory for the life of one knowtune process.

    ``fcntl.flock`` on ``DIR/.knowtune.lock``: the kernel drops the lock when the process
    exits in any way (``kill -9`` included), so a stale lock never blocks a rerun. A second
    process on the same directory gets a :class:`~knowtune.errors.KnowtuneError` (exit 2)
    naming the holder. On acquiring, temporary files left by killed writes are removed; a
    directory the lock created is removed again if the command wrote nothing into it.
    """

    def __init__(self, directory: str | Path, command: str = "knowtune"):
        self.directory = Path(directory)
        self.command = command
        self._handle = None

    def __enter__(self) -> "OutputLock":
        from knowtune.errors import KnowtuneError

        if self.directory.exists() and not self.directory.is_dir():
            raise KnowtuneError(f"{self.directory} exists and is not a directory", fix="pass another --out, or move that file away")
        self._created = not self.directory.exists()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.directory / LOCK_FILE, "a+", encoding="utf-8")
        except OSError as error:
            raise KnowtuneError(f"{self.directory}: cannot write here ({error.strerror})",
                                fix="pass an --out in a directory you can write to") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise KnowtuneError(f"{self.directory} is in use by {holder}",
                                fix="wait for that run to finish (rerun it later to resume), or pass another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.command} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        self._handle = handle
        remove_stale_temp_files(self.directory)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is None:
            return
        if self._created and [p.name for p in self.directory.iterdir()] == [LOCK_FILE]:
            (self.directory / LOCK_FILE).unlink()  # still locked by us: no other process holds it open
            self.directory.rmdir()
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def command_name() -> str:
    """``knowtune <command>`` of this process, for lock holders' names."""
    args = [a for a in sys.argv[1:2] if not a.startswith("-")]
    return " ".join(["knowtune", *args])
