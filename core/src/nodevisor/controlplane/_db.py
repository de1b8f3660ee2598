"""The control plane's SQLite database.

``Database`` is synchronous and serialises its calls on one connection; the
servicers reach it through ``Database.call``, which runs a method in a worker
thread so that the event loop never waits on the disk, and the busiest writes
(queueing a command, recording updates, marking commands sent) through
``Database.write``, which commits every write queued meanwhile in one
transaction, one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from google.protobuf.message import Message

from blockjoy.api.v1 import command_flow_pb2, host_pb2, node_pb2

from .._loop import Worker, running_loop
from .._sqlite import each_or_alone
from ..admin.v1 import admin_pb2
from ._errors import InvalidRequest, NotFound, OtpRejected, Unauthenticated
from ._tokens import digest, new_secret

__all__ = [
    "CommandState",
    "Database",
    "Queued",
    "Recorded",
    "mark_sent",
    "queue_command",
    "record_updates",
    "with_meta",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
_Write = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS otps (
    digest TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    used_at REAL, host_id TEXT);
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY, token_digest TEXT NOT NULL UNIQUE, info BLOB NOT NULL,
    online INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, last_seen REAL);
CREATE TABLE IF NOT EXISTS nodes (
    host_id TEXT NOT NULL REFERENCES hosts(id), id TEXT NOT NULL,
    info BLOB NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (host_id, id));
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    host_id TEXT NOT NULL REFERENCES hosts(id), node_id TEXT NOT NULL,
    variant TEXT, payload BLOB NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    exit_code INTEGER, response TEXT);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, host_id TEXT NOT NULL,
    received_at REAL NOT NULL, kind TEXT, payload BLOB NOT NULL, error TEXT);
CREATE INDEX IF NOT EXISTS commands_by_host ON commands (host_id, state);
"""


