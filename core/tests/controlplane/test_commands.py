"""The ``CommandFlow.Commands`` stream, driven by fake agents."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import grpc
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, host_pb2, node_pb2
from nodevisor._outbox import MAX_MESSAGE_BYTES
from nodevisor.controlplane import CommandTimeout, InvalidRequest, NotFound
from nodevisor.controlplane.testing import FakeAgent, RunningControlPlane

pytestmark = pytest.mark.anyio

OpenAgent = Callable[[str | None], Awaitable[FakeAgent]]
STATUS = node_pb2.NodeInfo.ContainerStatus


def node_command(node_id: str, **variant: object) -> command_flow_pb2.Command:
    command = node_pb2.NodeCommand(
        id=common_pb2.Uuid(value=node_id),
        **variant,  # type: ignore[arg-type]
    )
    return command_flow_pb2.Command(node=command)


def start(node_id: str) -> command_flow_pb2.Command:
    return node_command(node_id, start=node_pb2.NodeStart())


def node_info(node_id: str, **fields: object) -> node_pb2.NodeInfo:
    node_id_field = common_pb2.Uuid(value=node_id)
    return node_pb2.NodeInfo(id=node_id_field, **fields)  # type: ignore[arg-type]


def command_id(command: command_flow_pb2.Command) -> str:
    return command.node.meta.api_command_id.value


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "missing 'authorization: Bearer <token>' metadata"),
        ("wrong", "the bearer token belongs to no host"),
    ],
)
async def test_stream_needs_the_host_token(
    cp: RunningControlPlane, open_agent: OpenAgent, token: str | None, message: str
) -> None:
    agent = await open_agent(token)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.next_command()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (caught.value.details() or "").startswith(message)


async def test_queued_command_is_delivered_on_open(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    queued = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))

    agent = await open_agent(token)
    command = await agent.next_command()

    assert command_id(command) == queued.id
    assert command.node.meta.HasField("created_at")
    [record] = await cp.admin.list_commands(host_id)
    assert record.state == 2  # COMMAND_STATE_SENT


async def test_command_queued_while_connected_is_delivered_live(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    agent = await open_agent(token)
    await agent.send(host=host_pb2.HostInfo(name="live"))
    await cp.wait_online(host_id)

    queued = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))

    assert command_id(await agent.next_command()) == queued.id


async def test_unfinished_commands_are_sent_again_after_reconnect(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    first = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))
    second = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))
    agent = await open_agent(token)
    await agent.answer(await agent.next_command(), exit_code=0)
    await agent.answer(await agent.next_command())  # an ack, no result
    await agent.send(host=host_pb2.HostInfo())  # sync: updates are in order
    await agent.aclose()

    again = await open_agent(token)

    assert command_id(await again.next_command()) == second.id
    states = {r.id: r.state for r in await cp.admin.list_commands(host_id)}
    assert states == {first.id: 4, second.id: 3}  # FINISHED, ACKED


async def test_updates_are_recorded_and_node_state_merged(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    node_id = str(uuid.uuid4())
    agent = await open_agent(token)

    await agent.send(
        node=node_info(
            node_id, name="n1", image="btc/1", container_status=STATUS.Value("Creating")
        )
    )
    await agent.send()  # malformed: carries nothing
    await agent.send(node=node_info(node_id, container_status=STATUS.Value("Running")))
    queued = await cp.admin.queue_command(host_id, start(node_id))
    assert command_id(await agent.next_command()) == queued.id
    await agent.aclose()

    [node] = await cp.admin.list_nodes(host_id)
    assert (node.info.name, node.info.image) == ("n1", "btc/1")
    assert node.info.container_status == STATUS.Value("Running")
    with sqlite3.connect(cp.data_dir / "controlplane.sqlite3") as db:
        rows = db.execute("SELECT kind, error FROM updates ORDER BY seq").fetchall()
    assert rows == [
        ("node", None),
        (None, "the update carries no host, node or command info"),
        ("node", None),
    ]


async def test_a_report_without_a_failure_clears_the_old_one(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    node_id = str(uuid.uuid4())
    agent = await open_agent(token)
    stopped = STATUS.Value("Stopped")
    await agent.send(
        node=node_info(
            node_id,
            name="n1",
            container_status=stopped,
            failure_reason="found Stopped outside nodevisor",
            block_height=7,
        )
    )
    await agent.send(node=node_info(node_id, container_status=STATUS.Value("Running")))
    await agent.send(node=node_info(node_id, block_height=9))  # no status: a partial
    await agent.aclose()

    [node] = await cp.admin.list_nodes(host_id)
    assert node.info.name == "n1"
    assert not node.info.HasField("failure_reason")
    assert node.info.block_height == 9


async def test_send_command_streams_ack_node_info_and_result(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    node_id = str(uuid.uuid4())
    agent = await open_agent(token)
    updates = cp.admin.send_command(host_id, start(node_id), 10)

    queued = (await anext(updates)).queued
    command = await agent.next_command()
    await agent.answer(command)
    await agent.send(node=node_info(str(uuid.uuid4()), name="another node"))
    await agent.send(node=node_info(node_id, container_status=STATUS.Value("Running")))
    await agent.answer(command, exit_code=0, response="started")
    seen = [u.WhichOneof("update") async for u in updates]

    assert command_id(command) == queued.id
    assert seen == ["command_info", "node_info", "command_info"]
    [record] = await cp.admin.list_commands(host_id)
    assert (record.state, record.exit_code, record.response) == (4, 0, "started")


async def test_send_command_ends_at_the_callers_timeout(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()

    with pytest.raises(CommandTimeout, match="no result for command"):
        async for _ in cp.admin.send_command(host_id, start(str(uuid.uuid4())), 0.2):
            pass


async def test_raw_command_is_answered_without_an_id(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    agent = await open_agent(token)
    updates = cp.admin.send_command(host_id, command_flow_pb2.Command(), 10)
    await anext(updates)

    command = await agent.next_command()
    await agent.answer(command, exit_code=2, response="no command")
    [result] = [u async for u in updates]

    assert command.WhichOneof("type") is None
    assert result.command_info.exit_code == 2


async def test_second_stream_replaces_the_first(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    first = await open_agent(token)
    await first.send(host=host_pb2.HostInfo())
    await cp.wait_online(host_id)

    second = await open_agent(token)
    await second.send(host=host_pb2.HostInfo())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first.next_command()
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert "replaced by a newer stream" in (caught.value.details() or "")
    queued = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))
    assert command_id(await second.next_command()) == queued.id
    await cp.wait_online(host_id)
    await second.aclose()
    await cp.wait_online(host_id, online=False)


async def test_send_commands_answers_each_request_by_its_position(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    """Queued record then result for each command, whatever order the agent
    answers in; a refusal, alone, for a request that cannot be queued; and
    the call ends once every queued command has its result."""
    host_id, token = await cp.provision()
    agent = await open_agent(token)
    first, second = start(str(uuid.uuid4())), start(str(uuid.uuid4()))
    first.node.meta.api_command_id.value = str(uuid.uuid4())
    huge = too_large_with_its_meta()
    received = command_flow_pb2.UpdatesReceived(up_to=3)
    requests = [
        (host_id, first),
        (str(uuid.uuid4()), start(str(uuid.uuid4()))),  # no such host
        (host_id, second),
        (host_id, huge),
        (host_id, first),  # its command id is in use
        (host_id, command_flow_pb2.Command(received=received)),
    ]

    async def send() -> AsyncIterator[tuple[str, command_flow_pb2.Command]]:
        for request in requests:
            yield request

    answers: dict[int, list[str]] = {}
    results: dict[int, tuple[int, str]] = {}
    call = cp.admin.send_commands(send())
    with anyio.fail_after(20):
        async for answer in call:
            kind = answer.WhichOneof("update")
            answers.setdefault(answer.index, []).append(kind)
            if kind == "refused":
                results[answer.index] = (-1, answer.refused)
            elif kind == "result":
                results[answer.index] = (
                    answer.result.exit_code,
                    answer.result.response,
                )
            if len(answers.get(2, [])) == 1 and kind == "queued" and answer.index == 2:
                # both queued: answer the second first, with acks and states
                sent = [await agent.next_command() for _ in range(2)]
                for command in sent:
                    await agent.answer(command)
                await agent.send(node=node_info(second.node.id.value, name="b"))
                for command, code in zip(reversed(sent), (0, 7), strict=True):
                    await agent.answer(command, exit_code=code, response=f"rc {code}")

    assert answers == {
        0: ["queued", "result"],
        1: ["refused"],
        2: ["queued", "result"],
        3: ["refused"],
        4: ["refused"],
        5: ["refused"],
    }
    assert results[0] == (7, "rc 7") and results[2] == (0, "rc 0")
    assert "no host" in results[1][1] or "not found" in results[1][1].lower()
    assert "bytes with its id and time; at most" in results[3][1]
    assert "not a command to queue" in results[5][1]
    assert first.node.meta.api_command_id.value in results[4][1]
    assert len(await cp.admin.list_commands(host_id)) == 2


def too_large_with_its_meta() -> command_flow_pb2.Command:
    """A command the transport takes, too large to queue once its id and
    time are filled in and its record must carry it back."""
    create = node_pb2.NodeCreate(name="x" * (MAX_MESSAGE_BYTES - 2048))
    return node_command(str(uuid.uuid4()), create=create)


async def test_send_command_refuses_a_command_too_large_once_filled_in(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()
    with pytest.raises(InvalidRequest, match="bytes with its id and time; at most"):
        async for _ in cp.admin.send_command(host_id, too_large_with_its_meta(), 5):
            pass
    assert await cp.admin.list_commands(host_id) == []


async def test_send_command_refuses_a_command_id_that_is_not_a_uuid(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()
    command = start(str(uuid.uuid4()))
    command.node.meta.api_command_id.value = "my-command-1"
    with pytest.raises(InvalidRequest, match="'my-command-1' is not a UUID"):
        async for _ in cp.admin.send_command(host_id, command, 5):
            pass
    assert await cp.admin.list_commands(host_id) == []


async def test_send_command_refuses_an_updates_received(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()
    received = command_flow_pb2.UpdatesReceived(up_to=1)
    command = command_flow_pb2.Command(received=received)
    with pytest.raises(InvalidRequest, match="not a command to queue"):
        async for _ in cp.admin.send_command(host_id, command, 5):
            pass


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0"), (-1, "-1"), (1e-9, "1e-09"), (0.0009, "0.0009")]
)
async def test_send_command_refuses_a_timeout_under_a_millisecond_before_queueing(
    cp: RunningControlPlane, open_agent: OpenAgent, seconds: float, shown: str
) -> None:
    """The caller would be told at once that it timed out while its command
    ran all the same: nothing is queued, nothing reaches the agent. The
    refusal names the timeout the caller gave, not one rounded to 0."""
    host_id, token = await cp.provision()
    agent = await open_agent(token)
    command = start(str(uuid.uuid4()))

    with pytest.raises(InvalidRequest) as caught:
        async for _ in cp.admin.send_command(host_id, command, seconds):
            pass

    assert (
        f"the timeout must be at least 0.001s (1 ms), got {shown}s; leave it out"
        in str(caught.value)
    )

    assert await cp.admin.list_commands(host_id) == []
    queued = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))
    assert command_id(await agent.next_command()) == queued.id


async def test_listing_for_an_id_that_is_no_hosts_is_refused(
    cp: RunningControlPlane,
) -> None:
    """An unknown host is told from a host without nodes or commands."""
    host_id, _ = await cp.provision()
    unknown = str(uuid.uuid4())

    with pytest.raises(NotFound, match=f"no host with id '{unknown}'"):
        await cp.admin.list_nodes(unknown)
    with pytest.raises(NotFound, match=f"no host with id '{unknown}'"):
        await cp.admin.list_commands(unknown)
    with pytest.raises(NotFound, match="no host with id 'not-a-uuid'"):
        await cp.admin.list_commands_page("not-a-uuid", 1)
    assert await cp.admin.list_nodes(host_id) == []
    assert await cp.admin.list_commands(host_id) == []


async def test_list_commands_pages_through_a_long_history(
    cp: RunningControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of at most ``page_size`` commands, in queue order, each with the
    token of the next; the client reads them all."""
    host_id, _ = await cp.provision()
    queued = [
        (await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))).id
        for _ in range(5)
    ]
    pages, token = [], ""
    while True:
        page = await cp.admin.list_commands_page(host_id, 2, token)
        pages.append([record.id for record in page.commands])
        if not page.next_page_token:
            break
        token = page.next_page_token

    assert pages == [queued[:2], queued[2:4], queued[4:]]
    assert [r.id for r in await cp.admin.list_commands(host_id)] == queued
    with pytest.raises(InvalidRequest, match="is not one this control plane gave"):
        await cp.admin.list_commands_page(page_token="x1")


