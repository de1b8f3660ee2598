"""The dispatcher: acks, results, ordering per node, and bad commands."""

import uuid

import anyio
import pytest
from google.protobuf import any_pb2, wrappers_pb2

from blockjoy.api.v1 import command_flow_pb2, common_pb2, host_pb2, node_pb2
from nodevisor import ExitCode
from nodevisor._dispatch import Dispatcher
from nodevisor._messages import MAX_TEXT_BYTES, command_result, node_update
from nodevisor._nodes import StoreRunner

pytestmark = pytest.mark.anyio


def node_command(node_id, command_id=None, **variant):
    meta = common_pb2.CommandMeta(
        api_command_id=common_pb2.Uuid(value=command_id or str(uuid.uuid4()))
    )
    inner = node_pb2.NodeCommand(
        id=common_pb2.Uuid(value=node_id), meta=meta, **variant
    )
    return command_flow_pb2.Command(node=inner)


def create_command(node_id, name="alpha", url="testchain/1", **kw):
    image = common_pb2.ContainerImage(url=url)
    return node_command(
        node_id, create=node_pb2.NodeCreate(name=name, image=image), **kw
    )


class Sent(list):
    def results(self):
        return [
            (u.command.id.value, u.command.exit_code, u.command.response)
            for u in self
            if u.HasField("command") and u.command.HasField("exit_code")
        ]

    def acks(self):
        return [
            u.command.id.value
            for u in self
            if u.HasField("command") and not u.command.HasField("exit_code")
        ]


@pytest.fixture
async def dispatch(manager, store):
    sent = Sent()
    manager._report = lambda node: sent.append(node_update(node))

    async def host_info():
        return host_pb2.HostInfo(name="test-host")

    async with Dispatcher(
        nodes=manager, db=StoreRunner(store), emit=sent.append, host_info=host_info
    ) as dispatcher:
        yield dispatcher, sent


async def settle(dispatcher):
    with anyio.fail_after(5):
        await dispatcher.wait_idle()


async def test_each_command_is_acked_then_answered(dispatch, new_id):
    dispatcher, sent = dispatch
    command = create_command(new_id)
    dispatcher.submit(command)
    await settle(dispatcher)
    command_id = command.node.meta.api_command_id.value
    kinds = [u.WhichOneof("info") for u in sent]
    assert kinds[0] == "command" and sent.acks() == [command_id]
    assert kinds[1:4] == ["node", "node", "node"]
    assert sent.results() == [(command_id, 0, sent.results()[0][2])]


async def test_a_command_without_a_variant_gets_invalid_command(dispatch):
    dispatcher, sent = dispatch
    dispatcher.submit(command_flow_pb2.Command())
    await settle(dispatcher)
    assert sent.results() == [
        (
            "",
            ExitCode.INVALID_COMMAND,
            "the Command carries neither a node nor a host command",
        )
    ]


async def test_a_node_command_without_a_command_is_refused(dispatch, new_id):
    dispatcher, sent = dispatch
    dispatcher.submit(node_command(new_id, command_id="c-1"))
    await settle(dispatcher)
    [(command_id, code, response)] = sent.results()
    assert (command_id, code) == ("c-1", ExitCode.INVALID_COMMAND)
    assert "carries no command" in response


async def test_a_command_without_an_id_is_refused(dispatch, new_id):
    dispatcher, sent = dispatch
    command = create_command(new_id)
    command.node.meta.ClearField("api_command_id")
    dispatcher.submit(command)
    await settle(dispatcher)
    [(command_id, code, response)] = sent.results()
    assert (command_id, code) == ("", ExitCode.INVALID_COMMAND)
    assert "no meta.api_command_id" in response


async def test_a_repeated_command_id_is_answered_from_the_store(
    dispatch, memory, new_id
):
    """Sent again while it runs, a command is acknowledged again and its one
    result follows; sent again once finished, its result is sent again."""
    dispatcher, sent = dispatch
    command = create_command(new_id)
    command_id = command.node.meta.api_command_id.value
    dispatcher.submit(command)
    dispatcher.submit(command)
    await settle(dispatcher)
    assert sent.acks() == [command_id, command_id]
    assert len(sent.results()) == 1
    dispatcher.submit(command)
    await settle(dispatcher)
    assert memory.calls["create"] == 1
    results = sent.results()
    assert len(results) == 2 and len(set(results)) == 1
    assert sent.acks() == [command_id] * 3


async def test_commands_for_one_node_run_in_order(dispatch, memory, new_id):
    dispatcher, sent = dispatch
    memory.delay["start"] = 0.05
    commands = [
        create_command(new_id),
        node_command(new_id, start=node_pb2.NodeStart()),
        node_command(new_id, stop=node_pb2.NodeStop()),
        node_command(new_id, delete=node_pb2.NodeDelete()),
    ]
    for command in commands:
        dispatcher.submit(command)
    await settle(dispatcher)
    ids = [c.node.meta.api_command_id.value for c in commands]
    assert [r[0] for r in sent.results()] == ids
    assert all(r[1] == 0 for r in sent.results())