class CommandState(enum.StrEnum):
    """Where a command is on its way to the agent and back."""

    QUEUED = "queued"
    SENT = "sent"
    ACKED = "acked"
    FINISHED = "finished"

    def to_proto(self) -> admin_pb2.CommandState.ValueType:
        return admin_pb2.CommandState.Value(f"COMMAND_STATE_{self.name}")


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What recording one ``InfoUpdate`` found.

    ``command_id`` is the command a ``CommandInfo`` answers, ``error`` why the
    update could not be applied (it is stored all the same).
    """

    command_id: str | None = None
    error: str | None = None


def _timestamp(seconds: float | None, field: Message) -> None:
    if seconds is not None:
        field.FromNanoseconds(int(seconds * 1e9))  # type: ignore[attr-defined]


class Database:
    """The tables of otps, hosts, nodes, commands and updates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._thread = Worker("nodevisor-db")
        _owner_only(path)
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)
        except BaseException:  # not a database, say: let go of the file now
            self._conn.close()
            raise
        self._queue: list[_Write] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Database {self.path}>"

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        self._thread.close()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this database's methods in a worker thread."""
        return await self._thread.run(functools.partial(fn, *args, **kwargs))

    def write(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> asyncio.Future[T]:
        """Queue ``fn(connection, ...)``; the future resolves once it is committed.

        Writes queued while a commit is under way go together into the next
        one; a write that raises is rolled back alone.
        """
        loop = running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((functools.partial(fn, **kwargs), args, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                writes = [(fn, args) for fn, args, _ in batch]
                try:
                    results = await self._thread.run(self._apply, writes)
                except Exception as exc:  # the commit failed: every write in it did
                    log.error("committing %d writes failed: %r", len(batch), exc)
                    results = [exc] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flushing = False

    def _apply(
        self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[Any]:
        with self._transaction() as db:
            calls = [functools.partial(fn, db, *args) for fn, args in writes]
            return each_or_alone(db, lambda: [call() for call in calls], calls)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # One-time passwords and hosts.

    def create_otp(self, ttl: float) -> tuple[str, float]:
        """A new one-time password and the time it expires."""
        otp, now = new_secret(), time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO otps (digest, created_at, expires_at) VALUES (?, ?, ?)",
                (digest(otp), now, now + ttl),
            )
        return otp, now + ttl

    def provision(self, otp: str, info: host_pb2.HostInfo) -> tuple[str, str]:
        """Use up ``otp`` for a new host; its id and bearer token."""
        host_id, token, now = str(uuid.uuid4()), new_secret(), time.time()
        info = _with_id(info, host_id)
        with self._transaction() as db:
            _use_otp(db, otp, host_id, now)
            db.execute(
                "INSERT INTO hosts (id, token_digest, info, created_at)"
                " VALUES (?, ?, ?, ?)",
                (host_id, digest(token), info.SerializeToString(), now),
            )
        log.info("provisioned host %s (%s)", host_id, info.name or "no name")
        return host_id, token

    def host_for_token(self, token: str) -> str:
        """The id of the host whose bearer token is ``token``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id FROM hosts WHERE token_digest = ?", (digest(token),)
            ).fetchone()
        if row is None:
            raise Unauthenticated(
                "the bearer token belongs to no host of this control plane;"
                " provision the host again"
            )
        return str(row["id"])

    def update_host_info(self, host_id: str, info: host_pb2.HostInfo) -> None:
        with self._transaction() as db:
            _store_host_info(db, host_id, info, time.time())

    def set_online(self, host_id: str, online: bool) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE hosts SET online = ?, last_seen = ? WHERE id = ?",
                (int(online), time.time(), host_id),
            )

    def mark_all_offline(self) -> None:
        """Forget connections of an earlier run, which ended without saying."""
        with self._transaction() as db:
            db.execute("UPDATE hosts SET online = 0")

    def list_hosts(self) -> list[admin_pb2.Host]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM hosts ORDER BY created_at"
            ).fetchall()
        return [_host(row) for row in rows]

    def list_nodes(self, host_id: str = "") -> list[admin_pb2.Node]:
        """Every node, or those of ``host_id``, which must be a host's."""
        with self._lock:
            if host_id:
                _require_host(self._conn, host_id)
            rows = self._conn.execute(
                "SELECT * FROM nodes WHERE ? = '' OR host_id = ?"
                " ORDER BY host_id, updated_at",
                (host_id, host_id),
            ).fetchall()
        return [_node(row) for row in rows]

    # Commands.

    def queue_command(
        self,
        host_id: str,
        command: command_flow_pb2.Command,
        command_id: str | None = None,
    ) -> admin_pb2.CommandRecord:
        """Store ``command`` for ``host_id``, filling its id and time if empty.

        ``command_id`` is the id of a command that carries no meta to hold one.
        """
        with self._transaction() as db:
            return queue_command(db, host_id, command, command_id).record

    def unfinished_commands(
        self, host_id: str, after: int = 0
    ) -> list[tuple[int, str, command_flow_pb2.Command]]:
        """``(seq, id, command)`` of every command without a result, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, id, payload FROM commands WHERE host_id = ?"
                " AND state != ? AND seq > ? ORDER BY seq",
                (host_id, CommandState.FINISHED, after),
            ).fetchall()
        return [
            (row["seq"], row["id"], _parse(command_flow_pb2.Command, row["payload"]))
            for row in rows
        ]

    def mark_sent(self, command_ids: Iterable[str]) -> None:
        """The commands were written to their host's stream: one commit."""
        with self._transaction() as db:
            mark_sent(db, command_ids)

    def list_commands(
        self, host_id: str = "", after: int = 0, limit: int = -1
    ) -> list[tuple[int, admin_pb2.CommandRecord]]:
        """``(seq, record)`` of the commands queued after ``after``, in order.

        At most ``limit`` of them; all when it is negative. A ``host_id``
        given must be a host's.
        """
        with self._lock:
            if host_id:
                _require_host(self._conn, host_id)
            rows = self._conn.execute(
                "SELECT * FROM commands WHERE (? = '' OR host_id = ?) AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (host_id, host_id, after, limit),
            ).fetchall()
        return [(row["seq"], _command(row)) for row in rows]

    # Updates from agents.

    def record_update(
        self, host_id: str, update: command_flow_pb2.InfoUpdate
    ) -> Recorded:
        """Store ``update`` and apply it to the host, node or command it is about."""
        (recorded,) = self.record_updates(host_id, [update])
        if isinstance(recorded, Exception):
            raise recorded
        return recorded

    def record_updates(
        self, host_id: str, updates: Sequence[command_flow_pb2.InfoUpdate]
    ) -> list[Recorded | Exception]:
        """Store and apply ``updates`` in order, in one commit.

        An update whose recording raises is rolled back alone; its exception
        takes its place in the result, and the others are kept.
        """
        with self._transaction() as db:
            return record_updates(db, host_id, updates)

    def updates(self, host_id: str) -> list[tuple[float, str | None, str | None]]:
        """``(received_at, kind, error)`` of every update of ``host_id``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT received_at, kind, error FROM updates WHERE host_id = ?"
                " ORDER BY seq",
                (host_id,),
            ).fetchall()
        return [(row["received_at"], row["kind"], row["error"]) for row in rows]


def _owner_only(path: Path) -> None:
    """Create ``path`` with mode 0600, or set it so: it holds token hashes.

    SQLite gives the WAL and shared-memory files it creates the database's
    mode; those an earlier run left behind are set to 0600 too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).chmod(0o600)


# Writes that run inside a transaction (``Database.write`` or a method's own).


@dataclasses.dataclass(frozen=True)
class Queued:
    """A command just queued: its record, its place in the queue, itself."""

    record: admin_pb2.CommandRecord
    seq: int
    command: command_flow_pb2.Command


def queue_command(
    db: sqlite3.Connection,
    host_id: str,
    command: command_flow_pb2.Command,
    command_id: str | None = None,
) -> Queued:
    """Store ``command`` for ``host_id``, filling its id and time if empty."""
    now = time.time()
    command, filled = with_meta(command, now)
    command_id = command_id or filled
    _require_host(db, host_id)
    _require_new_command(db, command_id)
    variant = command.WhichOneof("type")
    cursor = db.execute(
        "INSERT INTO commands (id, host_id, node_id, variant, payload,"
        " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            command_id,
            host_id,
            _node_id(command),
            variant,
            command.SerializeToString(),
            CommandState.QUEUED,
            now,
            now,
        ),
    )
    assert cursor.lastrowid is not None
    record = admin_pb2.CommandRecord(
        id=command_id,
        host_id=host_id,
        node_id=_node_id(command),
        state=CommandState.QUEUED.to_proto(),
        command=command,
    )
    _timestamp(now, record.created_at)
    _timestamp(now, record.updated_at)
    return Queued(record, cursor.lastrowid, command)


def mark_sent(db: sqlite3.Connection, command_ids: Iterable[str]) -> None:
    """The commands were written to their host's stream."""
    now = time.time()
    db.executemany(
        "UPDATE commands SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
        (
            (CommandState.SENT, now, command_id, CommandState.QUEUED)
            for command_id in command_ids
        ),
    )


def record_updates(
    db: sqlite3.Connection,
    host_id: str,
    updates: Sequence[command_flow_pb2.InfoUpdate],
) -> list[Recorded | Exception]:
    """Store and apply ``updates`` in order; each rolled back alone if it raises."""
    now = time.time()

    def whole() -> list[Recorded]:
        # One statement logs them all: most of the statements of a batch.
        results = [_apply(db, host_id, update, now) for update in updates]
        _log_updates(db, host_id, now, updates, results)
        return results

    def record(update: command_flow_pb2.InfoUpdate) -> Recorded:
        recorded = _apply(db, host_id, update, now)
        _log_updates(db, host_id, now, [update], [recorded])
        return recorded

    results = each_or_alone(
        db, whole, [functools.partial(record, update) for update in updates]
    )
    db.execute("UPDATE hosts SET last_seen = ? WHERE id = ?", (now, host_id))
    return results


def _log_updates(
    db: sqlite3.Connection,
    host_id: str,
    now: float,
    updates: Sequence[command_flow_pb2.InfoUpdate],
    results: Sequence[Recorded],
) -> None:
    db.executemany(
        "INSERT INTO updates (host_id, received_at, kind, payload, error)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (
                host_id,
                now,
                update.WhichOneof("info"),
                update.SerializeToString(),
                recorded.error,
            )
            for update, recorded in zip(updates, results, strict=True)
        ],
    )