async def test_a_page_holds_no_more_than_one_message_can(
    cp: RunningControlPlane,
) -> None:
    """Two commands of 2.5 MiB each do not fit in one message: they come on
    two pages."""
    host_id, _ = await cp.provision()
    big = node_pb2.NodeCreate(name="x" * (5 * 1024 * 1024 // 2))
    for _ in range(2):
        await cp.admin.queue_command(
            host_id, node_command(str(uuid.uuid4()), create=big)
        )
    first = await cp.admin.list_commands_page(host_id)

    assert len(first.commands) == 1 and first.next_page_token
    assert len(await cp.admin.list_commands(host_id)) == 2


async def test_a_record_too_large_for_a_page_has_its_response_cut_short(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    """A 2.5 MiB command whose agent answered with a 2.5 MiB response makes
    a record larger than any message: it is listed with the response cut
    short and saying so, and the commands after it are listed too."""
    host_id, token = await cp.provision()
    big = node_pb2.NodeCreate(name="x" * (5 * 1024 * 1024 // 2))
    large = await cp.admin.queue_command(
        host_id, node_command(str(uuid.uuid4()), create=big)
    )
    after = await cp.admin.queue_command(host_id, start(str(uuid.uuid4())))
    agent = await open_agent(token)
    command = await agent.next_command()
    await agent.answer(command, exit_code=1, response="y" * (5 * 1024 * 1024 // 2))
    await agent.aclose()

    records = await cp.admin.list_commands(host_id)

    assert [record.id for record in records] == [large.id, after.id]
    assert records[0].exit_code == 1
    assert records[0].command.node.create.name == big.name
    assert records[0].response.startswith("y" * 1000)
    assert records[0].response.endswith(
        f"cut short by the control plane: the response is {5 * 1024 * 1024 // 2} "
        f"bytes, and a command's record is sent in at most {MAX_MESSAGE_BYTES - 1024}]"
    )
