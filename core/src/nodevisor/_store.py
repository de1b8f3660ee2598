"""The agent's local state: its nodes and the commands it has run.

SQLite through the standard library. Methods are synchronous and short; the
agent calls them from a worker thread so that a slow disk never stalls the
event loop. One connection, used by one thread at a time.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._states import NodeStatus

__all__ = ["CommandRecord", "NodeRecord", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    protocol TEXT NOT NULL,
    version TEXT NOT NULL,
    runtime TEXT NOT NULL,
    node_type INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    failure TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_live_name ON nodes(name)
    WHERE status != 9;
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    node_id TEXT,
    kind TEXT NOT NULL,
    received_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    response TEXT
);
"""


@dataclass(frozen=True)
class NodeRecord:
    """A node as the agent remembers it."""

    id: str
    name: str
    protocol: str
    version: str
    runtime: str
    status: NodeStatus
    #: The settled status the node should be in: Running, Stopped or Deleted.
    expected: NodeStatus
    node_type: int = 0
    failure: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def url(self) -> str:
        return f"{self.protocol}/{self.version}"

    def replace(self, **changes: object) -> NodeRecord:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CommandRecord:
    id: str
    node_id: str | None
    kind: str
    received_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    response: str | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code is not None


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # nodes

    def nodes(self, *, include_deleted: bool = False) -> list[NodeRecord]:
        query = "SELECT * FROM nodes"
        if not include_deleted:
            query += f" WHERE status != {int(NodeStatus.Deleted)}"
        return [_node(row) for row in self._db.execute(query + " ORDER BY created_at")]

    def node(self, node_id: str) -> NodeRecord | None:
        row = self._db.execute(
            "SELECT * FROM nodes WHERE id = ?", (node_id,)
        ).fetchone()
        return None if row is None else _node(row)

    def node_named(self, name: str) -> NodeRecord | None:
        row = self._db.execute(
            "SELECT * FROM nodes WHERE name = ? AND status != ?",
            (name, int(NodeStatus.Deleted)),
        ).fetchone()
        return None if row is None else _node(row)

    def save_node(self, node: NodeRecord) -> NodeRecord:
        """Insert or replace the node's record; returns it as stored."""
        now = time.time()
        node = node.replace(updated_at=now, created_at=node.created_at or now)
        fields = [f.name for f in dataclasses.fields(NodeRecord)]
        values = [_column(getattr(node, f)) for f in fields]
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO nodes ({', '.join(fields)}) "
                f"VALUES ({', '.join('?' for _ in fields)})",
                values,
            )
        return node

    def forget_node(self, node_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))

    # commands

    def command(self, command_id: str) -> CommandRecord | None:
        row = self._db.execute(
            "SELECT id, node_id, kind, received_at, finished_at, exit_code, response "
            "FROM commands WHERE id = ?",
            (command_id,),
        ).fetchone()
        return None if row is None else CommandRecord(*row)

    def record_command(self, command_id: str, node_id: str | None, kind: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO commands (id, node_id, kind, received_at) "
                "VALUES (?, ?, ?, ?)",
                (command_id, node_id, kind, time.time()),
            )

    def finish_command(self, command_id: str, exit_code: int, response: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE commands SET finished_at = ?, exit_code = ?, response = ? "
                "WHERE id = ?",
                (time.time(), exit_code, response, command_id),
            )

    def unfinished_commands(self) -> list[CommandRecord]:
        rows = self._db.execute(
            "SELECT id, node_id, kind, received_at, finished_at, exit_code, response "
            "FROM commands WHERE exit_code IS NULL ORDER BY received_at"
        )
        return [CommandRecord(*row) for row in rows]


def _column(value: object) -> object:
    return int(value) if isinstance(value, NodeStatus) else value


def _node(row: tuple) -> NodeRecord:
    (
        id_,
        name,
        protocol,
        version,
        runtime,
        node_type,
        status,
        expected,
        failure,
        created_at,
        updated_at,
    ) = row
    return NodeRecord(
        id=id_,
        name=name,
        protocol=protocol,
        version=version,
        runtime=runtime,
        node_type=node_type,
        status=NodeStatus(status),
        expected=NodeStatus(expected),
        failure=failure,
        created_at=created_at,
        updated_at=updated_at,
    )
