"""Batches, as the control plane sends and reads them.

An agent that opens its stream with ``nodevisor-batches: 1`` gets the
commands that are ready together in one ``CommandBatch``; any other agent
gets one message per command. Whatever the agent sends in an
``InfoUpdateBatch`` is recorded as if each update had come on its own. The
same header on a ``SendCommands`` call batches its answers.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator

import anyio
import grpc
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor._outbox import BATCHES_HEADER, CONFIRMS_UPDATES_HEADER
from nodevisor.admin.v1 import admin_pb2, admin_pb2_grpc
from nodevisor.controlplane import InvalidRequest
from nodevisor.controlplane._admin_api import _Batch
from nodevisor.controlplane._db import Database
from nodevisor.controlplane._hub import Event, Hub
from nodevisor.controlplane.testing import FakeAgent, RunningControlPlane

pytestmark = pytest.mark.anyio

STATUS = node_pb2.NodeInfo.ContainerStatus


def start(node_id: str) -> command_flow_pb2.Command:
    command = node_pb2.NodeCommand(
        id=common_pb2.Uuid(value=node_id), start=node_pb2.NodeStart()
    )
    return command_flow_pb2.Command(node=command)


async def queue_start(cp: RunningControlPlane, host_id: str):
    return await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))


@pytest.fixture
async def agents(cp: RunningControlPlane) -> AsyncIterator[list[FakeAgent]]:
    opened: list[FakeAgent] = []
    yield opened
    for agent in opened:
        await agent.aclose()


async def test_commands_ready_together_go_in_one_batch_to_an_agent_that_reads_them(
    cp: RunningControlPlane, agents: list[FakeAgent]
) -> None:
    host_id, token = await cp.provision()
    queued = [await queue_start(cp, host_id) for _ in range(3)]
    agents.append(FakeAgent(cp.address, token, batches=True))

    message = await agents[0].next_command()

    assert message.WhichOneof("type") == "batch"
    ids = [c.node.meta.api_command_id.value for c in message.batch.commands]
    assert ids == [record.id for record in queued]
    headers = await agents[0].call.initial_metadata()
    assert headers.get(BATCHES_HEADER) == "1"
    assert headers.get(CONFIRMS_UPDATES_HEADER) == "1"


async def test_an_agent_that_does_not_ask_gets_one_message_per_command(
    cp: RunningControlPlane, agents: list[FakeAgent]
) -> None:
    host_id, token = await cp.provision()
    queued = [await queue_start(cp, host_id) for _ in range(3)]
    agents.append(FakeAgent(cp.address, token))

    messages = [await agents[0].next_command() for _ in queued]

    assert [m.WhichOneof("type") for m in messages] == ["node"] * 3
    ids = [m.node.meta.api_command_id.value for m in messages]
    assert ids == [record.id for record in queued]


async def test_a_batch_of_updates_is_recorded_update_by_update_and_confirmed(
    cp: RunningControlPlane, agents: list[FakeAgent]
) -> None:
    host_id, token = await cp.provision()
    node_id = str(uuid.uuid4())
    queued = await cp.admin.queue_command(host_id, start(node_id))
    agent = FakeAgent(cp.address, token, batches=True)
    agents.append(agent)
    command = await agent.next_command()
    command_id = common_pb2.Uuid(value=queued.id)
    node = common_pb2.Uuid(value=node_id)
    Update, Info = command_flow_pb2.InfoUpdate, command_flow_pb2.CommandInfo
    batch = command_flow_pb2.InfoUpdateBatch(
        updates=[
            Update(seq=1, command=Info(id=command_id)),
            Update(
                seq=2,
                node=node_pb2.NodeInfo(
                    id=node, name="n1", container_status=STATUS.Value("Starting")
                ),
            ),
            Update(
                seq=3,
                node=node_pb2.NodeInfo(
                    id=node, container_status=STATUS.Value("Running")
                ),
            ),
            Update(seq=4, command=Info(id=command_id, exit_code=0, response="started")),
        ]
    )

    await agent.call.write(Update(batch=batch))
    confirmed = await agent.next_command()

    assert command.node.meta.api_command_id.value == queued.id
    assert confirmed.received.up_to == 4
    [record] = await cp.admin.list_commands(host_id)
    assert (record.state, record.exit_code, record.response) == (4, 0, "started")
    [listed] = await cp.admin.list_nodes(host_id)
    assert (listed.info.name, listed.info.container_status) == (
        "n1",
        STATUS.Value("Running"),
    )


async def test_an_empty_batch_records_nothing_and_ends_nothing(
    cp: RunningControlPlane, agents: list[FakeAgent]
) -> None:
    host_id, token = await cp.provision()
    agent = FakeAgent(cp.address, token, batches=True)
    agents.append(agent)
    empty = command_flow_pb2.InfoUpdate(batch=command_flow_pb2.InfoUpdateBatch())

    await agent.call.write(empty)
    await agent.send(seq=1, node=node_pb2.NodeInfo(id=common_pb2.Uuid(value="n")))

    assert (await agent.next_command()).received.up_to == 1
    assert [node.info.id.value for node in await cp.admin.list_nodes(host_id)] == ["n"]
    with sqlite3.connect(cp.data_dir / "controlplane.sqlite3") as db:
        assert db.execute("SELECT kind, error FROM updates").fetchall() == [
            ("node", None)
        ]


@pytest.mark.parametrize("batches", [True, False])
async def test_send_commands_gives_answers_ready_together_in_one_message_if_asked(
    cp: RunningControlPlane, batches: bool
) -> None:
    host_id, _ = await cp.provision()  # no agent: each command stays queued
    metadata = [("authorization", f"Bearer {cp.control_plane.admin_token}")]
    if batches:
        metadata.append((BATCHES_HEADER, "1"))
    requests = [
        admin_pb2.SendCommandsRequest(host_id=host_id, command=start(str(uuid.uuid4())))
        for _ in range(50)
    ]

    async def send() -> AsyncIterator[admin_pb2.SendCommandsRequest]:
        for request in requests:
            yield request

    messages: list[admin_pb2.SendCommandsResponse] = []
    answers: list[admin_pb2.SendCommandsResponse] = []
    async with grpc.aio.insecure_channel(cp.address) as channel:
        call = admin_pb2_grpc.AdminServiceStub(channel).SendCommands(
            send(), metadata=metadata
        )
        with anyio.fail_after(20):
            while len(answers) < len(requests):
                message = await call.read()
                messages.append(message)
                answers.extend(message.batch or [message])
        call.cancel()

    assert [(a.index, a.WhichOneof("update")) for a in answers] == [
        (n, "queued") for n in range(50)
    ]
    if batches:
        assert len(messages) < len(answers)
    else:
        assert not any(m.batch for m in messages)


async def test_a_message_that_is_no_info_update_closes_the_stream_clearly(
    cp: RunningControlPlane, agents: list[FakeAgent]
) -> None:
    host_id, token = await cp.provision()
    node = node_pb2.NodeInfo(id=common_pb2.Uuid(value="before"))
    before = command_flow_pb2.InfoUpdate(seq=1, node=node).SerializeToString()
    cut_short = b"\x2a\x05\x0a\xff\xff\xff\xff"  # a batch whose item is cut off
    async with grpc.aio.insecure_channel(cp.address) as channel:
        call = channel.stream_stream(
            "/blockjoy.api.v1.CommandFlow/Commands",
            request_serializer=bytes,
            response_deserializer=command_flow_pb2.Command.FromString,
        )(metadata=[("authorization", f"Bearer {token}")])
        await call.write(before)
        await call.write(cut_short)
        with anyio.fail_after(10), pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:  # the confirmation of the first, then the end
                await call.read()

    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a message on the stream is not an InfoUpdate" in ended.value.details()
    listed = [n.info.id.value for n in await cp.admin.list_nodes(host_id)]
    assert listed == ["before"]  # what came before it is recorded


async def test_a_command_batch_is_not_a_command_to_queue(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()
    batch = command_flow_pb2.CommandBatch(commands=[start(str(uuid.uuid4()))])

    with pytest.raises(InvalidRequest, match="CommandBatch is how the control plane"):
        await cp.admin.queue_command(host_id, command_flow_pb2.Command(batch=batch))

    async def one() -> AsyncIterator[tuple[str, command_flow_pb2.Command]]:
        yield host_id, command_flow_pb2.Command(batch=batch)

    [answer] = [a async for a in cp.admin.send_commands(one())]
    assert "CommandBatch is how the control plane" in answer.refused
    assert await cp.admin.list_commands(host_id) == []


async def _answers_to(
    cp: RunningControlPlane, messages: list[admin_pb2.SendCommandsRequest]
) -> tuple[grpc.aio.Metadata, list[admin_pb2.SendCommandsResponse]]:
    """Send ``messages`` on one plain ``SendCommands`` call; the response
    headers and the first answer to each request, by index (with no agent,
    a queued command has no result)."""
    metadata = [("authorization", f"Bearer {cp.control_plane.admin_token}")]

    async def send() -> AsyncIterator[admin_pb2.SendCommandsRequest]:
        for message in messages:
            yield message

    async with grpc.aio.insecure_channel(cp.address) as channel:
        call = admin_pb2_grpc.AdminServiceStub(channel).SendCommands(
            send(), metadata=metadata
        )
        requests = sum(len(message.batch) or 1 for message in messages)
        answers: list[admin_pb2.SendCommandsResponse] = []
        with anyio.fail_after(20):
            headers = await call.initial_metadata()
            while len(answers) < requests:
                answers.append(await call.read())
        call.cancel()
    return headers, sorted(answers, key=lambda answer: answer.index)


async def test_send_commands_reads_requests_sent_in_a_batch_each_by_its_position(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()  # no agent: each command stays queued
    Request = admin_pb2.SendCommandsRequest
    ids = [str(uuid.uuid4()) for _ in range(5)]  # a node each
    unknown_host = Request(host_id="no-such-host", command=start(ids[2]))
    nested = Request(batch=[Request(host_id=host_id, command=start(ids[4]))])
    messages = [
        Request(host_id=host_id, command=start(ids[0])),
        Request(batch=[Request(host_id=host_id, command=start(ids[1])), unknown_host]),
        Request(batch=[Request(host_id=host_id, command=start(ids[3])), nested]),
    ]

    headers, answers = await _answers_to(cp, messages)

    assert headers.get(BATCHES_HEADER) == "1"  # said at once, before any answer
    assert [(a.index, a.WhichOneof("update")) for a in answers] == [
        (0, "queued"),
        (1, "queued"),
        (2, "refused"),
        (3, "queued"),
        (4, "refused"),
    ]
    assert [answers[n].queued.node_id for n in (0, 1, 3)] == [ids[0], ids[1], ids[3]]
    assert "no-such-host" in answers[2].refused
    assert "a batch inside a batch" in answers[4].refused
    queued = [record.node_id for record in await cp.admin.list_commands(host_id)]
    assert queued == [ids[0], ids[1], ids[3]]  # in the order they were sent


async def test_a_batch_whose_carrier_has_a_command_of_its_own_is_refused_whole(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()
    Request = admin_pb2.SendCommandsRequest
    ids = [str(uuid.uuid4()) for _ in range(4)]
    mixed = Request(
        host_id=host_id,
        command=start(ids[1]),
        batch=[Request(host_id=host_id, command=start(n)) for n in ids[2:]],
    )
    host_only = Request(
        host_id=host_id, batch=[Request(host_id=host_id, command=start(ids[3]))]
    )
    messages = [Request(host_id=host_id, command=start(ids[0])), mixed, host_only]

    _, answers = await _answers_to(cp, messages)

    assert [(a.index, a.WhichOneof("update")) for a in answers] == [
        (0, "queued"),
        (1, "refused"),
        (2, "refused"),
        (3, "refused"),
    ]
    assert all("host_id or command of its own" in a.refused for a in answers[1:])
    queued = [record.node_id for record in await cp.admin.list_commands(host_id)]
    assert queued == [ids[0]]  # the carrier's own command was not queued either


async def test_a_confirmation_waits_a_little_for_a_command_to_go_with(
    cp: RunningControlPlane, agents: list[FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough that the command below is surely queued within it.
    monkeypatch.setattr("nodevisor.controlplane._agent_api.CONFIRM_LINGER", 2.0)
    host_id, token = await cp.provision()
    agents.append(agent := FakeAgent(cp.address, token, batches=True))
    await agent.send(seq=1, node=node_pb2.NodeInfo(id=common_pb2.Uuid(value="n")))
    await cp.wait_online(host_id)
    queued = await queue_start(cp, host_id)

    message = await agent.next_command()

    assert message.WhichOneof("type") == "batch"
    command, received = message.batch.commands
    assert command.node.meta.api_command_id.value == queued.id
    assert received.received.up_to == 1


async def test_a_confirmation_with_no_command_to_go_with_still_goes(
    cp: RunningControlPlane, agents: list[FakeAgent]
) -> None:
    _, token = await cp.provision()
    agents.append(agent := FakeAgent(cp.address, token, batches=True))
    await agent.send(seq=1, node=node_pb2.NodeInfo(id=common_pb2.Uuid(value="n")))

    message = await agent.next_command(seconds=2.0)

    assert message.received.up_to == 1


async def test_a_result_for_a_duplicate_id_before_it_is_refused_is_not_its_answer(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another call's command with the same id finishes while this call's
    # copy is still on its way to the database, to be refused there.
    db = Database(tmp_path / "cp.db")
    hub = Hub()
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[object] = loop.create_future()
    monkeypatch.setattr(db, "write", lambda *_: pending)
    command_id = str(uuid.uuid4())
    command = start(str(uuid.uuid4()))
    command.node.meta.api_command_id.value = command_id

    async def requests() -> AsyncIterator[admin_pb2.SendCommandsRequest]:
        yield admin_pb2.SendCommandsRequest(host_id="h", command=command)

    try:
        with hub.follow() as follower:
            batch = _Batch(db, hub, follower)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(batch.collect_results)
                await batch.take(requests())
                result = command_flow_pb2.CommandInfo(exit_code=0)
                result.id.value = command_id
                update = command_flow_pb2.InfoUpdate(command=result)
                hub.publish(Event("h", 0.0, update, command_id))
                await anyio.sleep(0.05)  # collect_results sees it
                pending.set_exception(InvalidRequest("already exists"))
                answers = [await batch.receive.get(), await batch.receive.get()]
                tasks.cancel_scope.cancel()
    finally:
        db.close()

    assert answers[0] is not None
    assert (answers[0].index, answers[0].WhichOneof("update")) == (0, "refused")
    assert answers[1] is None  # the call ends after its one request's answer