async def test_commands_for_different_nodes_run_concurrently(dispatch, memory):
    dispatcher, sent = dispatch
    memory.delay["create"] = 0.3
    nodes = [str(uuid.uuid4()) for _ in range(5)]
    started = anyio.current_time()
    for index, node_id in enumerate(nodes):
        dispatcher.submit(create_command(node_id, name=f"n{index}"))
    await settle(dispatcher)
    assert anyio.current_time() - started < 0.3 * len(nodes) / 2
    assert len(sent.results()) == 5


async def test_errors_become_results_and_the_dispatcher_carries_on(dispatch, new_id):
    dispatcher, sent = dispatch
    dispatcher.submit(node_command(new_id, start=node_pb2.NodeStart()))
    dispatcher.submit(create_command(new_id, name="bad/name"))
    dispatcher.submit(create_command(new_id, url="nochain/1"))
    dispatcher.submit(create_command(new_id))
    await settle(dispatcher)
    codes = [r[1] for r in sent.results()]
    assert codes == [
        ExitCode.NODE_NOT_FOUND,
        ExitCode.INVALID_ARGUMENT,
        ExitCode.INVALID_ARGUMENT,
        ExitCode.OK,
    ]


def generic(**params) -> node_pb2.NodeGenericCommand:
    boxes = []
    for name, value in params.items():
        box = any_pb2.Any()
        box.Pack(value)
        boxes.append(common_pb2.Parameter(name=name, value=box))
    return node_pb2.NodeGenericCommand(params=boxes)


async def test_a_generic_command_the_spec_does_not_declare_is_refused(dispatch, new_id):
    dispatcher, sent = dispatch
    dispatcher.submit(create_command(new_id))
    name = wrappers_pb2.StringValue(value="reboot")
    dispatcher.submit(node_command(new_id, generic=generic(command=name)))
    await settle(dispatcher)
    _, code, response = sent.results()[-1]
    assert code == ExitCode.NOT_SUPPORTED
    assert "declares no generic command 'reboot'" in response


async def test_a_generic_command_without_a_name_is_invalid(dispatch, new_id):
    dispatcher, sent = dispatch
    dispatcher.submit(create_command(new_id))
    dispatcher.submit(node_command(new_id, generic=node_pb2.NodeGenericCommand()))
    await settle(dispatcher)
    _, code, response = sent.results()[-1]
    assert code == ExitCode.INVALID_COMMAND and "names no command" in response


@pytest.mark.parametrize(
    "which", ["update_bvs", "restart_bvs", "remove_bvs", "generic"]
)
async def test_host_commands_the_agent_cannot_do_say_so(dispatch, which):
    dispatcher, sent = dispatch
    variant = {
        "update_bvs": host_pb2.HostUpdateBVS(version="2"),
        "restart_bvs": host_pb2.HostRestartBVS(),
        "remove_bvs": host_pb2.HostRemoveBVS(),
        "generic": host_pb2.HostGenericCommand(),
    }[which]
    meta = common_pb2.CommandMeta(api_command_id=common_pb2.Uuid(value="h-1"))
    host = host_pb2.HostCommand(meta=meta, **{which: variant})
    dispatcher.submit(command_flow_pb2.Command(host=host))
    await settle(dispatcher)
    [(command_id, code, response)] = sent.results()
    assert (command_id, code) == ("h-1", ExitCode.NOT_SUPPORTED)
    assert "is not supported by this agent" in response


async def test_host_info_get_sends_host_info(dispatch):
    dispatcher, sent = dispatch
    meta = common_pb2.CommandMeta(api_command_id=common_pb2.Uuid(value="h-2"))
    host = host_pb2.HostCommand(meta=meta, info_get=host_pb2.HostInfoGet())
    dispatcher.submit(command_flow_pb2.Command(host=host))
    await settle(dispatcher)
    assert any(u.HasField("host") and u.host.name == "test-host" for u in sent)
    assert sent.results()[0][:2] == ("h-2", 0)


def test_generic_parameters_pack_and_unpack_to_the_same_values():
    from nodevisor._protocol import pack_generic, unpack_generic

    params = {"n": 5, "ratio": 0.5, "force": True, "label": "a b; c"}
    assert unpack_generic("node", pack_generic("mine", params)) == ("mine", params)


async def test_a_refused_value_of_megabytes_is_quoted_short(dispatch, new_id):
    """An image url of 4 MB is refused with a result that quotes only its
    start: the result must fit in a message, or it is never delivered."""
    dispatcher, sent = dispatch
    url = "testchain/" + "9" * 4_000_000
    dispatcher.submit(create_command(new_id, url=url))
    await settle(dispatcher)
    [(_, code, response)] = sent.results()
    assert code == ExitCode.INVALID_ARGUMENT
    assert "has no version '99999" in response
    assert "... (4000000 characters)" in response
    assert len(response) < 1000


