"""A small loopback TCP proxy that tests use to break the agent's stream.

``TcpProxy(target)`` forwards every connection it accepts to ``target``
(``host:port``). A test can then:

- ``cut()``: close every open connection, on both sides, at once;
- ``black_hole()``: make every open connection silent for good (bytes are
  read and dropped, no socket is closed, neither peer hears anything), and
  close new connections at once, until ``resume()``;
- ``resume()``: forward new connections again.

It runs in the test's event loop: ``async with TcpProxy(target) as proxy``.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

import anyio
from anyio.abc import ByteStream, SocketStream, TaskGroup

__all__ = ["TcpProxy"]

log = logging.getLogger(__name__)

_CHUNK = 65536


class _Connection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.silent = False
        self.scope = anyio.CancelScope()


class TcpProxy:
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host, int(port)
        self.address = ""
        #: How many connections were accepted, and how many were forwarded.
        self.accepted = 0
        self.forwarded = 0
        self._refusing = False
        self._open: set[_Connection] = set()
        self._tasks: TaskGroup | None = None

    def __repr__(self) -> str:
        mode = "black hole" if self._refusing else "forwarding"
        return f"<TcpProxy {self.address} -> {self.target_port} {mode}>"

    async def __aenter__(self) -> TcpProxy:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.address = f"127.0.0.1:{port}"
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    def black_hole(self) -> None:
        """Silence every open connection for good; close new ones at once."""
        self._refusing = True
        for connection in self._open:
            connection.silent = True
        log.info("proxy %s: %d connections silenced", self.address, len(self._open))

    def resume(self) -> None:
        """Forward new connections again (silenced ones stay silent)."""
        self._refusing = False

    def cut(self) -> int:
        """Close every open connection, both sides; how many there were."""
        for connection in self._open:
            connection.scope.cancel()
        log.info("proxy %s: cut %d connections", self.address, len(self._open))
        return len(self._open)

    async def _handle(self, client: SocketStream) -> None:
        self.accepted += 1
        async with client:
            if self._refusing:
                return
            try:
                upstream = await anyio.connect_tcp(self.target_host, self.target_port)
            except OSError as exc:
                log.info("proxy %s: target unreachable: %s", self.address, exc)
                return
            self.forwarded += 1
            connection = _Connection(self.accepted)
            self._open.add(connection)
            try:
                async with upstream:
                    await self._pipe(connection, client, upstream)
            finally:
                self._open.discard(connection)

    async def _pipe(
        self, connection: _Connection, client: SocketStream, upstream: SocketStream
    ) -> None:
        with connection.scope:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._pump, connection, client, upstream, pumps)
                pumps.start_soon(self._pump, connection, upstream, client, pumps)

    @staticmethod
    async def _pump(
        connection: _Connection, source: ByteStream, sink: ByteStream, pumps: TaskGroup
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                chunk = await source.receive(_CHUNK)
                if not connection.silent:
                    await sink.send(chunk)
        # A forwarding connection ends when either side ends; a silent one
        # keeps the other side open, as a real network partition would.
        if not connection.silent:
            pumps.cancel_scope.cancel()
