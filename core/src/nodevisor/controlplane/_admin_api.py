"""The operators' service, ``nodevisor.admin.v1.AdminService``."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
from anyio.streams.memory import MemoryObjectReceiveStream

from blockjoy.api.v1 import command_flow_pb2

from .._outbox import MAX_MESSAGE_BYTES
from ..admin.v1 import admin_pb2, admin_pb2_grpc
from ._db import Database, queue_command, with_meta
from ._errors import CommandTimeout, InvalidRequest, Unauthenticated, abort_on_error
from ._hub import Event, Hub
from ._tokens import ADMIN_TOKEN_FILE, bearer_token

__all__ = ["DEFAULT_OTP_TTL", "AdminServicer"]

log = logging.getLogger(__name__)

DEFAULT_OTP_TTL = 3600.0


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every call needs the admin token of the control plane's data dir."""

    def __init__(self, db: Database, hub: Hub, admin_token: str, data_dir: Path):
        self._db, self._hub = db, hub
        self._admin_token, self._data_dir = admin_token, data_dir

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        token = bearer_token(context.invocation_metadata())
        if not secrets.compare_digest(token.encode(), self._admin_token.encode()):
            raise Unauthenticated(
                "the admin token is wrong: use the one in"
                f" {self._data_dir / ADMIN_TOKEN_FILE}"
            )

    async def CreateOtp(
        self, request: admin_pb2.CreateOtpRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateOtpResponse:
        async with abort_on_error(context):
            self._authorize(context)
            ttl = DEFAULT_OTP_TTL
            if request.HasField("ttl"):
                ttl = request.ttl.ToTimedelta().total_seconds()
            if ttl <= 0:
                raise InvalidRequest(f"the otp ttl must be positive, got {ttl}s")
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
            commands = await self._db.call(self._db.list_commands, request.host_id)
        return admin_pb2.ListCommandsResponse(commands=commands)

    async def SendCommand(
        self,
        request: admin_pb2.SendCommandRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[admin_pb2.SendCommandResponse]:
        async with abort_on_error(context):
            self._authorize(context)
            size = request.command.ByteSize()
            if size > MAX_MESSAGE_BYTES:
                raise InvalidRequest(
                    f"the command is {size} bytes; a host accepts at most "
                    f"{MAX_MESSAGE_BYTES}"
                )
            timeout = math.inf
            if request.HasField("timeout"):
                timeout = request.timeout.ToTimedelta().total_seconds()
            # Watch before queueing, so that no early answer is missed; the
            # command gets its id first, so that the watch can name it.
            command, command_id = with_meta(request.command, time.time())
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
