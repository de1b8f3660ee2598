"""Domain lifecycle events, as libvirt's event loop delivers them.

libvirt calls ``EventHub.publish`` from its event-loop thread. The hub keeps
each node's last event under a lock and hands every event to the async
subscribers of ``LibvirtRuntime.events()`` with their asyncio loop's
``call_soon_threadsafe``, so libvirt's thread never waits for a subscriber
(the agent runs on asyncio, as grpc.aio needs).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["DomainEvent", "EventHub", "EventKind"]

_Subscriber = tuple[asyncio.AbstractEventLoop, "MemoryObjectSendStream[DomainEvent]"]

_log = logging.getLogger(__name__)
_BUFFER = 256


class EventKind(enum.Enum):
    """What happened to a domain, from ``VIR_DOMAIN_EVENT_*``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8
    UNKNOWN = -1

    @classmethod
    def of(cls, code: int) -> EventKind:
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN


# VIR_DOMAIN_EVENT_STOPPED_* details.
_STOP_DETAILS = {
    0: "shut down",
    1: "destroyed",
    2: "crashed",
    3: "migrated",
    4: "saved",
    5: "failed",
    6: "restored from a snapshot",
}


@dataclass(frozen=True)
class DomainEvent:
    """One lifecycle event of a node's domain."""

    #: Increases by one with every event the runtime receives.
    sequence: int
    node_id: str
    kind: EventKind
    #: libvirt's detail code, and what it means for a stop.
    detail_code: int
    detail: str
    #: ``time.monotonic()`` when the event arrived.
    received: float

    @property
    def is_stop(self) -> bool:
        """Whether the domain's processes ended with this event."""
        return self.kind in (EventKind.STOPPED, EventKind.CRASHED)


class EventHub:
    """The last event of each node and the subscribers to new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._last: dict[str, DomainEvent] = {}
        self._subscribers: list[_Subscriber] = []
        self.changed = threading.Condition(self._lock)

    def publish(self, node_id: str, kind: int, detail: int) -> DomainEvent:
        """Record an event (called from libvirt's event-loop thread)."""
        event_kind = EventKind.of(kind)
        with self._lock:
            event = DomainEvent(
                sequence=next(self._counter),
                node_id=node_id,
                kind=event_kind,
                detail_code=detail,
                detail=_describe(event_kind, detail),
                received=time.monotonic(),
            )
            self._last[node_id] = event
            subscribers = list(self._subscribers)
            self.changed.notify_all()
        _log.info(
            "node %s: domain event %s (%s)", node_id, event_kind.name, event.detail
        )
        for loop, stream in subscribers:
            _deliver(loop, stream, event)
        return event

    def last(self, node_id: str) -> DomainEvent | None:
        """The node's most recent event, if any arrived."""
        with self._lock:
            return self._last.get(node_id)

    def subscribe(self) -> AsyncIterator[DomainEvent]:
        """Every event from this call on, until the iterator is closed.

        Call it on the event loop that iterates it: the subscription starts
        at once, so no event is lost before the first iteration.
        """
        send, receive = anyio.create_memory_object_stream[DomainEvent](_BUFFER)
        entry = (asyncio.get_running_loop(), send)
        with self._lock:
            self._subscribers.append(entry)
        return self._drain(entry, receive)

    async def _drain(
        self, entry: _Subscriber, receive: MemoryObjectReceiveStream[DomainEvent]
    ) -> AsyncIterator[DomainEvent]:
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)
            entry[1].close()

    def close(self) -> None:
        """End every subscription."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for loop, stream in subscribers:
            _call(loop, stream.close)


def _describe(kind: EventKind, detail: int) -> str:
    if kind is EventKind.STOPPED:
        return _STOP_DETAILS.get(detail, f"stopped (detail {detail})")
    return kind.name.lower()


def _deliver(
    loop: asyncio.AbstractEventLoop,
    stream: MemoryObjectSendStream[DomainEvent],
    event: DomainEvent,
) -> None:
    def send() -> None:
        try:
            stream.send_nowait(event)
        except anyio.WouldBlock:
            _log.warning("a slow event subscriber missed event %d", event.sequence)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    _call(loop, send)


def _call(loop: asyncio.AbstractEventLoop, function: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(function)
    except RuntimeError:
        _log.debug("an event subscriber's loop is closed", exc_info=True)
