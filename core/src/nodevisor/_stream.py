"""The agent's stream to the control plane, kept open across failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import anyio
import grpc

from blockjoy.api.v1 import command_flow_pb2, command_flow_pb2_grpc

from ._credentials import Credentials

__all__ = ["Backoff", "CommandStream", "Outbox"]

log = logging.getLogger(__name__)

InfoUpdate = command_flow_pb2.InfoUpdate

#: Channel options: keepalive pings that a default gRPC server accepts (one
#: every 30 s, only while a call is open), and message size limits.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
)


class Outbox:
    """Updates waiting to be written to the stream, oldest first."""

    def __init__(self) -> None:
        self._items: deque[InfoUpdate] = deque()
        self._ready = anyio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, update: InfoUpdate) -> None:
        self._items.append(update)
        self._ready.set()

    def put_first(self, updates: Iterable[InfoUpdate]) -> None:
        self._items.extendleft(reversed(list(updates)))
        if self._items:
            self._ready.set()

    async def peek(self) -> InfoUpdate:
        while not self._items:
            self._ready = anyio.Event()
            await self._ready.wait()
        return self._items[0]

    def done(self, update: InfoUpdate) -> None:
        if self._items and self._items[0] is update:
            self._items.popleft()


class Backoff:
    """Exponential delays with full jitter, capped; reset after a good stream."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial, self.cap = initial, cap
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * 2**self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)


class CommandStream:
    """Holds one ``CommandFlow.Commands`` stream open, reconnecting as needed.

    ``greeting`` is called on every connect; its updates (HostInfo and every
    NodeInfo) go out before anything else waiting in the outbox.
    """

    #: A stream that stayed up this long resets the backoff.
    HEALTHY_AFTER = 10.0

    def __init__(
        self,
        *,
        credentials: Credentials,
        outbox: Outbox,
        on_command: Callable[[command_flow_pb2.Command], None],
        greeting: Callable[[], Awaitable[list[InfoUpdate]]],
        backoff: Backoff | None = None,
    ) -> None:
        self.credentials = credentials
        self.outbox = outbox
        self._on_command = on_command
        self._greeting = greeting
        self._backoff = backoff or Backoff()
        self.connected = anyio.Event()

    async def run(self) -> None:
        """Connect, serve, reconnect; returns only when cancelled."""
        while True:
            opened = time.monotonic()
            try:
                await self._session()
                log.warning("control plane closed the stream")
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "stream to %s failed: %s: %s",
                    self.credentials.api_url,
                    exc.code().name,
                    exc.details(),
                )
            self.connected = anyio.Event()
            if time.monotonic() - opened > self.HEALTHY_AFTER:
                self._backoff.reset()
            delay = self._backoff.next()
            log.info("reconnecting in %.1fs", delay)
            await anyio.sleep(delay)

    async def _session(self) -> None:
        target = self.credentials.api_url
        async with grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS
        ) as channel:
            stub = command_flow_pb2_grpc.CommandFlowStub(channel)
            call = stub.Commands(metadata=self.credentials.metadata)
            self.outbox.put_first(await self._greeting())
            writer = asyncio.create_task(self._write(call), name="stream writer")
            try:
                await self._read(call)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        await call.wait_for_connection()
        log.info("stream to %s open", self.credentials.api_url)
        self.connected.set()
        while True:
            command = await call.read()
            if command is grpc.aio.EOF:
                return
            self._on_command(command)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            update = await self.outbox.peek()
            try:
                await call.write(update)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
                # The reader sees the same failure and ends the session; the
                # update stays first in the outbox for the next stream.
                log.debug("write failed, keeping the update: %r", exc)
                return
            self.outbox.done(update)
