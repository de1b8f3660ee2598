"""The operators' service, ``nodevisor.admin.v1.AdminService``."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator

import anyio
import grpc
from anyio.streams.memory import MemoryObjectReceiveStream
from google.protobuf import duration_pb2

from blockjoy.api.v1 import command_flow_pb2

from .._outbox import BATCHES_HEADER, MAX_MESSAGE_BYTES, grouped
from ..admin.v1 import admin_pb2, admin_pb2_grpc
from ._agent_api import reads_batches
from ._db import Database, Queued, queue_command, with_meta
from ._errors import (
    CommandTimeout,
    ControlPlaneError,
    InvalidRequest,
    Unauthenticated,
    abort_on_error,
)
from ._hub import Event, Follower, Hub
from ._tokens import ADMIN_TOKEN_FILE, bearer_token

__all__ = ["DEFAULT_OTP_TTL", "MIN_SECONDS", "AdminServicer"]

log = logging.getLogger(__name__)

DEFAULT_OTP_TTL = 3600.0
#: The shortest otp ttl and command timeout taken: one millisecond. Less
#: could not be used (and below a microsecond would reach us as 0).
MIN_SECONDS = 0.001


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every call needs the admin token of the control plane's data dir."""

    def __init__(self, db: Database, hub: Hub, admin_token: str):
        self._db, self._hub, self._admin_token = db, hub, admin_token

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        token = bearer_token(context.invocation_metadata())
        if not secrets.compare_digest(token.encode(), self._admin_token.encode()):
            # Where the token lives on the server is none of an unknown
            # caller's business; the operator knows the data dir.
            raise Unauthenticated(
                "the admin token is wrong: the operator finds it in the file"
                f" {ADMIN_TOKEN_FILE!r} in the control plane's data directory"
            )

    async def CreateOtp(
        self, request: admin_pb2.CreateOtpRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateOtpResponse:
        async with abort_on_error(context):
            self._authorize(context)
            ttl = DEFAULT_OTP_TTL
            if request.HasField("ttl"):
                ttl = _seconds(request.ttl)
            if ttl < MIN_SECONDS:
                raise InvalidRequest(
                    f"the otp ttl must be at least {MIN_SECONDS:g}s (1 ms), "
                    f"got {ttl:g}s"
                )
            otp, expires_at = await self._db.call(self._db.create_otp, ttl)
        response = admin_pb2.CreateOtpResponse(otp=otp)
        response.expires_at.FromNanoseconds(int(expires_at * 1e9))
        return response

    async def ListHosts(
        self, request: admin_pb2.ListHostsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListHostsResponse:
        async with abort_on_error(context):
            self._authorize(context)
            hosts = await self._db.call(self._db.list_hosts)
        return admin_pb2.ListHostsResponse(hosts=hosts)

    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListNodesResponse:
        async with abort_on_error(context):
            self._authorize(context)
            nodes = await self._db.call(self._db.list_nodes, request.host_id)
        return admin_pb2.ListNodesResponse(nodes=nodes)

    async def ListCommands(
        self,
        request: admin_pb2.ListCommandsRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.ListCommandsResponse:
        async with abort_on_error(context):
            self._authorize(context)
            after = _page_token(request.page_token)
            size = min(request.page_size or PAGE_SIZE, PAGE_SIZE)
            # One more than the page holds, to know whether more follow.
            found = await self._db.call(
                self._db.list_commands, request.host_id, after, size + 1
            )
        return _page(found, size)

    async def SendCommand(
        self,
        request: admin_pb2.SendCommandRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[admin_pb2.SendCommandResponse]:
        async with abort_on_error(context):
            self._authorize(context)
            timeout = math.inf
            if request.HasField("timeout"):
                timeout = _seconds(request.timeout)
                # Refused before queueing: the command would run all the
                # same while its caller is told at once that it timed out.
                if timeout < MIN_SECONDS:
                    raise InvalidRequest(
                        f"the timeout must be at least {MIN_SECONDS:g}s (1 ms), "
                        f"got {timeout:g}s; "
                        "leave it out to wait for the result without limit"
                    )
            # Watch before queueing, so that no early answer is missed; the
            # command gets its id first, so that the watch can name it.
            command, command_id = _prepared(request.command)
            node_id = command.node.id.value if command.HasField("node") else ""
            with self._hub.watch(request.host_id, command_id, node_id) as events:
                written = await self._db.write(
                    queue_command, request.host_id, command, command_id
                )
                queued = written.record
                self._hub.wake(
                    request.host_id, (written.seq, queued.id, written.command)
                )
                log.info("queued command %s for host %s", queued.id, queued.host_id)
                yield _response(time.time(), queued=queued)
                async for response in _follow(events, queued, timeout):
                    yield response

    async def SendCommands(
        self,
        request_iterator: AsyncIterator[admin_pb2.SendCommandsRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async with abort_on_error(context):
            self._authorize(context)
        batches = reads_batches(context.invocation_metadata())
        # Said at once: a caller that reads it may send its requests in batches.
        await context.send_initial_metadata(((BATCHES_HEADER, "1"),))
        with self._hub.follow() as follower:
            batch = _Batch(self._db, self._hub, follower)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(batch.take, request_iterator)
                tasks.start_soon(batch.collect_results)
                await _write_answers(context, batch.receive, batches=batches)
                tasks.cancel_scope.cancel()


async def _write_answers(
    context: grpc.aio.ServicerContext,
    answers: asyncio.Queue[admin_pb2.SendCommandsResponse | None],
    *,
    batches: bool,
) -> None:
    """Write every answer, until the ``None`` that ends them.

    With ``batches``, the answers ready together go in one message, up to
    ``BATCH_BYTES`` of them (a larger answer goes alone).
    """
    Response = admin_pb2.SendCommandsResponse
    ended = False
    while not ended:
        ready = [await answers.get()]
        while batches and not answers.empty():
            ready.append(answers.get_nowait())
        if ready[-1] is None:
            ended = True
            ready.pop()
        for group in grouped(ready, Response.ByteSize):  # type: ignore[arg-type]
            one = len(group) == 1
            await context.write(group[0] if one else Response(batch=group))


_MIXED_BATCH = (
    "the message that carries this batch has a host_id or command of its own; "
    "a carrier holds nothing but its batch, so none of the batch was queued"
)


class _Batch:
    """One ``SendCommands`` call: its requests queued, their answers in order.

    Queued commands commit together with whatever else is queued meanwhile,
    and each answer goes into ``receive`` as soon as it is known; the stream
    ends once the caller has closed its side and every queued command has
    its result.
    """

    def __init__(self, db: Database, hub: Hub, follower: Follower) -> None:
        self._db, self._hub, self._follower = db, hub, follower
        #: Each answer as soon as it is known; ``None`` after the last.
        self.receive: asyncio.Queue[admin_pb2.SendCommandsResponse | None] = (
            asyncio.Queue()
        )
        #: The index of each queued command without a result, by host and id.
        self._waiting: dict[tuple[str, str], int] = {}
        #: Indexes whose command is not yet known to be stored. A result
        #: for its id meanwhile is another call's command with that id:
        #: this one is about to be refused as a duplicate.
        self._unqueued: set[int] = set()
        #: Indexes given their final answer (a result, or why not queued).
        self._finished: set[int] = set()
        #: Requests taken whose final answer is yet to be given.
        self._open = 0
        self._taking = True
        self._ended = False

    async def take(
        self, requests: AsyncIterator[admin_pb2.SendCommandsRequest]
    ) -> None:
        index = 0
        async for message in requests:
            mixed = bool(message.batch) and bool(
                message.host_id or message.HasField("command")
            )
            for request in message.batch or (message,):
                self._open += 1
                try:
                    if mixed:
                        self._refuse(index, _MIXED_BATCH)
                    else:
                        self._queue(index, request)
                except Exception as exc:  # one bad request must not end the call
                    log.exception("could not queue request %d of a SendCommands", index)
                    self._refuse(
                        index, f"the control plane could not queue it: {exc!r}"
                    )
                index += 1
        self._taking = False
        self._end_if_done()

    def _queue(self, index: int, request: admin_pb2.SendCommandsRequest) -> None:
        if request.batch:
            self._refuse(
                index,
                "a batch inside a batch: each item of SendCommandsRequest.batch "
                "is one request, with a host_id and a command",
            )
            return
        host_id = request.host_id
        try:
            command, command_id = _prepared(request.command)
        except InvalidRequest as exc:
            self._refuse(index, str(exc))
            return
        if (host_id, command_id) in self._waiting:
            self._refuse(index, f"command {command_id} is queued already")
            return
        # Followed before it is queued, so that no early result is missed.
        self._follower.add(host_id, "command", command_id)
        self._waiting[host_id, command_id] = index
        self._unqueued.add(index)
        written = self._db.write(queue_command, host_id, command, command_id)
        written.add_done_callback(
            functools.partial(self._queued, index, host_id, command_id)
        )

    def _queued(
        self, index: int, host_id: str, command_id: str, written: asyncio.Future[Queued]
    ) -> None:
        self._unqueued.discard(index)
        error = None if written.cancelled() else written.exception()
        if written.cancelled() or error is not None:
            self._waiting.pop((host_id, command_id), None)
            self._follower.remove(host_id, "command", command_id)
            if isinstance(error, ControlPlaneError):
                self._refuse(index, str(error))
            else:
                log.error("queueing command %s failed: %r", command_id, error)
                self._refuse(index, f"the control plane could not queue it: {error!r}")
            return
        queued = written.result()
        self._answer(index, queued=queued.record)
        self._hub.wake(host_id, (queued.seq, queued.record.id, queued.command))

    async def collect_results(self) -> None:
        async for event in self._follower.events:
            info = event.update.command
            if not (event.command_id and info.HasField("exit_code")):
                continue
            key = (event.host_id, event.command_id)
            index = self._waiting.get(key)
            if index is None or index in self._unqueued:
                continue  # a result sent again, or not this call's command
            del self._waiting[key]
            self._follower.remove(event.host_id, "command", event.command_id)
            self._last_answer(index, received_at=event.received_at, result=info)

    def _refuse(self, index: int, why: str) -> None:
        self._last_answer(index, refused=why)

    def _last_answer(
        self, index: int, received_at: float | None = None, **update: object
    ) -> None:
        """Give a request its final answer; the call ends after the last one."""
        if index in self._finished:  # counted once, or the call ends too soon
            log.error("request %d of a SendCommands was answered twice", index)
            return
        self._finished.add(index)
        self._answer(index, received_at, **update)
        self._open -= 1
        self._end_if_done()

    def _answer(
        self, index: int, received_at: float | None = None, **update: object
    ) -> None:
        answer = admin_pb2.SendCommandsResponse(index=index, **update)  # type: ignore[arg-type]
        answer.received_at.FromNanoseconds(int((received_at or time.time()) * 1e9))
        self.receive.put_nowait(answer)

    def _end_if_done(self) -> None:
        if not self._taking and self._open == 0 and not self._ended:
            self._ended = True
            self.receive.put_nowait(None)


#: The largest command queued: a host accepts messages up to
#: ``MAX_MESSAGE_BYTES``, and the record that carries a command back to the
#: operator (ids, times, state) must fit in one too.
MAX_COMMAND_BYTES = MAX_MESSAGE_BYTES - 4096


def _prepared(
    command: command_flow_pb2.Command,
) -> tuple[command_flow_pb2.Command, str]:
    """The command to queue, its id and time filled in, and its id.

    Refuses what is not a command for a host, and a command too large: a
    request the transport took can still grow past the limit once its meta
    is filled in, and the agent would refuse that message at every
    reconnect.
    """
    if command.WhichOneof("type") == "batch":
        raise InvalidRequest(
            "CommandBatch is how the control plane sends commands that are ready "
            "together on a host's stream, not a command to queue; queue each "
            "command on its own (SendCommands takes many on one call)"
        )
    if command.WhichOneof("type") == "received":
        raise InvalidRequest(
            "UpdatesReceived is the control plane's own message on a host's "
            "stream, not a command to queue"
        )
    command, command_id = with_meta(command, time.time())
    size = command.ByteSize()
    if size > MAX_COMMAND_BYTES:
        raise InvalidRequest(
            f"the command is {size} bytes with its id and time; at most "
            f"{MAX_COMMAND_BYTES} are queued (a host accepts {MAX_MESSAGE_BYTES}-byte "
            "messages, and the command's record must fit in one)"
        )
    return command, command_id


#: The most commands a ListCommands page holds.
PAGE_SIZE = 1000
#: The most bytes of commands a page holds, leaving room for the rest.
PAGE_BYTES = MAX_MESSAGE_BYTES - 65536
#: The most bytes of one command's record: a page holds at least one.
RECORD_BYTES = MAX_MESSAGE_BYTES - 1024


def _seconds(duration: duration_pb2.Duration) -> float:
    """``duration`` in seconds, to the nanosecond (a timedelta stops at the µs)."""
    return duration.ToNanoseconds() / 1e9


def _page_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidRequest(
            f"page_token {token!r} is not one this control plane gave; use the "
            "next_page_token of the page before, or none for the first page"
        )
    return int(token)


def _page(
    found: list[tuple[int, admin_pb2.CommandRecord]], size: int
) -> admin_pb2.ListCommandsResponse:
    """Up to ``size`` commands that fit in one message, and where to go on."""
    page = admin_pb2.ListCommandsResponse()
    total = 0
    for count, (_, record) in enumerate(found):
        total += record.ByteSize() + 8
        if count == size or (count and total > PAGE_BYTES):
            page.next_page_token = str(found[count - 1][0])
            break
        page.commands.append(_fitted(record))
    return page


def _fitted(record: admin_pb2.CommandRecord) -> admin_pb2.CommandRecord:
    """``record``, with the agent's response cut short if it cannot fit a page.

    A command may be nearly as large as a message, and so may the response
    the agent sent for it; together they are not, and a record that fits no
    page would block every page after it.
    """
    excess = record.ByteSize() - RECORD_BYTES
    if excess <= 0:
        return record
    response = record.response.encode()
    note = (
        f" [cut short by the control plane: the response is {len(response)} "
        f"bytes, and a command's record is sent in at most {RECORD_BYTES}]"
    )
    keep = max(0, len(response) - excess - len(note.encode()) - 16)
    fitted = admin_pb2.CommandRecord()
    fitted.CopyFrom(record)
    fitted.response = response[:keep].decode(errors="ignore") + note
    return fitted


def _response(received_at: float, **update: object) -> admin_pb2.SendCommandResponse:
    response = admin_pb2.SendCommandResponse(**update)  # type: ignore[arg-type]
    response.received_at.FromNanoseconds(int(received_at * 1e9))
    return response


async def _follow(
    events: MemoryObjectReceiveStream[Event],
    queued: admin_pb2.CommandRecord,
    seconds: float,
) -> AsyncIterator[admin_pb2.SendCommandResponse]:
    """The updates about ``queued`` until its result, or for ``seconds``."""
    deadline = anyio.current_time() + seconds
    while True:
        try:
            with anyio.fail_after(deadline - anyio.current_time()):
                event = await events.receive()
        except TimeoutError:
            raise CommandTimeout(
                f"no result for command {queued.id} within {seconds:g}s"
            ) from None
        update = event.update
        if event.command_id == queued.id:
            yield _response(event.received_at, command_info=update.command)
            if update.command.HasField("exit_code"):
                return
        elif _is_node_of(update, queued.node_id):
            yield _response(event.received_at, node_info=update.node)


def _is_node_of(update: command_flow_pb2.InfoUpdate, node_id: str) -> bool:
    return bool(node_id) and update.HasField("node") and update.node.id.value == node_id