def _parse(cls: type[T], payload: bytes) -> T:
    message = cls()
    message.ParseFromString(payload)  # type: ignore[attr-defined]
    return message


def _with_id(info: host_pb2.HostInfo, host_id: str) -> host_pb2.HostInfo:
    copy = host_pb2.HostInfo()
    copy.CopyFrom(info)
    copy.id.value = host_id
    return copy


def _use_otp(db: sqlite3.Connection, otp: str, host_id: str, now: float) -> None:
    if not otp:
        raise Unauthenticated("the request carries no one-time password")
    row = db.execute("SELECT * FROM otps WHERE digest = ?", (digest(otp),)).fetchone()
    if row is None:
        raise OtpRejected("one-time password is not known to this control plane")
    if row["used_at"] is not None:
        raise OtpRejected("one-time password was already used")
    if row["expires_at"] <= now:
        expired = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row["expires_at"]))
        raise OtpRejected(f"one-time password expired at {expired}")
    db.execute(
        "UPDATE otps SET used_at = ?, host_id = ? WHERE digest = ?",
        (now, host_id, digest(otp)),
    )


def _store_host_info(
    db: sqlite3.Connection, host_id: str, info: host_pb2.HostInfo, now: float
) -> None:
    info = _with_id(info, host_id)
    db.execute(
        "UPDATE hosts SET info = ?, last_seen = ? WHERE id = ?",
        (info.SerializeToString(), now, host_id),
    )


