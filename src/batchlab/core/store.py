"""The results store: one SQLite file in the output folder, written as work happens.

Every curve point and every finished run is committed the moment it exists (WAL mode, autocommit),
so a process killed part-way loses at most the point it was computing. A run is identified by a key
derived from its settings: a later command finds finished runs and reuses them, and restarts runs
that were left unfinished, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sqlite3
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from batchlab.core.guard import folder_lock
from batchlab.core.json_safe import json_safe
from batchlab.errors import BatchlabError

DB_NAME = "results.db"


class StoreError(BatchlabError):
    """A results file that batchlab cannot use: the message names it and the fix."""


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


SCHEMA_VERSION = 1  # PRAGMA user_version: raise it with any change a reader must know about
APPLICATION_ID = 0x62746C62  # PRAGMA application_id, "btlb": marks the file as a batchlab store
SQLITE_HEADER = b"SQLite format 3\x00"


def _check_existing(path: Path) -> None:
    """Refuse, without writing to it, a file that is not a store this version can write."""
    if not path.exists():
        if path.parent.exists() and not os.access(path.parent, os.W_OK):
            raise StoreError(f"cannot create {path}: its folder is read-only; pass another --out")
        return
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a results store; move it away or pass another --out")
    with path.open("rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise StoreError(
            f"{path} is not a batchlab results store (not an SQLite file); move it away or pass another --out"
        )
    if not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222 or not os.access(path.parent, os.W_OK):
        raise StoreError(f"{path} is read-only; make it and its folder writable, or pass another --out")
    if not header:
        return  # an empty file: SQLite makes it a new store
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"{path} cannot be read as SQLite ({error}); move it away or pass another --out"
        ) from None
    # Stores written before the application id existed (id 0) are ours when their tables are.
    ours = app_id == APPLICATION_ID or (app_id == 0 and (not tables or columns >= _OUR_COLUMNS))
    if not ours:
        raise StoreError(
            f"{path} is another program's SQLite file, not a batchlab results store; "
            "move it away or pass another --out"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer batchlab (store schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}); upgrade batchlab (pip install -U batchlab) or pass another --out"
        )


_OUR_COLUMNS = {"id", "key", "kind", "workload", "config", "status", "result", "started", "finished"}


def run_key(kind: str, config: dict[str, Any]) -> str:
    """A stable key for a run's settings: same settings, same key."""
    text = json.dumps({"kind": kind, **json_safe(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Store:
    """An open results database. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path, *, lock: bool = True) -> None:
        """Open (or create) the store at `path` (a folder, or a .db file). With `lock`, the folder is
        held for this process until `close()`: another process opening it gets a one-line error.
        A file that is not a batchlab store is refused in one line and left untouched."""
        path = Path(path)
        if path.suffix != ".db":
            path.mkdir(parents=True, exist_ok=True)
            path = path / DB_NAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        _check_existing(path)
        self._lock = folder_lock(path.parent, shlex.join(sys.argv) or "python") if lock else nullcontext()
        self._lock.__enter__()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._lock.__exit__(None, None, None)

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
