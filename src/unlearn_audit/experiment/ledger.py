"""The results ledger: one SQLite row per grid cell, so a killed run resumes where it stopped.

A cell is identified by the hash of its configuration. Workers claim a pending cell inside an
IMMEDIATE transaction, so two processes sharing one run folder never run the same cell twice; a cell
left `running` by a process that no longer exists is reclaimed. A finished cell is never recomputed
and its result is never lost (results are committed in the same transaction that marks it done).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    deps TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'pending',
    result TEXT,
    error TEXT,
    owner TEXT,
    started REAL,
    finished REAL,
    seconds REAL,
    position INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class Cell:
    id: str
    kind: str
    config: dict
    deps: list[str]
    status: str
    result: dict | None
    error: str | None
    seconds: float | None


def owner_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process that claimed a cell still runs (on this host)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell for other hosts: assume alive
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class Ledger:
    """SQLite-backed cell registry of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def add(self, cell_id: str, kind: str, config: dict, deps: list[str], position: int) -> None:
        """Register a cell if new (an existing cell, finished or not, is left as it is)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO cells (id, kind, config, deps, position) VALUES (?, ?, ?, ?, ?)",
                (cell_id, kind, json.dumps(config, sort_keys=True), json.dumps(deps), position),
            )

    def claim(self, cell_id: str) -> bool:
        """Mark a cell running for this process if nobody else holds it; False if taken or done."""
        with self.transaction() as c:
            row = c.execute("SELECT status, owner FROM cells WHERE id = ?", (cell_id,)).fetchone()
            if row is None:
                raise KeyError(cell_id)
            status, owner = row
            if status == "done" or (status == "running" and owner_alive(owner) and owner != owner_tag()):
                return False
            c.execute("UPDATE cells SET status='running', owner=?, started=?, error=NULL WHERE id=?",
                      (owner_tag(), time.time(), cell_id))
            return True

    def finish(self, cell_id: str, result: dict, seconds: float) -> None:
        with self.transaction() as c:
            c.execute("UPDATE cells SET status='done', result=?, finished=?, seconds=?, owner=NULL WHERE id=?",
                      (json.dumps(result), time.time(), seconds, cell_id))

    def fail(self, cell_id: str, error: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE cells SET status='failed', error=?, finished=?, owner=NULL WHERE id=?",
                      (error, time.time(), cell_id))

    def release(self, cell_id: str) -> None:
        """Give a claimed cell back (interrupted before finishing)."""
        with self.transaction() as c:
            c.execute("UPDATE cells SET status='pending', owner=NULL WHERE id=? AND status='running'", (cell_id,))

    def reset(self, cell_id: str) -> None:
        """Mark a cell pending again (its outputs disappeared)."""
        with self.transaction() as c:
            c.execute("UPDATE cells SET status='pending', owner=NULL, result=NULL WHERE id=?", (cell_id,))

    def copy_in(self, cell: Cell, position: int) -> None:
        """Take over a finished or failed cell from another run folder's ledger (merging shards); a cell
        already finished here is kept."""
        self.add(cell.id, cell.kind, cell.config, cell.deps, position)
        with self.transaction() as c:
            c.execute("UPDATE cells SET status=?, result=?, error=?, seconds=?, owner=NULL WHERE id=? AND status!='done'",
                      (cell.status, json.dumps(cell.result) if cell.result is not None else None, cell.error,
                       cell.seconds, cell.id))

    def get(self, cell_id: str) -> Cell:
        row = self.conn.execute(
            "SELECT id, kind, config, deps, status, result, error, seconds FROM cells WHERE id = ?", (cell_id,)
        ).fetchone()
        if row is None:
            raise KeyError(cell_id)
        return self._cell(row)

    def cells(self, kind: str | None = None) -> list[Cell]:
        query = "SELECT id, kind, config, deps, status, result, error, seconds FROM cells"
        args: tuple = ()
        if kind:
            query += " WHERE kind = ?"
            args = (kind,)
        return [self._cell(r) for r in self.conn.execute(query + " ORDER BY position", args).fetchall()]

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status").fetchall()
        return {s: n for s, n in rows}

    @staticmethod
    def _cell(row) -> Cell:
        return Cell(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4],
                    json.loads(row[5]) if row[5] else None, row[6], row[7])


class PlannedCells:
    """The ledger's cells restricted to one grid's plan (a run folder may hold cells of older configs)."""

    def __init__(self, ledger: Ledger, ids: set[str] | None):
        self.ledger = ledger
        self.ids = ids

    def cells(self, kind: str | None = None):
        return [c for c in self.ledger.cells(kind) if self.ids is None or c.id in self.ids]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells():
            out[c.status] = out.get(c.status, 0) + 1
        return out


def located(run_dir: Path, result: dict | None) -> dict:
    """A stored result whose `path` is relative to its run folder, with that path made usable from any
    working directory (a path stored before results were portable, relative to where it ran, is kept)."""
    path = (result or {}).get("path")
    if not path or Path(path).is_absolute() or not (Path(run_dir) / path).exists():
        return result or {}
    return {**result, "path": str(Path(run_dir) / path)}


def portable(run_dir: Path, result: dict) -> dict:
    """The result as the ledger stores it: a `path` inside the run folder relative to it, so the folder can
    be resumed from another working directory, or moved."""
    path = result.get("path") if isinstance(result, dict) else None
    if not path:
        return result
    try:
        return {**result, "path": str(Path(path).resolve().relative_to(Path(run_dir).resolve()))}
    except ValueError:  # outside the run folder (the user's own model or corpus): as given
        return result