def _require_host(db: sqlite3.Connection, host_id: str) -> None:
    if db.execute("SELECT 1 FROM hosts WHERE id = ?", (host_id,)).fetchone() is None:
        raise NotFound(f"no host with id {host_id!r}")


def _require_new_command(db: sqlite3.Connection, command_id: str) -> None:
    found = db.execute("SELECT 1 FROM commands WHERE id = ?", (command_id,))
    if found.fetchone() is not None:
        raise InvalidRequest(f"a command with id {command_id!r} already exists")


def _command_meta(command: command_flow_pb2.Command) -> Message | None:
    variant = command.WhichOneof("type")
    return getattr(command, variant).meta if variant else None


def with_meta(
    command: command_flow_pb2.Command, now: float
) -> tuple[command_flow_pb2.Command, str]:
    copy = command_flow_pb2.Command()
    copy.CopyFrom(command)
    meta = _command_meta(copy)
    if meta is None:
        return copy, str(uuid.uuid4())
    given = meta.api_command_id.value  # type: ignore[attr-defined]
    if not given:
        meta.api_command_id.value = str(uuid.uuid4())  # type: ignore[attr-defined]
    elif not _is_uuid(given):
        raise InvalidRequest(
            f"the command id {given[:80]!r} is not a UUID; give one, or leave "
            "meta.api_command_id empty and the control plane picks one"
        )
    if not meta.HasField("created_at"):
        _timestamp(now, meta.created_at)  # type: ignore[attr-defined]
    return copy, meta.api_command_id.value  # type: ignore[attr-defined]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _node_id(command: command_flow_pb2.Command) -> str:
    return command.node.id.value if command.HasField("node") else ""


def _apply(
    db: sqlite3.Connection,
    host_id: str,
    update: command_flow_pb2.InfoUpdate,
    now: float,
) -> Recorded:
    kind = update.WhichOneof("info")
    if kind == "host":
        return _apply_host(db, host_id, update.host, now)
    if kind == "node":
        return _apply_node(db, host_id, update.node, now)
    if kind == "command":
        return _apply_command(db, host_id, update.command, now)
    return Recorded(error="the update carries no host, node or command info")


def _apply_host(
    db: sqlite3.Connection, host_id: str, info: host_pb2.HostInfo, now: float
) -> Recorded:
    if info.id.value and info.id.value != host_id:
        return Recorded(
            error=f"host info names host {info.id.value!r}, not this host {host_id!r}"
        )
    _store_host_info(db, host_id, info, now)
    return Recorded()


