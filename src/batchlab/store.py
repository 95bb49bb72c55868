"""The results store: one SQLite file in the output folder, written as work happens.

Every curve point and every finished run is committed the moment it exists (WAL mode, autocommit),
so a process killed part-way loses at most the point it was computing. A run is identified by a key
derived from its settings: a later command finds finished runs and reuses them, and restarts runs
that were left unfinished, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ._json import json_safe

DB_NAME = "results.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a run id names one attempt
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    workload TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    result TEXT,
    started REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS points (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    workload TEXT NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL
);
"""


def run_key(kind: str, config: dict[str, Any]) -> str:
    """A stable key for a run's settings: same settings, same key."""
    text = json.dumps({"kind": kind, **json_safe(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Store:
    """An open results database. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix != ".db":
            path.mkdir(parents=True, exist_ok=True)
            path = path / DB_NAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # Runs and their curves ----------------------------------------------------------------------

    def finished(self, key: str) -> dict[str, Any] | None:
        """The result of a finished run with this key, or None."""
        row = self._db.execute("SELECT result FROM runs WHERE key = ? AND status = 'done'", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def begin_run(self, key: str, *, kind: str, workload: str, config: dict[str, Any]) -> int:
        """Start (or restart) the run with this key; an unfinished earlier attempt is discarded whole."""
        with self._transaction():
            self._db.execute("DELETE FROM runs WHERE key = ? AND status = 'running'", (key,))
            cursor = self._db.execute(
                "INSERT INTO runs (key, kind, workload, config, status, started)"
                " VALUES (?, ?, ?, ?, 'running', ?)",
                (key, kind, workload, json.dumps(json_safe(config)), time.time()),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def add_point(self, run_id: int, point: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO points (run_id, step, data) VALUES (?, ?, ?)",
            (run_id, int(point["step"]), json.dumps(json_safe(point))),
        )

    def finish_run(self, run_id: int, result: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE runs SET status = 'done', result = ?, finished = ? WHERE id = ?",
            (json.dumps(json_safe(result)), time.time(), run_id),
        )

    def runs(self, kind: str | None = None, *, status: str = "done") -> list[dict[str, Any]]:
        """Finished runs (their results), oldest first."""
        query = "SELECT result FROM runs WHERE status = ?"
        args: tuple[Any, ...] = (status,)
        if kind is not None:
            query += " AND kind = ?"
            args += (kind,)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [json.loads(r[0]) for r in rows if r[0] is not None]

    def count_runs(self, status: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM runs WHERE status = ?", (status,)).fetchone()[0])

    def points(self, run_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT data FROM points WHERE run_id = ? ORDER BY step", (run_id,))
        return [json.loads(r[0]) for r in rows]

    # Whole results (memory profiles, throughput, noise, advice) ----------------------------------

    def save_result(self, kind: str, workload: str, data: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO results (kind, workload, created, data) VALUES (?, ?, ?, ?)",
            (kind, workload, time.time(), json.dumps(json_safe(data))),
        )

    def latest_result(self, kind: str, workload: str | None = None) -> dict[str, Any] | None:
        query, args = "SELECT data FROM results WHERE kind = ?", [kind]
        if workload is not None:
            query += " AND workload = ?"
            args.append(workload)
        row = self._db.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return None if row is None else json.loads(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
