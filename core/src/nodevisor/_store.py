"""The agent's local state: its nodes, the commands it ran, its outbox.

SQLite through the standard library. ``Store`` methods are synchronous, one
statement each; the agent reaches them through ``StoreRunner``, which runs
them in a worker thread so that a slow disk never stalls the event loop, and
commits concurrent writes together, in one transaction and one fsync, so
durability costs little under load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ._errors import ConfigError, Conflict
from ._loop import Worker, running_loop
from ._sqlite import each_or_alone
from ._states import NodeStatus

__all__ = [
    "STORE_FILE",
    "CommandRecord",
    "NodeRecord",
    "Store",
    "StoreRunner",
    "WriteAbandoned",
]

#: The store's file in the agent's data directory.
STORE_FILE = "state.db"

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    journal TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_live_name ON nodes(name)
    WHERE status != 9;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    node_id TEXT,
    kind TEXT NOT NULL,
    received_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    response TEXT,
    result_seq INTEGER,
    started_at REAL
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
    #: A multi-step operation under way (JSON), so a crash can finish it.
    journal: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def url(self) -> str:
        return f"{self.protocol}/{self.version}"

    def replace(self, **changes: object) -> NodeRecord:
        # As dataclasses.replace, without its look at every field's
        # definition: a command replaces a node's record several times.
        unknown = changes.keys() - _NODE_FIELD_SET
        if unknown:
            raise TypeError(f"NodeRecord has no field {sorted(unknown)[0]!r}")
        record = object.__new__(NodeRecord)
        record.__dict__.update(self.__dict__, **changes)
        return record


_NODE_FIELDS = tuple(f.name for f in dataclasses.fields(NodeRecord))
_NODE_FIELD_SET = frozenset(_NODE_FIELDS)
# An upsert on the id: "INSERT OR REPLACE" would settle a clash on the
# unique live-name index by deleting the other node's record.
_SAVE_NODE = (
    f"INSERT INTO nodes ({', '.join(_NODE_FIELDS)}) "
    f"VALUES ({', '.join('?' for _ in _NODE_FIELDS)}) "
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{f} = excluded.{f}" for f in _NODE_FIELDS if f != "id")
)


_COMMAND_COLUMNS = (
    "id, node_id, kind, received_at, finished_at, exit_code, response, started_at"
)


@dataclass(frozen=True)
class CommandRecord:
    id: str
    node_id: str | None
    kind: str
    received_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    response: str | None = None
    #: When it began to run; ``None`` while it waits behind another command
    #: for its node. A command that never started cannot have done anything.
    started_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code is not None


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        _upgrade(self._db)
        self._lock = threading.Lock()
        #: The store on a second connection, for long reads (``apart``).
        self._second: Store | None = None

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open an existing store for reading only; create nothing."""
        if not path.exists():
            raise ConfigError(
                f"there is no agent state at {str(path)!r}: has the agent run with "
                "this data_dir?"
            )
        return cls._on(
            path,
            sqlite3.connect(
                f"{path.absolute().as_uri()}?mode=ro",
                uri=True,
                check_same_thread=False,
            ),
        )

    @classmethod
    def _on(cls, path: Path, connection: sqlite3.Connection) -> Store:
        """The store of ``path`` on ``connection``, with nothing created."""
        store = cls.__new__(cls)
        store.path = path
        store._db = connection
        store._db.row_factory = sqlite3.Row
        store._lock = threading.Lock()
        store._second = None
        return store

    def close(self) -> None:
        """Close the connections once no call is using them."""
        with self._lock:
            self._db.close()
        if self._second is not None:
            self._second.close()

    def apart(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` with this store on a second, read-only connection.

        A read of every node takes tens of milliseconds with a thousand
        nodes; on the second connection it holds up no commit. Each of
        its statements sees what was committed when it began.
        """
        if self._second is None:
            connection = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None
            )
            connection.execute("PRAGMA query_only=ON")
            self._second = Store._on(self.path, connection)
        return self._second.locked(fn, self._second, *args)

    def locked(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` while no other thread uses or closes the connection."""
        with self._lock:
            return fn(*args)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the writes in the block into one commit."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def apply(
        self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[Any]:
        """Run ``writes`` in one transaction; each result, or the error it raised.

        A write that fails is rolled back alone; the others are kept.
        """
        calls = [functools.partial(fn, *args) for fn, args in writes]
        with self.transaction():
            return each_or_alone(self._db, lambda: [call() for call in calls], calls)

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
        """Insert or update the node's record; returns it as stored.

        Raises ``Conflict`` if another live node has the record's name.
        """
        now = time.time()
        node = node.replace(updated_at=now, created_at=node.created_at or now)
        values = [_column(getattr(node, f)) for f in _NODE_FIELDS]
        try:
            self._db.execute(_SAVE_NODE, values)
        except sqlite3.IntegrityError as exc:
            holder = self.node_named(node.name)
            if holder is None or holder.id == node.id:
                raise
            raise Conflict(
                f"node name {node.name!r} is taken by node {holder.id}"
            ) from exc
        return node

    def forget_node(self, node_id: str) -> None:
        self._db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))

    # commands

    def command(self, command_id: str) -> CommandRecord | None:
        row = self._db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = ?",
            (command_id,),
        ).fetchone()
        return None if row is None else CommandRecord(*row)

    def record_command(
        self, command_id: str, node_id: str | None, kind: str, started: bool = True
    ) -> None:
        """Record a command as received; as started too, unless ``started`` is
        false (it waits behind another one)."""
        now = time.time()
        self._db.execute(
            "INSERT OR IGNORE INTO commands (id, node_id, kind, received_at, "
            "started_at) VALUES (?, ?, ?, ?, ?)",
            (command_id, node_id, kind, now, now if started else None),
        )

    def take_command(
        self, command_id: str, node_id: str | None, kind: str, started: bool = True
    ) -> CommandRecord | None:
        """Record a command unless it is known; the earlier record if it is."""
        earlier = self.command(command_id)
        if earlier is None:
            self.record_command(command_id, node_id, kind, started)
        return earlier

    def start_command(self, command_id: str) -> None:
        """Record that a command that waited begins to run."""
        self._db.execute(
            "UPDATE commands SET started_at = ? WHERE id = ?",
            (time.time(), command_id),
        )

    def forget_unstarted(self) -> int:
        """Forget the commands that were received but never began to run.

        They did nothing; the control plane sends them again, since it has
        no result for them, and they run then. How many were forgotten.
        """
        cursor = self._db.execute(
            "DELETE FROM commands WHERE exit_code IS NULL AND started_at IS NULL"
        )
        return cursor.rowcount

    def finish_command(self, command_id: str, exit_code: int, response: str) -> None:
        self._db.execute(
            "UPDATE commands SET finished_at = ?, exit_code = ?, response = ? "
            "WHERE id = ?",
            (time.time(), exit_code, response, command_id),
        )

    def prune_commands(self, before: float) -> int:
        """Forget commands finished before ``before``; how many.

        Only commands whose last result has left the outbox (the control
        plane confirmed it, or took it as a peer that does not confirm): until
        the control plane has a result it may send the command again, which
        must then be answered from here, not run again. A command whose result
        never reached the outbox is kept.
        """
        cursor = self._db.execute(
            "DELETE FROM commands WHERE finished_at < ? AND result_seq IS NOT NULL"
            " AND result_seq < (SELECT COALESCE(MIN(seq), result_seq + 1) FROM outbox)",
            (before,),
        )
        return cursor.rowcount

    def unfinished_commands(self) -> list[CommandRecord]:
        rows = self._db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE exit_code IS NULL "
            "ORDER BY received_at"
        )
        return [CommandRecord(*row) for row in rows]

    # the outbox

    def outbox_add(self, payload: bytes, result_of: str | None = None) -> int:
        """Keep an update until the control plane confirms it; its number.

        ``result_of`` names the command whose result the update is: the
        command is then remembered until this update has left the outbox.
        """
        cursor = self._db.execute("INSERT INTO outbox (payload) VALUES (?)", (payload,))
        seq = cursor.lastrowid
        assert seq is not None
        if result_of is not None:
            self._db.execute(
                "UPDATE commands SET result_seq = ? WHERE id = ?", (seq, result_of)
            )
        return seq

    def outbox_confirm(self, up_to: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (up_to,))

    def outbox(self) -> list[tuple[int, bytes]]:
        return list(self._db.execute("SELECT seq, payload FROM outbox ORDER BY seq"))


class StoreRunner:
    """Runs store calls off the event loop, and commits writes in batches.

    Reads (``await runner(fn, ...)``) run in the one worker thread the store
    has. Writes (``await runner.write(fn, ...)``) queue up; while the runner
    is entered (``async with``), a flusher commits every queued write in one
    transaction and then wakes their callers in order. Outside ``async with``
    each write commits alone.

    In a batch each write succeeds or fails on its own, except writes queued
    inside ``with runner.together():``, which succeed or fail as one.
    """

    #: Seconds an unhurried write waits for a batch to join.
    UNHURRIED = 0.5

    def __init__(self, store: Store) -> None:
        self.store = store
        self._thread = Worker("nodevisor-store")
        self._apart_thread = Worker("nodevisor-store-apart")
        self._queue: list[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
        ] = []
        #: Set when a write is queued; ``_hurry`` when one is not unhurried.
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._last_write: asyncio.Future[Any] | None = None
        self._group: list[_Write] | None = None

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        # Reads see every write queued before them.
        last = self._last_write
        if last is not None and not last.done():
            await asyncio.wait([last])
        return await self._in_thread(fn, *args)

    async def apart(self, fn: Callable[..., T], *args: Any) -> T:
        """A long read, ``fn(store, *args)``, that holds up no write.

        It runs on the store's second connection (``Store.apart``), in a
        thread of its own, and sees every write queued before it.
        """
        last = self._last_write
        if last is not None and not last.done():
            await asyncio.wait([last])
        return await self._apart_thread.run(self.store.apart, fn, *args)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._thread.run(self.store.locked, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write; return once it is committed."""
        return await self.write_nowait(fn, *args)

    def write_nowait(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue a write; the future resolves once it is committed."""
        future: asyncio.Future[T] = running_loop().create_future()
        self._last_write = future
        if self._group is not None:
            self._group.append((fn, args, future))
        else:
            self._enqueue(fn, args, future)
        return future

    def write_unhurried(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue a write that need not commit at once.

        It joins the next batch that other writes start, or commits on its
        own after ``UNHURRIED`` seconds; reads do not wait for it. For
        bookkeeping whose loss in a crash costs only repeated work (which
        updates the control plane has confirmed, say), so that it adds no
        commit of its own to a command's path.
        """
        future: asyncio.Future[T] = running_loop().create_future()
        self._enqueue(fn, args, future, hurry=False)
        return future

    @contextmanager
    def together(self) -> Iterator[None]:
        """Make the writes queued inside commit together or not at all.

        A record and the update that reports it, say: if the record cannot
        be written, its report must not go out either. When one write of the
        group fails, its future gets the error and the others' futures get
        ``WriteAbandoned``.
        """
        if self._group is not None:  # nested: part of the outer group
            yield
            return
        group: list[_Write] = []
        self._group = group
        try:
            yield
        finally:
            self._group = None
        if group:
            future = running_loop().create_future()
            future.add_done_callback(lambda done: _settle_group(group, done))
            self._enqueue(
                _apply_group, ([(fn, args) for fn, args, _ in group],), future
            )

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        *,
        hurry: bool = True,
    ) -> None:
        self._queue.append((fn, args, future))
        if self._flusher is None:
            running_loop().create_task(self._flush_once())
            return
        if hurry:
            self._hurry.set()
        self._wake.set()

    async def __aenter__(self) -> StoreRunner:
        self._flusher = running_loop().create_task(self._flush_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._flusher is not None
        flusher, self._flusher = self._flusher, None
        self._closing = True
        self._hurry.set()
        self._wake.set()
        with anyio.CancelScope(shield=True):
            # The flusher finishes the batch it holds and what is queued
            # behind it; cancelling it would lose a batch taken but unwritten.
            await flusher
        self._thread.close()
        self._apart_thread.close()

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            if not (self._hurry.is_set() or self._closing):  # unhurried only: wait
                with anyio.move_on_after(self.UNHURRIED):
                    await self._hurry.wait()
            self._wake.clear()
            self._hurry.clear()
            await self._flush_once()
            if self._closing and not self._queue:
                return

    async def _flush_once(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        writes = [(fn, args) for fn, args, _ in batch]
        try:
            results = await self._in_thread(self.store.apply, writes)
        except Exception as exc:  # the commit failed: every write in it did
            log.error("committing %d writes to the store failed: %r", len(batch), exc)
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


_Write = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class WriteAbandoned(Exception):
    """A write not made because another write of its group failed."""


class _GroupFailed(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def _apply_group(writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    # Runs inside one write's savepoint: raising undoes the whole group.
    results = []
    for index, (fn, args) in enumerate(writes):
        try:
            results.append(fn(*args))
        except Exception as exc:
            raise _GroupFailed(index, exc) from exc
    return results


def _settle_group(group: list[_Write], done: asyncio.Future[Any]) -> None:
    error = done.exception()
    for index, (_, _, future) in enumerate(group):
        if future.done():
            continue
        if error is None:
            future.set_result(done.result()[index])
        elif isinstance(error, _GroupFailed) and index != error.index:
            future.set_exception(WriteAbandoned(f"not written: {error.error!r}"))
        elif isinstance(error, _GroupFailed):
            future.set_exception(error.error)
        else:
            future.set_exception(error)


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to the schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(commands)")}
    if "result_seq" not in columns:
        # Commands from before have no result number: they are kept.
        db.execute("ALTER TABLE commands ADD COLUMN result_seq INTEGER")
    if "started_at" not in columns:
        # Before, a command was recorded only as it began to run.
        db.execute("ALTER TABLE commands ADD COLUMN started_at REAL")
        db.execute("UPDATE commands SET started_at = received_at")


def _column(value: object) -> object:
    return int(value) if isinstance(value, NodeStatus) else value


def _node(row: sqlite3.Row) -> NodeRecord:
    data = dict(row)
    data["status"] = NodeStatus(data["status"])
    data["expected"] = NodeStatus(data["expected"])
    return NodeRecord(**data)
