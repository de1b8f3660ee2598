"""The agent's stream to the control plane, kept open across failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import grpc

from blockjoy.api.v1 import command_flow_pb2

from ._credentials import Credentials
from ._outbox import (
    BATCH_BYTES,
    BATCHES_HEADER,
    CONFIRMS_UPDATES_HEADER,
    MAX_MESSAGE_BYTES,
    Outbox,
    batched,
    in_batches,
)

__all__ = ["CHANNEL_OPTIONS", "Backoff", "CommandStream", "SilentPeer"]

log = logging.getLogger(__name__)

InfoUpdate = command_flow_pb2.InfoUpdate
Command = command_flow_pb2.Command

_METHOD = command_flow_pb2.DESCRIPTOR.services_by_name["CommandFlow"].methods_by_name[
    "Commands"
]
_PATH = f"/{_METHOD.containing_service.full_name}/{_METHOD.name}"

#: Transport keepalive: a ping after 330 s without traffic, which a gRPC
#: server with default settings accepts (it refuses pings more often than every
#: 5 minutes on an idle stream), and 10 s for the answer. No deadline: the
#: stream lives on. Messages up to the size limit the control plane uses. A
#: subchannel pool of each channel's own: grpc would otherwise hand a new
#: channel the connection of the old one, the very one that went silent.
CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


_NEEDS_AN_OPERATOR = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


class SilentPeer(Exception):
    """The control plane stopped confirming updates on an open stream."""


class Backoff:
    """Exponential delays with jitter, capped; reset after a good stream."""

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

    Each new stream, on a new channel, first carries every update the control
    plane has not confirmed, then ``greeting()`` (HostInfo and every
    NodeInfo, made afresh), then whatever comes next. Once the control plane
    has said it reads batches, updates that are ready together go out as one
    message; the agent reads the control plane's batches from the start.
    """

    #: A stream that stayed up this long resets the backoff.
    HEALTHY_AFTER = 10.0

    def __init__(
        self,
        *,
        credentials: Credentials,
        outbox: Outbox,
        on_command: Callable[[Command], None],
        greeting: Callable[[], Awaitable[list[InfoUpdate]]],
        heartbeat: Callable[[], Awaitable[None]] | None = None,
        heartbeat_interval: float = 20.0,
        heartbeat_timeout: float = 20.0,
        backoff: Backoff | None = None,
        options: tuple[tuple[str, int], ...] = CHANNEL_OPTIONS,
    ) -> None:
        self.credentials = credentials
        self.outbox = outbox
        self._on_command = on_command
        self._greeting = greeting
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._backoff = backoff or Backoff()
        self._options = options
        #: Whether the control plane confirms updates. Learnt from its
        #: response headers or its first confirmation, and kept across
        #: reconnects: a new stream through a black hole confirms nothing,
        #: and must still be found silent.
        self._confirming = False
        #: Whether the control plane of the open stream reads batches.
        self._batches = False
        #: Why a helper of the open stream cancelled its call, if one did.
        self._broken: Exception | None = None
        self.connected = anyio.Event()

    async def run(self) -> None:
        """Connect, serve, reconnect; returns only when cancelled."""
        while True:
            opened = time.monotonic()
            try:
                await self._session()
                log.warning("the control plane closed the stream")
            except grpc.aio.AioRpcError as exc:
                self._log_failure(exc)
            except SilentPeer:
                pass  # logged by the watchdog
            except Exception:  # a bug here must not end the agent: reconnect
                log.exception("the stream to %s failed", self.credentials.api_url)
            self.connected = anyio.Event()
            if time.monotonic() - opened > self.HEALTHY_AFTER:
                self._backoff.reset()
            delay = self._backoff.next()
            log.info("reconnecting in %.1fs", delay)
            await anyio.sleep(delay)

    def _log_failure(self, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        # A refused token or host needs an operator; anything else heals.
        level = logging.ERROR if code in _NEEDS_AN_OPERATOR else logging.WARNING
        log.log(
            level,
            "stream to %s failed: %s: %s",
            self.credentials.api_url,
            code.name,
            exc.details(),
        )

    async def _session(self) -> None:
        target = self.credentials.api_url
        async with grpc.aio.insecure_channel(target, options=self._options) as channel:
            commands = channel.stream_stream(
                _PATH,
                request_serializer=bytes,
                response_deserializer=Command.FromString,
            )
            call = commands(
                metadata=(*self.credentials.metadata, (BATCHES_HEADER, "1"))
            )
            self._broken = None
            self._batches = False
            helpers = [
                asyncio.create_task(
                    self._guard(self._write(call), call), name="stream writer"
                ),
                asyncio.create_task(
                    self._guard(self._watch(call), call), name="stream watchdog"
                ),
                asyncio.create_task(self._learn(call), name="stream headers"),
            ]
            try:
                await self._read(call)
            except asyncio.CancelledError:
                # A helper cancels the call when the stream cannot go on (a
                # silent peer, a failure of its own), which grpc reports as
                # a cancellation; that one means reconnect.
                task = asyncio.current_task()
                broken = self._broken
                if broken is not None and task is not None and not task.cancelling():
                    raise broken from None
                raise
            finally:
                for task in helpers:
                    task.cancel()
                for task in helpers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _guard(
        self, work: Awaitable[None], call: grpc.aio.StreamStreamCall
    ) -> None:
        """Run a helper of the stream; if it fails, end the stream with it.

        A writer that died quietly would leave the stream open and silent,
        with updates piling up unsent: the stream is replaced instead.
        """
        try:
            await work
        except Exception as exc:
            self._broken = exc
            call.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        await call.wait_for_connection()
        log.info("stream to %s open", self.credentials.api_url)
        self.connected.set()
        while True:
            command = await call.read()
            if command is grpc.aio.EOF:
                return
            self._take(command)

    def _take(self, command: Command) -> None:
        kind = command.WhichOneof("type")
        if kind == "batch":
            for each in command.batch.commands:
                self._take(each)
        elif kind == "received":
            self._confirming = True
            self.outbox.confirm(command.received.up_to)
        else:
            self._on_command(command)

    async def _learn(self, call: grpc.aio.StreamStreamCall) -> None:
        """Learn from the control plane's response headers whether it confirms.

        A plain v1 peer may send its headers late, with its first command,
        or never: nothing waits for them.
        """
        try:
            headers = await call.initial_metadata()
        except Exception as exc:  # the stream failed; its reader reports why
            log.debug("no response headers from the control plane: %r", exc)
            return
        if headers is None:
            return
        if headers.get(CONFIRMS_UPDATES_HEADER) == "1":
            if not self._confirming:
                log.debug("the control plane confirms updates")
            self._confirming = True
        if headers.get(BATCHES_HEADER) == "1":
            log.debug("the control plane reads batches of updates")
            self._batches = True

    async def _watch(self, call: grpc.aio.StreamStreamCall) -> None:
        """Send a heartbeat when idle; end a stream whose peer went silent.

        Only a control plane that confirms updates can be watched this way;
        with one that does not, the transport keepalive is the only check,
        and updates the stream carried are taken as delivered.
        """
        await self.connected.wait()
        opened = last_beat = time.monotonic()
        plain = False
        while True:
            await anyio.sleep(min(1.0, self._heartbeat_interval / 4))
            now = time.monotonic()
            hold = self._heartbeat_timeout
            if not self._confirming and now - opened >= hold:
                # A control plane that has confirmed nothing this long does
                # not confirm at all: an update the stream carried that long
                # ago, and is still open, counts as delivered.
                if not plain:
                    plain = True
                    log.info(
                        "the control plane does not confirm updates; an update "
                        "counts as delivered %gs after the stream carried it",
                        hold,
                    )
                self.outbox.carried(before=now - hold)
            since = self.outbox.waiting_since()
            if self._confirming and since and now - since > self._heartbeat_timeout:
                log.warning(
                    "the control plane confirmed nothing for %.0fs; the stream "
                    "looks dead, reconnecting",
                    now - since,
                )
                raise SilentPeer(self.credentials.api_url)
            if self._heartbeat and now - last_beat >= self._heartbeat_interval:
                last_beat = now
                await self._heartbeat()

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            backlog = self.outbox.rewind()
            while backlog:
                backlog -= await self._send_next(call, most=backlog)
            greeting = [update.SerializeToString() for update in await self._greeting()]
            for message in in_batches(greeting, BATCH_BYTES if self._batches else 0):
                await call.write(message)
            while True:
                await self._send_next(call)
        except (
            grpc.aio.AioRpcError,
            grpc.aio.UsageError,
            asyncio.InvalidStateError,
            RuntimeError,
        ) as exc:
            # The reader sees the same failure and ends the session; what was
            # not confirmed goes out again on the next stream.
            log.debug("writing to the stream failed: %r", exc)

    async def _send_next(
        self, call: grpc.aio.StreamStreamCall, most: int | None = None
    ) -> int:
        """Send what the outbox has ready next; how many updates that was."""
        limit = BATCH_BYTES if self._batches else 0
        payloads = await self.outbox.take(limit, most)
        await call.write(batched(payloads))
        self.outbox.sent()
        return len(payloads)
