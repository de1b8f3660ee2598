"""The services agents call: ``blockjoy.api.v1.Hosts`` and ``CommandFlow``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import anyio
import grpc
from google.protobuf.message import DecodeError

from blockjoy.api.v1 import (
    command_flow_pb2,
    command_flow_pb2_grpc,
    common_pb2,
    host_pb2,
    host_pb2_grpc,
)

from .._outbox import BATCHES_HEADER, CONFIRMS_UPDATES_HEADER, grouped
from ._db import Database, Recorded, mark_sent, record_updates
from ._errors import InvalidRequest, abort_on_error
from ._hub import Event, Hub, Session
from ._tokens import bearer_token

__all__ = [
    "CommandFlowServicer",
    "HostsServicer",
    "authenticate_host",
    "reads_batches",
]

log = logging.getLogger(__name__)

#: How long a confirmation of updates waits for a command to go with it.
CONFIRM_LINGER = 0.02


async def authenticate_host(db: Database, context: grpc.aio.ServicerContext) -> str:
    """The id of the host whose bearer token the call carries."""
    token = bearer_token(context.invocation_metadata())
    return await db.call(db.host_for_token, token)


async def record(
    db: Database, hub: Hub, host_id: str, update: command_flow_pb2.InfoUpdate
) -> str | None:
    """Store and publish one update; why it was not applied, if it was not."""
    recorded = await db.call(db.record_update, host_id, update)
    _published(hub, host_id, time.time(), update, recorded)
    return recorded.error


def _published(
    hub: Hub,
    host_id: str,
    received_at: float,
    update: command_flow_pb2.InfoUpdate,
    recorded: Recorded,
) -> None:
    if recorded.error:
        log.warning(
            "host %s sent an update that was not applied: %s", host_id, recorded.error
        )
    hub.publish(Event(host_id, received_at, update, recorded.command_id))


def _log_failed_write(written: asyncio.Future[None]) -> None:
    # Only bookkeeping: a command not marked sent is still sent again on
    # the next stream, as every unfinished command is.
    if not written.cancelled() and written.exception() is not None:
        log.error("could not mark commands sent: %r", written.exception())


class HostsServicer(host_pb2_grpc.HostsServicer):
    """Provisioning, and host info outside the command stream."""

    def __init__(self, db: Database, hub: Hub) -> None:
        self._db, self._hub = db, hub

    async def Provision(
        self,
        request: host_pb2.ProvisionHostRequest,
        context: grpc.aio.ServicerContext,
    ) -> host_pb2.ProvisionHostResponse:
        async with abort_on_error(context):
            host_id, token = await self._db.call(
                self._db.provision, request.otp, request.info
            )
        response = host_pb2.ProvisionHostResponse(
            host_id=common_pb2.Uuid(value=host_id), token=token
        )
        if request.HasField("request_id"):
            response.origin_request_id.CopyFrom(request.request_id)
        return response

    async def InfoUpdate(
        self,
        request: host_pb2.HostInfoUpdateRequest,
        context: grpc.aio.ServicerContext,
    ) -> host_pb2.HostInfoUpdateResponse:
        async with abort_on_error(context):
            host_id = await authenticate_host(self._db, context)
            update = command_flow_pb2.InfoUpdate(host=request.info)
            error = await record(self._db, self._hub, host_id, update)
            if error:
                raise InvalidRequest(error)
        response = host_pb2.HostInfoUpdateResponse()
        if request.HasField("request_id"):
            response.origin_request_id.CopyFrom(request.request_id)
        return response


class CommandFlowServicer(command_flow_pb2_grpc.CommandFlowServicer):
    """The agents' long-lived command streams."""

    def __init__(self, db: Database, hub: Hub) -> None:
        self._db, self._hub = db, hub

    async def Commands(
        self,
        request_iterator: AsyncIterator[command_flow_pb2.InfoUpdate],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async with abort_on_error(context):
            host_id = await authenticate_host(self._db, context)
        # Before anything else: an agent that has seen no confirmation yet
        # must not take this control plane for one that never confirms.
        await context.send_initial_metadata(
            ((CONFIRMS_UPDATES_HEADER, "1"), (BATCHES_HEADER, "1"))
        )
        session = self._hub.open(host_id)
        session.batches = reads_batches(context.invocation_metadata())
        try:
            await self._db.call(self._db.set_online, host_id, True)
            log.info("host %s connected", host_id)
            await self._run(session, request_iterator, context)
        finally:
            await asyncio.shield(self._disconnect(session))
        if session.ended.is_set():
            context.set_code(session.end_status)
            context.set_details(session.end_details)

    async def _run(
        self,
        session: Session,
        updates: AsyncIterator[command_flow_pb2.InfoUpdate],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._send, session, context)
            tg.start_soon(self._cancel_when_ended, session, tg.cancel_scope)
            await self._receive(session, updates)
            tg.cancel_scope.cancel()

    async def _receive(
        self, session: Session, updates: AsyncIterator[command_flow_pb2.InfoUpdate]
    ) -> None:
        """Record updates as they arrive; those that came meanwhile in one commit.

        Returns once the agent stopped sending and everything it sent is
        recorded.
        """
        inbox: list[command_flow_pb2.InfoUpdate] = []
        arrived = asyncio.Event()
        ended = False
        unreadable: DecodeError | None = None

        async def read() -> None:
            nonlocal ended, unreadable
            try:
                async for update in updates:
                    inbox.extend(_unbatched(update))
                    arrived.set()
            except DecodeError as exc:  # what came before it is still recorded
                unreadable = exc
            ended = True
            arrived.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            while not (ended and not inbox):
                await arrived.wait()
                arrived.clear()
                batch = inbox[:]
                inbox.clear()
                await self._record(session, batch)
        if unreadable is not None:
            why = (
                "a message on the stream is not an InfoUpdate, or nests batches "
                f"too deep ({unreadable}); the stream is closed"
            )
            log.warning("host %s: %s", session.host_id, why)
            session.end(grpc.StatusCode.INVALID_ARGUMENT, why)

    async def _record(
        self, session: Session, batch: list[command_flow_pb2.InfoUpdate]
    ) -> None:
        host_id = session.host_id
        try:
            results = await self._db.write(record_updates, host_id, batch)
        except Exception:  # unconfirmed: the agent sends them again
            log.exception("could not record %d updates of host %s", len(batch), host_id)
            return
        now = time.time()
        for update, recorded in zip(batch, results, strict=True):
            if isinstance(recorded, Exception):
                log.error(
                    "could not record an update of host %s: %r", host_id, recorded
                )
                continue
            _published(self._hub, host_id, now, update, recorded)
            session.stored(update.seq)

    async def _send(self, session: Session, context: grpc.aio.ServicerContext) -> None:
        try:
            await self._send_commands(session, context)
        except Exception as exc:
            # The agent went away between two writes: the reader sees the
            # stream end too, and what was not confirmed goes out again.
            if not context.done():
                raise
            log.debug("stream of host %s gone while writing: %r", session.host_id, exc)

    async def _send_commands(
        self, session: Session, context: grpc.aio.ServicerContext
    ) -> None:
        # Every unfinished command goes out once per stream, in queue order:
        # delivery is at least once, and the agent answers repeats again.
        # The database is read when the stream opens; commands queued later
        # are handed over by the hub once committed, in queue order (those
        # numbered up to the last one sent were in a read, or are finished).
        db = self._db
        session.queued = False
        session.outgoing.clear()
        pending = await db.call(db.unfinished_commands, session.host_id, 0)
        last = 0
        while True:
            await self._write(session, context, [command for _, _, command in pending])
            if pending:
                for seq, command_id, _ in pending:
                    log.debug("sent command %s to host %s", command_id, session.host_id)
                    last = max(last, seq)
                sent = [command_id for _, command_id, _ in pending]
                db.write(mark_sent, sent).add_done_callback(_log_failed_write)
            # Confirmations wake the sender too. One with no command to ride
            # along with waits a little for one: under load the next command
            # comes within milliseconds, and a confirmation need not be
            # prompt (the agent only trims its outbox with it, and takes a
            # stream for dead after many seconds without one).
            while not (session.queued or session.outgoing):
                await session.wake.wait()
                session.wake.clear()
                await _commands_within(session, CONFIRM_LINGER)
                if not (session.queued or session.outgoing):
                    await self._write(session, context, [])
            if session.queued:  # queued without the command in hand: look
                session.queued = False
                session.outgoing.clear()
                pending = await db.call(db.unfinished_commands, session.host_id, last)
            else:
                pending = [item for item in session.outgoing if item[0] > last]
                session.outgoing.clear()

    @staticmethod
    async def _write(
        session: Session,
        context: grpc.aio.ServicerContext,
        commands: list[command_flow_pb2.Command],
    ) -> None:
        """Send ``commands``, then confirm what is stored and not yet confirmed.

        To an agent that reads batches they go together, in batches of at
        most ``BATCH_BYTES``; to any other, one message each.
        """
        up_to = session.stored_up_to
        if up_to > session.confirmed_up_to:
            received = command_flow_pb2.UpdatesReceived(up_to=up_to)
            commands = [*commands, command_flow_pb2.Command(received=received)]
        messages = _in_batches(commands) if session.batches else commands
        for message in messages:
            await context.write(message)
        session.confirmed_up_to = max(session.confirmed_up_to, up_to)

    @staticmethod
    async def _cancel_when_ended(session: Session, scope: anyio.CancelScope) -> None:
        await session.ended.wait()
        scope.cancel()

    async def _disconnect(self, session: Session) -> None:
        try:
            if self._hub.close(session):
                await self._db.call(self._db.set_online, session.host_id, False)
            log.info("host %s disconnected", session.host_id)
        finally:
            self._hub.finished(session)


async def _commands_within(session: Session, seconds: float) -> None:
    """Return once commands wait to go to the session's host, or after
    ``seconds``."""
    with anyio.move_on_after(seconds):
        while not (session.queued or session.outgoing):
            await session.wake.wait()
            session.wake.clear()


def reads_batches(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
    """Whether a call's request headers say its caller reads batches."""
    return any(key == BATCHES_HEADER and value == "1" for key, value in metadata or ())


def _unbatched(
    update: command_flow_pb2.InfoUpdate,
) -> list[command_flow_pb2.InfoUpdate]:
    """The updates a message carries: itself, or its batch's, in order."""
    if update.WhichOneof("info") != "batch":
        return [update]
    return [each for inner in update.batch.updates for each in _unbatched(inner)]


def _in_batches(
    commands: list[command_flow_pb2.Command],
) -> list[command_flow_pb2.Command]:
    """``commands`` as messages: batches of at most ``BATCH_BYTES``, in order;
    a command alone, or too large to share, as it is."""
    Command, Batch = command_flow_pb2.Command, command_flow_pb2.CommandBatch
    return [
        group[0] if len(group) == 1 else Command(batch=Batch(commands=group))
        for group in grouped(commands, command_flow_pb2.Command.ByteSize)
    ]
