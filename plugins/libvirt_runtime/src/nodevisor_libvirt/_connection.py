"""One libvirt connection, its worker threads, and its event callbacks.

libvirt's default event loop is registered once per process, before any
connection opens, and run by a daemon thread for the life of the process.
Each connection registers a lifecycle callback (which feeds the runtime's
``EventHub``) and a close callback: when libvirtd drops the connection, a
thread reopens it after ``reconnect_delay`` and registers both again, so
events keep arriving without anyone polling.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import libvirt

from nodevisor import RuntimeFailure

from ._domain import METADATA_NS, read_tag
from ._errors import translated
from ._events import EventHub

__all__ = ["Connection", "ensure_event_loop"]

_log = logging.getLogger(__name__)
_loop_lock = threading.Lock()
_loop_started = False

T = TypeVar("T")


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and start the thread running it."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors reach the caller as exceptions; libvirt need not print them.
        libvirt.registerErrorHandler(_ignore_error, None)
        thread = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        thread.start()
        _loop_started = True


def _ignore_error(_context: Any, _error: Any) -> None:
    return None


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            _log.exception("libvirt's event loop failed one iteration")


class Connection:
    """A lazily opened ``virConnect`` for one host's runtime."""

    def __init__(
        self, uri: str, host_id: str, hub: EventHub, max_threads: int, delay: float
    ) -> None:
        self.uri = uri
        self._host = host_id
        self._hub = hub
        self._delay = delay
        self._limiter = anyio.CapacityLimiter(max_threads)
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._closing = False
        #: How many times the connection was opened (1 + reconnects).
        self.opened = 0

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The limit on worker threads that every blocking call shares."""
        return self._limiter

    async def run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(conn, *args)`` in a worker thread.

        ``what`` completes "failed to ..." in the error and the log lines.
        """
        _log.debug("%s: started", what)
        call = functools.partial(self._call, what, function, *args)
        result = await anyio.to_thread.run_sync(call, limiter=self._limiter)
        _log.debug("%s: complete", what)
        return result

    def _call(self, what: str, function: Callable[..., T], *args: Any) -> T:
        with translated(what, self.uri):
            return function(self.connected(), *args)

    def connected(self) -> libvirt.virConnect:
        """The open connection, opening it first if needed (blocks)."""
        with self._lock:
            if self._closing:
                raise RuntimeFailure(f"the libvirt connection to {self.uri} is closed")
            if self._conn is None or not self._alive(self._conn):
                self._conn = self._open()
            return self._conn

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _open(self) -> libvirt.virConnect:
        ensure_event_loop()
        conn = libvirt.open(self.uri)
        conn.registerCloseCallback(self._on_close, None)
        self._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )
        self.opened += 1
        _log.info("connected to libvirt at %s (connection %d)", self.uri, self.opened)
        return conn

    def _on_lifecycle(
        self, conn: Any, domain: libvirt.virDomain, event: int, detail: int, _: Any
    ) -> None:
        node_id = self._owned_node(domain)
        if node_id is not None:
            self._hub.publish(node_id, event, detail)

    def _owned_node(self, domain: libvirt.virDomain) -> str | None:
        try:
            metadata = domain.metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0
            )
        except libvirt.libvirtError:
            # An undefined domain has no metadata left; its name still tells.
            return _node_from_name(domain.name())
        tag = read_tag(metadata)
        return tag.node_id if tag and tag.host_id == self._host else None

    def _on_close(self, conn: Any, reason: int, _: Any) -> None:
        _log.warning(
            "libvirt at %s closed the connection (reason %d)", self.uri, reason
        )
        with self._lock:
            if self._conn is not conn and self._conn is not None:
                return
            self._conn = None
            if self._closing:
                return
        threading.Thread(
            target=self._reopen, name="libvirt-reopen", daemon=True
        ).start()

    def _reopen(self) -> None:
        delay = self._delay
        while not self._closing:
            threading.Event().wait(delay)
            try:
                self.connected()
                return
            except (libvirt.libvirtError, RuntimeFailure) as exc:
                _log.warning("reopening libvirt at %s failed: %s", self.uri, exc)
                delay = min(delay * 2, 30.0)

    def close(self) -> None:
        """Deregister the callbacks and close the connection (blocks)."""
        with self._lock:
            self._closing = True
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
            conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError:
            _log.warning("closing libvirt at %s failed", self.uri, exc_info=True)

    async def aclose(self) -> None:
        """Close the connection in a worker thread, shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close, limiter=self._limiter)


def _node_from_name(name: str) -> str | None:
    # Undefine events of domains not ours are dropped by the hub's readers:
    # the runtime only asks about its own node ids.
    prefix = "nodevisor-"
    return name[len(prefix) :] if name.startswith(prefix) else None
