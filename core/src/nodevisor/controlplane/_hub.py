"""In-memory fan-out between agents' streams and operators' calls.

A ``Session`` is one open ``Commands`` stream; the hub wakes it when a command
is queued for its host and ends it when a newer stream replaces it. Watchers
receive every update an agent sends, as an ``Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator

import anyio
import grpc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from blockjoy.api.v1 import command_flow_pb2

__all__ = ["Event", "Follower", "Hub", "Outgoing", "Session"]

log = logging.getLogger(__name__)

#: A queued command: its queue number (``commands.seq``), its id and itself.
Outgoing = tuple[int, str, command_flow_pb2.Command]


@dataclasses.dataclass(frozen=True)
class Event:
    """One update from a host; ``command_id`` is the command it answers."""

    host_id: str
    received_at: float
    update: command_flow_pb2.InfoUpdate
    command_id: str | None = None


class Session:
    """One open ``Commands`` stream of a host."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.wake = asyncio.Event()
        self.ended = asyncio.Event()
        self.done = asyncio.Event()
        self.end_status = grpc.StatusCode.OK
        self.end_details = ""
        #: Whether commands were queued since the sender last looked, that
        #: only the database has.
        self.queued = True
        #: Commands queued since the sender last looked, handed over with
        #: their queue numbers, in order.
        self.outgoing: list[Outgoing] = []
        #: The highest update number stored, and the highest confirmed.
        self.stored_up_to = 0
        self.confirmed_up_to = 0
        #: Whether the agent reads ``CommandBatch`` messages.
        self.batches = False

    def __repr__(self) -> str:
        state = "ended" if self.ended.is_set() else "open"
        return f"<Session host={self.host_id} {state}>"

    def stored(self, seq: int) -> None:
        """The update numbered ``seq`` is stored; the sender confirms it."""
        if seq > self.stored_up_to:
            self.stored_up_to = seq
            self.wake.set()

    def end(self, status: grpc.StatusCode, details: str) -> None:
        """Ask the stream to close with ``status``."""
        self.end_status, self.end_details = status, details
        self.ended.set()


class Follower:
    """A watcher of updates about chosen commands and nodes (``Hub.follow``)."""

    def __init__(
        self,
        watchers: dict[tuple[str, str, str], set[MemoryObjectSendStream[Event]]],
        send: MemoryObjectSendStream[Event],
        events: MemoryObjectReceiveStream[Event],
    ) -> None:
        self._watchers, self._send = watchers, send
        #: The updates, as they arrive.
        self.events = events
        self.keys: set[tuple[str, str, str]] = set()

    def add(self, host_id: str, kind: str, item_id: str) -> None:
        """Receive the updates about a ``"command"`` or a ``"node"`` of a host."""
        key = (host_id, kind, item_id)
        self._watchers.setdefault(key, set()).add(self._send)
        self.keys.add(key)

    def remove(self, host_id: str, kind: str, item_id: str) -> None:
        key = (host_id, kind, item_id)
        self.keys.discard(key)
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(self._send)
            if not watchers:
                del self._watchers[key]


class Hub:
    """The open sessions, by host, and the watchers of updates."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._live: set[Session] = set()
        self._watchers: dict[
            tuple[str, str, str], set[MemoryObjectSendStream[Event]]
        ] = {}

    def open(self, host_id: str) -> Session:
        """A new session for ``host_id``; it replaces the host's open one."""
        old = self._sessions.get(host_id)
        if old is not None:
            log.info("a new stream of host %s replaces the open one", host_id)
            old.end(grpc.StatusCode.ABORTED, "replaced by a newer stream of this host")
        session = self._sessions[host_id] = Session(host_id)
        self._live.add(session)
        return session

    def close(self, session: Session) -> bool:
        """Forget ``session``; whether it was its host's current one."""
        if self._sessions.get(session.host_id) is not session:
            return False
        del self._sessions[session.host_id]
        return True

    def finished(self, session: Session) -> None:
        """``session``'s stream has cleaned up after itself."""
        self._live.discard(session)
        session.done.set()

    async def end_all(self, status: grpc.StatusCode, details: str) -> None:
        """End every session, and wait until their streams cleaned up."""
        for session in list(self._live):
            session.end(status, details)
        for session in list(self._live):
            await session.done.wait()

    def wake(self, host_id: str, command: Outgoing | None = None) -> None:
        """Tell the host's open stream, if any, that commands were queued.

        ``command`` is the one just queued, committed, so that the stream
        can send it without reading the database; without it, the stream
        looks in the database.
        """
        session = self._sessions.get(host_id)
        if session is not None:
            if command is None:
                session.queued = True
            else:
                session.outgoing.append(command)
            session.wake.set()

    @contextlib.contextmanager
    def watch(
        self, host_id: str, command_id: str, node_id: str = ""
    ) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """Receive the updates about one command and its node until the block ends.

        Only the updates that answer ``command_id`` or describe ``node_id``
        are delivered, so that many watchers cost little per update.
        """
        with self.follow() as follower:
            follower.add(host_id, "command", command_id)
            if node_id:
                follower.add(host_id, "node", node_id)
            yield follower.events

    @contextlib.contextmanager
    def follow(self) -> Iterator[Follower]:
        """Receive the updates about the commands and nodes ``add``-ed meanwhile."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        follower = Follower(self._watchers, send, receive)
        try:
            yield follower
        finally:
            for key in list(follower.keys):
                follower.remove(*key)
            send.close()
            receive.close()

    def publish(self, event: Event) -> None:
        keys = []
        if event.command_id:
            keys.append((event.host_id, "command", event.command_id))
        if event.update.HasField("node"):
            keys.append((event.host_id, "node", event.update.node.id.value))
        delivered: set[MemoryObjectSendStream[Event]] = set()
        for key in keys:
            for watcher in self._watchers.get(key, ()):
                if watcher not in delivered:
                    delivered.add(watcher)
                    watcher.send_nowait(event)