def _apply_node(
    db: sqlite3.Connection, host_id: str, info: node_pb2.NodeInfo, now: float
) -> Recorded:
    if not info.id.value:
        return Recorded(error="node info carries no node id")
    row = db.execute(
        "SELECT info FROM nodes WHERE host_id = ? AND id = ?", (host_id, info.id.value)
    ).fetchone()
    merged = node_pb2.NodeInfo()
    if row is not None:
        merged.ParseFromString(row["info"])
    merged.MergeFrom(info)
    if info.HasField("container_status"):
        # A report with a status is the agent's whole view of the node: what
        # it leaves unset (a failure cleared, a height no longer known) is
        # unset now, not the value of an older report.
        for name in _CURRENT_ONLY:
            if not info.HasField(name):
                merged.ClearField(name)
    values = (merged.SerializeToString(), now, host_id, info.id.value)
    if row is None:
        db.execute(
            "INSERT INTO nodes (info, updated_at, host_id, id) VALUES (?, ?, ?, ?)",
            values,
        )
    else:  # in place: a replace would move the row and its index entry
        db.execute(
            "UPDATE nodes SET info = ?, updated_at = ? WHERE host_id = ? AND id = ?",
            values,
        )
    return Recorded()


#: NodeInfo fields that only a report's own values describe.
_CURRENT_ONLY = (
    "failure_reason",
    "block_height",
    "sync_status",
    "app_status",
    "onchain_name",
    "staking_status",
)


def _apply_command(
    db: sqlite3.Connection,
    host_id: str,
    info: command_flow_pb2.CommandInfo,
    now: float,
) -> Recorded:
    row = _answered_command(db, host_id, info.id.value)
    if row is None:
        return Recorded(
            error=f"command info names no unfinished command {info.id.value!r}"
            f" of host {host_id!r}"
        )
    if info.HasField("exit_code"):
        db.execute(
            "UPDATE commands SET state = ?, updated_at = ?, exit_code = ?,"
            " response = ? WHERE id = ?",
            (
                CommandState.FINISHED,
                now,
                info.exit_code,
                info.response if info.HasField("response") else None,
                row["id"],
            ),
        )
    elif row["state"] in (CommandState.QUEUED, CommandState.SENT):
        db.execute(
            "UPDATE commands SET state = ?, updated_at = ? WHERE id = ?",
            (CommandState.ACKED, now, row["id"]),
        )
    return Recorded(command_id=row["id"])


def _answered_command(
    db: sqlite3.Connection, host_id: str, command_id: str
) -> sqlite3.Row | None:
    # A `Command` without a variant has no id to answer to: the agent answers
    # it with an empty id, which goes to the oldest such command still open.
    if command_id:
        query = "SELECT * FROM commands WHERE host_id = ? AND id = ?"
        return db.execute(query, (host_id, command_id)).fetchone()
    return db.execute(
        "SELECT * FROM commands WHERE host_id = ? AND variant IS NULL"
        " AND state != ? ORDER BY seq LIMIT 1",
        (host_id, CommandState.FINISHED),
    ).fetchone()


def _host(row: sqlite3.Row) -> admin_pb2.Host:
    host = admin_pb2.Host(id=row["id"], online=bool(row["online"]))
    host.info.ParseFromString(row["info"])
    _timestamp(row["created_at"], host.created_at)
    _timestamp(row["last_seen"], host.last_seen)
    return host


def _node(row: sqlite3.Row) -> admin_pb2.Node:
    node = admin_pb2.Node(host_id=row["host_id"])
    node.info.ParseFromString(row["info"])
    _timestamp(row["updated_at"], node.updated_at)
    return node


def _command(row: sqlite3.Row) -> admin_pb2.CommandRecord:
    record = admin_pb2.CommandRecord(
        id=row["id"],
        host_id=row["host_id"],
        node_id=row["node_id"],
        state=CommandState(row["state"]).to_proto(),
    )
    record.command.ParseFromString(row["payload"])
    _timestamp(row["created_at"], record.created_at)
    _timestamp(row["updated_at"], record.updated_at)
    if row["exit_code"] is not None:
        record.exit_code = row["exit_code"]
    if row["response"] is not None:
        record.response = row["response"]
    return record
