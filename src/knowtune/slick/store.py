"""The SQLite result store of ``knowtune annotate``: resumable and crash-safe.

One row per (example id, model fingerprint, protocol hash), written in one transaction
per batch, in WAL mode. A ``kill -9`` at any moment leaves the database consistent and
loses at most the batch in flight; re-running the same command skips every example
already stored under the same key (and whose content hash still matches the data).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    example_id TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    protocol_hash TEXT NOT NULL,
    example_hash TEXT NOT NULL,
    position INTEGER NOT NULL,
    category TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (example_id, model_fingerprint, protocol_hash)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredRow:
    """One annotated example as stored: its key, content hash, order and JSON record."""

    example_id: str
    example_hash: str
    position: int
    category: str
    record: dict[str, Any]


class AnnotationStore:
    """A thin wrapper around one ``annotations.sqlite`` file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, fingerprint: str, protocol_hash: str) -> dict[str, str]:
        """example id -> content hash of every example stored under this model and protocol."""
        cursor = self._db.execute(
            "SELECT example_id, example_hash FROM annotations WHERE model_fingerprint = ? AND protocol_hash = ?",
            (fingerprint, protocol_hash),
        )
        return dict(cursor.fetchall())

    def put(self, fingerprint: str, protocol_hash: str, rows: Iterable[StoredRow]) -> None:
        """Store one batch atomically (a single transaction)."""
        values = [
            (r.example_id, fingerprint, protocol_hash, r.example_hash, r.position, r.category, json.dumps(r.record, ensure_ascii=False))
            for r in rows
        ]
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    def rows(self, fingerprint: str, protocol_hash: str) -> list[StoredRow]:
        """Every stored row of this model and protocol, in dataset order."""
        cursor = self._db.execute(
            "SELECT example_id, example_hash, position, category, record FROM annotations "
            "WHERE model_fingerprint = ? AND protocol_hash = ? ORDER BY position, example_id",
            (fingerprint, protocol_hash),
        )
        return [StoredRow(i, h, p, c, json.loads(r)) for i, h, p, c, r in cursor.fetchall()]

    def keys(self) -> set[tuple[str, str]]:
        """The (model fingerprint, protocol hash) pairs present in the file."""
        return set(self._db.execute("SELECT DISTINCT model_fingerprint, protocol_hash FROM annotations").fetchall())

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta").fetchall()}

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
