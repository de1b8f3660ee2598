"""An asyncio client of the admin service, for the CLI and for tests."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

import grpc

from blockjoy.api.v1 import command_flow_pb2

from .._outbox import BATCHES_HEADER, grouped
from ..admin.v1 import admin_pb2, admin_pb2_grpc
from ._errors import ControlPlaneError, from_rpc_error
from ._tokens import read_admin_token

__all__ = ["AdminClient"]


class AdminClient:
    """Calls ``AdminService`` at ``address`` with the admin ``token``.

    Failed calls raise the ``ControlPlaneError`` that matches their status.
    """

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    @classmethod
    def for_data_dir(cls, address: str, data_dir: Path) -> AdminClient:
        """A client with the admin token of the control plane of ``data_dir``."""
        return cls(address, read_admin_token(data_dir))

    def __repr__(self) -> str:
        return f"<AdminClient {self.address}>"

    async def aclose(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.address) from exc

    async def create_otp(self, ttl: float = 3600.0) -> str:
        request = admin_pb2.CreateOtpRequest()
        request.ttl.FromNanoseconds(_nanoseconds(ttl))
        with self._translated():
            response = await self._stub.CreateOtp(request, metadata=self._metadata)
        return response.otp

    async def list_hosts(self) -> list[admin_pb2.Host]:
        with self._translated():
            response = await self._stub.ListHosts(
                admin_pb2.ListHostsRequest(), metadata=self._metadata
            )
        return list(response.hosts)

    async def list_nodes(self, host_id: str = "") -> list[admin_pb2.Node]:
        with self._translated():
            response = await self._stub.ListNodes(
                admin_pb2.ListNodesRequest(host_id=host_id), metadata=self._metadata
            )
        return list(response.nodes)

    async def list_commands(self, host_id: str = "") -> list[admin_pb2.CommandRecord]:
        """Every command (of ``host_id``), oldest first, read a page at a time."""
        commands: list[admin_pb2.CommandRecord] = []
        token = ""
        while True:
            page = await self.list_commands_page(host_id, page_token=token)
            commands.extend(page.commands)
            if not page.next_page_token:
                return commands
            token = page.next_page_token

    async def list_commands_page(
        self, host_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListCommandsResponse:
        """One page of commands; its ``next_page_token`` is where to go on."""
        request = admin_pb2.ListCommandsRequest(
            host_id=host_id, page_size=page_size, page_token=page_token
        )
        with self._translated():
            return await self._stub.ListCommands(request, metadata=self._metadata)

    async def send_command(
        self,
        host_id: str,
        command: command_flow_pb2.Command,
        result_within: float | None = None,
    ) -> AsyncIterator[admin_pb2.SendCommandResponse]:
        """Queue ``command``; yield the queued record, then each update about it.

        Without a result within ``result_within`` seconds the iteration raises
        ``CommandTimeout``.
        """
        request = admin_pb2.SendCommandRequest(host_id=host_id, command=command)
        if result_within is not None:
            request.timeout.FromNanoseconds(_nanoseconds(result_within))
        call = self._stub.SendCommand(request, metadata=self._metadata)
        try:
            with self._translated():
                async for response in call:
                    yield response
        finally:
            call.cancel()

    async def send_commands(
        self, requests: AsyncIterable[tuple[str, command_flow_pb2.Command]]
    ) -> AsyncIterator[admin_pb2.SendCommandsResponse]:
        """Queue each ``(host_id, command)`` of ``requests`` on one call.

        Yields the answers as they come: for each request, by its position,
        its queued record (or why it was refused), then its result. Ends once
        ``requests`` is exhausted and every queued command has its result.
        Requests that are ready together go in one message, and so do the
        answers, once the control plane has said it reads batches. An error
        raised by ``requests`` ends the call and is raised here; requests sent
        before it may have been queued and will still run, but their answers
        not yet yielded are lost with the call: ``list_commands`` tells what
        was queued.
        """
        metadata = (*self._metadata, (BATCHES_HEADER, "1"))
        call = self._stub.SendCommands(metadata=metadata)
        writer = asyncio.create_task(_write_requests(call, requests))
        writer.add_done_callback(
            lambda done: done.cancelled() or _cancel_if_failed(call, done)
        )
        try:
            with self._translated():
                try:
                    async for response in call:
                        if response.batch:
                            for answer in response.batch:
                                yield answer
                        else:
                            yield response
                except asyncio.CancelledError:
                    _raise_if_failed(writer)  # the writer's error, not grpc's cancel
                    raise
            await writer
        finally:
            writer.cancel()
            call.cancel()

    async def queue_command(
        self, host_id: str, command: command_flow_pb2.Command
    ) -> admin_pb2.CommandRecord:
        """Queue ``command`` without waiting for the agent."""
        updates = self.send_command(host_id, command)
        try:
            async for response in updates:
                return response.queued
        finally:
            await updates.aclose()  # type: ignore[attr-defined]
        raise ControlPlaneError(
            f"control plane at {self.address} ended SendCommand before queueing"
        )


async def _write_requests(
    call: grpc.aio.StreamStreamCall,
    requests: AsyncIterable[tuple[str, command_flow_pb2.Command]],
) -> None:
    """Write ``requests`` to ``call``; what came while a write was under way
    goes in the next message together, once the server reads batches."""
    Request = admin_pb2.SendCommandsRequest
    ready: list[admin_pb2.SendCommandsRequest] = []
    arrived = asyncio.Event()

    async def take() -> None:
        try:
            async for host_id, command in requests:
                ready.append(Request(host_id=host_id, command=command))
                arrived.set()
        finally:
            arrived.set()

    headers = asyncio.ensure_future(call.initial_metadata())
    taker = asyncio.create_task(take())
    try:
        while not (taker.done() and not ready):
            await arrived.wait()
            arrived.clear()
            _raise_if_failed(taker)
            group, ready[:] = ready[:], []
            batches = _said_batches(headers)
            for part in (
                grouped(group, Request.ByteSize)
                if batches
                else [[one] for one in group]
            ):
                await call.write(part[0] if len(part) == 1 else Request(batch=part))
        await call.done_writing()
    finally:
        taker.cancel()
        headers.cancel()


def _said_batches(headers: asyncio.Future[grpc.aio.Metadata | None]) -> bool:
    """Whether the server's response headers, if in, say it reads batches."""
    if not headers.done() or headers.cancelled() or headers.exception() is not None:
        return False
    metadata = headers.result()
    return metadata is not None and metadata.get(BATCHES_HEADER) == "1"


def _cancel_if_failed(
    call: grpc.aio.StreamStreamCall, task: asyncio.Task[None]
) -> None:
    if task.exception() is not None:
        call.cancel()


def _raise_if_failed(task: asyncio.Task[None]) -> None:
    if task.done() and not task.cancelled() and (error := task.exception()):
        raise error


def _nanoseconds(seconds: float) -> int:
    """``seconds`` for a ``Duration``: to the nanosecond, so that a server
    that refuses it names the value given (a timedelta would round it to the
    microsecond, and a tiny one to 0)."""
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds} is not a number of seconds")
    return round(seconds * 1e9)