def test_a_response_too_large_for_an_update_is_cut_short_saying_so():
    update = command_result("c-1", 10, "é" * 100_000)
    response = update.command.response
    assert len(response.encode()) <= MAX_TEXT_BYTES
    assert response.startswith("é" * 1000)
    assert response.endswith(" [cut short: 200000 bytes in all]")


async def test_a_host_command_for_another_host_is_refused(dispatch, manager):
    dispatcher, sent = dispatch
    meta = common_pb2.CommandMeta(api_command_id=common_pb2.Uuid(value="h-3"))
    other = common_pb2.Uuid(value=str(uuid.uuid4()))
    host = host_pb2.HostCommand(id=other, meta=meta, info_get=host_pb2.HostInfoGet())
    dispatcher.submit(command_flow_pb2.Command(host=host))
    await settle(dispatcher)
    assert not any(u.HasField("host") for u in sent)
    [(command_id, code, response)] = sent.results()
    assert (command_id, code) == ("h-3", ExitCode.INVALID_ARGUMENT)
    assert f"is for host '{other.value}', and this agent is host " in response
    assert manager.host_id in response


async def test_a_host_command_naming_this_host_runs(dispatch, manager):
    dispatcher, sent = dispatch
    meta = common_pb2.CommandMeta(api_command_id=common_pb2.Uuid(value="h-4"))
    this = common_pb2.Uuid(value=manager.host_id)
    host = host_pb2.HostCommand(id=this, meta=meta, info_get=host_pb2.HostInfoGet())
    dispatcher.submit(command_flow_pb2.Command(host=host))
    await settle(dispatcher)
    assert sent.results()[0][:2] == ("h-4", 0)


async def test_a_command_that_waits_for_its_node_is_acknowledged_at_once(
    dispatch, memory, store, new_id
):
    """A stop queued behind a slow start is recorded and acknowledged when it
    arrives, not when its turn comes; it is recorded as started only then."""
    dispatcher, sent = dispatch
    create = create_command(new_id)
    dispatcher.submit(create)
    await settle(dispatcher)
    memory.delay["start"] = 1.0
    start = node_command(new_id, start=node_pb2.NodeStart())
    stop = node_command(new_id, stop=node_pb2.NodeStop())
    stop_id = stop.node.meta.api_command_id.value
    dispatcher.submit(start)
    dispatcher.submit(stop)
    # Well before the start is done: recorded, then acknowledged.
    waiting = await recorded(store, stop_id, within=0.8)
    assert stop_id in sent.acks()
    assert waiting.started_at is None
    assert memory.calls["stop"] == 0
    await settle(dispatcher)
    done = await recorded(store, stop_id, finished=True)
    assert done.started_at is not None
    assert [r[0] for r in sent.results()][-2:] == [
        start.node.meta.api_command_id.value,
        stop_id,
    ]


async def test_a_command_that_never_started_is_forgotten_and_runs_when_sent_again(
    manager, memory, store, new_id
):
    """The agent stops while a start runs and a stop waits behind it: the
    start is an interrupted command; the stop did nothing, so at the next
    start-up it is forgotten, and sent again it runs."""
    sent = Sent()

    async def host_info():
        return host_pb2.HostInfo(name="test-host")

    db = StoreRunner(store)
    create = create_command(new_id)
    start = node_command(new_id, start=node_pb2.NodeStart())
    stop = node_command(new_id, stop=node_pb2.NodeStop())
    start_id = start.node.meta.api_command_id.value
    stop_id = stop.node.meta.api_command_id.value
    async with Dispatcher(
        nodes=manager, db=db, emit=sent.append, host_info=host_info
    ) as dispatcher:
        dispatcher.submit(create)
        await settle(dispatcher)
        memory.delay["start"] = 30
        dispatcher.submit(start)
        dispatcher.submit(stop)
        await recorded(store, stop_id, within=5)
        # leaving the block cancels the lanes, as a stopping agent does
    assert store.command(start_id).finished  # reported interrupted
    assert store.command(stop_id).started_at is None
    assert store.forget_unstarted() == 1
    assert store.command(stop_id) is None
    assert store.command(start_id) is not None

    memory.delay["start"] = 0
    async with Dispatcher(
        nodes=manager, db=db, emit=sent.append, host_info=host_info
    ) as dispatcher:
        dispatcher.submit(stop)
        await settle(dispatcher)
        ran = await recorded(store, stop_id, finished=True)
    # It ran this time: the node, left Starting by the interrupted start
    # (which the reconciler would finish), is not one a stop can act on.
    assert (ran.exit_code, ran.started_at is not None) == (4, True)
    assert "it is Starting, and stop needs it Running" in ran.response
    assert sent.results()[-1][0] == stop_id


async def recorded(store, command_id: str, within: float = 5, finished=False):
    """The command's record, once it is committed (with its result)."""
    with anyio.fail_after(within):
        for _ in range(100_000):
            record = store.command(command_id)
            if record is not None and (record.finished or not finished):
                return record
            await anyio.sleep(0.01)
