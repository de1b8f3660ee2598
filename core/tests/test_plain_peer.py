"""An agent against control planes other than nodevisor's own.

A plain v1 peer takes updates and sends commands, and never confirms with
``UpdatesReceived``: the agent must serve it all the same, must not keep its
updates forever to send them again on every stream, and must send it no
batch. A peer that says it reads batches gets them, and may send its own.
"""

from __future__ import annotations

import asyncio
import uuid

import anyio
import grpc
import pytest

from blockjoy.api.v1 import (
    command_flow_pb2,
    command_flow_pb2_grpc,
    common_pb2,
    node_pb2,
)
from nodevisor._agent import Agent
from nodevisor._config import AgentConfig
from nodevisor._credentials import Credentials
from nodevisor._outbox import BATCHES_HEADER

pytestmark = pytest.mark.anyio


class PlainControlPlane(command_flow_pb2_grpc.CommandFlowServicer):
    """Records every update; sends what is put in ``commands``."""

    def __init__(self) -> None:
        self.updates: list[command_flow_pb2.InfoUpdate] = []
        self.commands: asyncio.Queue[command_flow_pb2.Command] = asyncio.Queue()

    async def Commands(self, request_iterator, context) -> None:
        await self.opened(context)

        async def read() -> None:
            async for message in request_iterator:
                self.received(message)

        reader = asyncio.create_task(read())
        try:
            while True:
                await context.write(await self.commands.get())
        finally:
            reader.cancel()

    async def opened(self, context) -> None:
        """The stream is open (a v1 peer does nothing then)."""

    def received(self, message: command_flow_pb2.InfoUpdate) -> None:
        self.updates.append(message)

    def result_of(self, command_id: str) -> command_flow_pb2.CommandInfo | None:
        for update in self.updates:
            info = update.command
            if info.id.value == command_id and info.HasField("exit_code"):
                return info
        return None


@pytest.fixture
async def plain_peer():
    servicer = PlainControlPlane()
    server = grpc.aio.server()
    command_flow_pb2_grpc.add_CommandFlowServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_updates_a_plain_peer_was_sent_leave_the_outbox(
    plain_peer, tmp_path, catalogue_dir
):
    servicer, address = plain_peer
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        runtime="memory",
        catalogue=[catalogue_dir],
        heartbeat_interval=60,
        heartbeat_timeout=1,
    )
    Credentials(str(uuid.uuid4()), "a-token", address).save(config.data_dir)
    agent = Agent(config)
    command_id, node_id = str(uuid.uuid4()), str(uuid.uuid4())
    create = node_pb2.NodeCreate(
        name="plain", image=common_pb2.ContainerImage(url="testchain/1")
    )
    command = node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), create=create)
    command.meta.api_command_id.value = command_id

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(agent.run)
        await servicer.commands.put(command_flow_pb2.Command(node=command))
        await until(lambda: servicer.result_of(command_id) is not None)
        # sent, never confirmed, and still not kept
        await until(lambda: agent.outbox is not None and not len(agent.outbox))
        tasks.cancel_scope.cancel()

    assert servicer.result_of(command_id).exit_code == 0
    kinds = {update.WhichOneof("info") for update in servicer.updates}
    assert kinds == {"host", "node", "command"}


async def until(check, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while True:
            if check():
                return
            await anyio.sleep(0.05)


class BatchingControlPlane(PlainControlPlane):
    """Says it reads batches; keeps each message as it came, and the agent's
    request headers."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[command_flow_pb2.InfoUpdate] = []
        self.request_headers: dict[str, str] = {}

    async def opened(self, context) -> None:
        self.request_headers = dict(context.invocation_metadata())
        await context.send_initial_metadata(((BATCHES_HEADER, "1"),))

    def received(self, message: command_flow_pb2.InfoUpdate) -> None:
        self.messages.append(message)
        if message.WhichOneof("info") == "batch":
            self.updates.extend(message.batch.updates)
        else:
            self.updates.append(message)


async def test_an_agent_reads_a_batch_and_answers_in_batches(tmp_path, catalogue_dir):
    servicer = BatchingControlPlane()
    server = grpc.aio.server()
    command_flow_pb2_grpc.add_CommandFlowServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = AgentConfig(
        data_dir=tmp_path / "agent", runtime="memory", catalogue=[catalogue_dir]
    )
    Credentials(str(uuid.uuid4()), "a-token", f"127.0.0.1:{port}").save(config.data_dir)
    agent = Agent(config)
    creates = [create(f"node-{n}") for n in range(20)]
    ids = [c.meta.api_command_id.value for c in creates]
    batch = command_flow_pb2.CommandBatch(
        commands=[command_flow_pb2.Command(node=c) for c in creates]
    )

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent.run)
            await until(lambda: len(servicer.updates) > 0)  # the greeting is in
            await servicer.commands.put(command_flow_pb2.Command(batch=batch))
            await until(lambda: all(servicer.result_of(i) for i in ids))
            tasks.cancel_scope.cancel()
    finally:
        await server.stop(None)

    assert servicer.request_headers.get(BATCHES_HEADER) == "1"
    assert [servicer.result_of(i).exit_code for i in ids] == [0] * 20
    batches = [m for m in servicer.messages if m.WhichOneof("info") == "batch"]
    assert batches, "20 commands' updates, and not one batch"
    assert all(m.seq == 0 for m in batches)
    seqs = [u.seq for u in servicer.updates if u.seq]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))


def create(name: str) -> node_pb2.NodeCommand:
    image = common_pb2.ContainerImage(url="testchain/1")
    command = node_pb2.NodeCommand(
        id=common_pb2.Uuid(value=str(uuid.uuid4())),
        create=node_pb2.NodeCreate(name=name, image=image),
    )
    command.meta.api_command_id.value = str(uuid.uuid4())
    return command
