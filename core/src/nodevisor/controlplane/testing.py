"""Start a real control plane in-process, for tests of agents and end to end.

Use it from any async test (anyio on asyncio; grpc.aio needs asyncio)::

    from nodevisor.controlplane.testing import running_control_plane

    @pytest.mark.anyio
    async def test_agent(tmp_path):
        async with running_control_plane(tmp_path / "cp") as cp:
            host_id, token = await cp.provision(name="test-host")
            # point the agent at cp.address with ``token`` ...
            record = await cp.admin.queue_command(host_id, command)
            async for update in cp.admin.send_command(host_id, command, 30):
                ...

``running_control_plane(data_dir, listen="127.0.0.1:0")`` serves on a free
loopback port and yields a ``RunningControlPlane``:

- ``address``: ``host:port`` for ``grpc.aio.insecure_channel``;
- ``data_dir``: holds the SQLite database and the ``admin-token`` file, so the
  ``nodevisor control-plane`` CLI works against it with
  ``NODEVISOR_CP_URL=<address> NODEVISOR_CP_DATA_DIR=<data_dir>``;
- ``admin``: an ``AdminClient`` (create_otp, list_hosts, list_nodes,
  list_commands, send_command, queue_command);
- ``provision(name, otp=None)``: provisions a host the way an agent does and
  returns ``(host_id, token)``;
- ``wait_online(host_id, online=True)``: waits until the host's stream is open
  (or closed);
- ``control_plane``: the ``ControlPlane`` itself.

On exit the agents' streams end with UNAVAILABLE and the server stops.

``FakeAgent(address, token)`` is one scripted ``Commands`` stream, for tests
of the control plane and of tools that drive it: ``send(node=...)``,
``next_command()``, ``answer(command, exit_code=0)``, ``aclose()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc

from blockjoy.api.v1 import (
    command_flow_pb2,
    command_flow_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
)

from .._outbox import BATCHES_HEADER
from ._client import AdminClient
from ._server import ControlPlane

__all__ = ["FakeAgent", "RunningControlPlane", "running_control_plane"]


@dataclasses.dataclass
class RunningControlPlane:
    """A control plane serving in this process, and an admin client for it."""

    address: str
    data_dir: Path
    admin: AdminClient
    control_plane: ControlPlane

    async def provision(
        self, name: str = "test-host", otp: str | None = None
    ) -> tuple[str, str]:
        """Provision a new host with ``otp`` (or a fresh one); its id and token."""
        otp = otp or await self.admin.create_otp()
        request = host_pb2.ProvisionHostRequest(
            otp=otp, info=host_pb2.HostInfo(name=name)
        )
        async with grpc.aio.insecure_channel(self.address) as channel:
            response = await host_pb2_grpc.HostsStub(channel).Provision(request)
        return response.host_id.value, response.token

    async def wait_online(
        self, host_id: str, online: bool = True, seconds: float = 5.0
    ) -> None:
        """Wait until ``host_id`` has (or, ``online=False``, lacks) a stream."""
        with anyio.fail_after(seconds):
            while True:
                hosts = {host.id: host.online for host in await self.admin.list_hosts()}
                if hosts.get(host_id) == online:
                    return
                await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_control_plane(
    data_dir: Path, listen: str = "127.0.0.1:0"
) -> AsyncIterator[RunningControlPlane]:
    """Serve a control plane on ``data_dir`` until the block ends."""
    async with ControlPlane(data_dir, listen, grace=0.0) as control_plane:
        admin = AdminClient(control_plane.address, control_plane.admin_token)
        async with admin:
            yield RunningControlPlane(
                control_plane.address, data_dir, admin, control_plane
            )


class FakeAgent:
    """One ``Commands`` stream that a test drives the way an agent would.

    ``token`` None opens the stream without authorization metadata. With
    ``batches``, the stream says the agent reads ``CommandBatch`` messages.
    """

    def __init__(self, address: str, token: str | None, batches: bool = False) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        metadata: tuple[tuple[str, str], ...] = ()
        if token:
            metadata += (("authorization", f"Bearer {token}"),)
        if batches:
            metadata += ((BATCHES_HEADER, "1"),)
        stub = command_flow_pb2_grpc.CommandFlowStub(self._channel)
        self.call = stub.Commands(metadata=metadata)

    async def send(self, **info: object) -> None:
        """Send one ``InfoUpdate``: ``host=``, ``node=`` or ``command=``."""
        update = command_flow_pb2.InfoUpdate(**info)  # type: ignore[arg-type]
        await self.call.write(update)

    async def next_command(self, seconds: float = 5.0) -> command_flow_pb2.Command:
        """The next command the control plane sends, within ``seconds``."""
        with anyio.fail_after(seconds):
            command = await self.call.read()
        if not isinstance(command, command_flow_pb2.Command):
            raise EOFError("the control plane ended the Commands stream")
        return command

    async def answer(self, command: command_flow_pb2.Command, **result: object) -> None:
        """Send a ``CommandInfo`` for ``command``: an ack, or with ``exit_code``."""
        variant = command.WhichOneof("type")
        info = command_flow_pb2.CommandInfo(**result)  # type: ignore[arg-type]
        if variant is not None:
            info.id.CopyFrom(getattr(command, variant).meta.api_command_id)
        await self.send(command=info)

    async def aclose(self) -> None:
        """Stop sending, and wait (briefly) until the control plane ends the stream.

        The control plane has then recorded every update sent before.
        """
        with anyio.move_on_after(5.0):
            if not self.call.done():
                await self.call.done_writing()
            await self.call.code()
        self.call.cancel()
        await self._channel.close()
