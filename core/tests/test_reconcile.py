"""The reconciler on the memory runtime: convergence, backoff, adoption."""

import json
import logging
import uuid

import anyio
import pytest

from blockjoy.api.v1 import common_pb2, host_pb2, node_pb2
from nodevisor import NodeState
from nodevisor._dispatch import Dispatcher
from nodevisor._reconcile import Reconciler
from nodevisor._states import NodeStatus
from nodevisor._store import StoreRunner

from .test_nodes import create, running

pytestmark = pytest.mark.anyio
S = NodeStatus


@pytest.fixture
async def reconciler(manager, store):
    async def host_info():
        return host_pb2.HostInfo()

    async with Dispatcher(
        nodes=manager, db=StoreRunner(store), emit=lambda _: None, host_info=host_info
    ) as dispatcher:
        yield Reconciler(manager, dispatcher, attempts=3, first_delay=0.05)


async def settle(reconciler, adopt=False):
    scheduled = await reconciler.reconcile(adopt=adopt)
    with anyio.fail_after(5):
        await reconciler.dispatcher.wait_idle()
    return scheduled


async def test_a_node_stopped_behind_the_agents_back_is_started(
    reconciler, manager, memory, reports, new_id
):
    await running(manager, new_id)
    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    assert await settle(reconciler) == 1
    assert reports.statuses(new_id)[-3:] == ["Stopped", "Starting", "Running"]
    assert "found Stopped outside nodevisor" in reports[-3].failure
    # brought back: what was found no longer describes the node
    assert reports[-1].failure is None
    assert (await manager.require(new_id)).failure is None
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING
    assert await settle(reconciler) == 0  # in step now: nothing to do


async def test_a_node_that_should_be_stopped_is_stopped(
    reconciler, manager, memory, new_id
):
    await manager.create(new_id, create())
    memory.set_state_out_of_band(new_id, NodeState.RUNNING)
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.STOPPED
    assert (await manager.require(new_id)).status is S.Stopped


async def test_failures_back_off_then_the_node_is_reported_failed(
    reconciler, manager, memory, new_id
):
    await running(manager, new_id)
    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    memory.fail.add("start")
    for _ in range(3):
        await settle(reconciler)
        assert await settle(reconciler) == 0  # backing off: not yet again
        await anyio.sleep(0.25)
    node = await manager.require(new_id)
    assert node.failure.startswith("gave up bringing the node to Running after 3")
    assert "told to fail start" in node.failure
    starts = memory.calls["start"]
    await anyio.sleep(0.3)
    await settle(reconciler)
    assert memory.calls["start"] == starts  # given up: left alone


async def test_a_node_with_a_running_command_is_left_alone(
    reconciler, manager, memory, new_id
):
    await running(manager, new_id)
    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    busy = anyio.Event()
    reconciler.dispatcher.run_in_lane(new_id, busy.wait)
    assert await reconciler.reconcile() == 0
    busy.set()
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING


async def test_an_interrupted_create_is_finished(reconciler, manager, store, new_id):
    await manager.create(new_id, create())
    node = await manager.require(new_id)
    # as if the agent died between Creating and the runtime's create
    await manager.delete(new_id)
    await manager.nodes()  # a read waits for the writes queued before it
    store.save_node(node.replace(status=S.Creating, expected=S.Stopped))
    await settle(reconciler)
    assert (await manager.require(new_id)).status is S.Stopped


async def test_an_interrupted_upgrade_is_finished_or_rolled_back(
    reconciler, manager, memory, store, new_id
):
    await running(manager, new_id)
    node = await manager.require(new_id)
    journal = json.dumps({"op": "upgrade", "from": "1", "to": "2"})
    # the runtime had already switched to version 2 when the agent died
    spec2 = manager.spec(node.replace(version="2"))
    await memory.stop(spec2)
    await memory.upgrade(manager.spec(node), spec2)
    await manager.nodes()  # a read waits for the writes queued before it
    store.save_node(node.replace(status=S.Upgrading, journal=journal))
    await settle(reconciler)
    finished = await manager.require(new_id)
    assert (finished.version, finished.status, finished.journal) == (
        "2",
        S.Running,
        None,
    )

    other = str(uuid.uuid4())
    await manager.create(other, create(name="beta"))
    await manager.start(other)
    node = await manager.require(other)
    # the agent died before the runtime changed anything
    await manager.nodes()
    store.save_node(node.replace(status=S.Upgrading, journal=journal))
    await settle(reconciler)
    back = await manager.require(other)
    assert (back.version, back.status, back.journal) == ("1", S.Running, None)
    assert "interrupted and rolled back" in back.failure
    # an upgrade to the version the node runs succeeds, and ends the story
    assert "runs testchain/1 already" in await manager.upgrade(
        other,
        node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/1")),
    )
    assert (await manager.require(other)).failure is None


async def test_a_no_op_command_still_says_what_the_node_should_be(
    reconciler, manager, memory, store, new_id
):
    """A node Stopped while Running is still expected of it (an interrupted
    upgrade rolled back, say, before the reconciler started it): a stop then
    finds nothing to do, yet the reconciler must not start the node it was
    just told to stop. And the other way round for a start of a running
    node."""
    await running(manager, new_id)
    node = await manager.require(new_id)
    await memory.stop(manager.spec(node))
    await manager.nodes()  # a read waits for the writes queued before it
    store.save_node(node.replace(status=S.Stopped))
    await manager.get(new_id)  # read afresh, as after a restart
    assert (await manager.require(new_id)).expected is S.Running

    assert "stopped already" in await manager.stop(new_id)
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.STOPPED
    assert (await manager.require(new_id)).expected is S.Stopped

    memory.set_state_out_of_band(new_id, NodeState.RUNNING)
    await manager.nodes()
    store.save_node((await manager.require(new_id)).replace(status=S.Running))
    await manager.get(new_id)
    assert "running already" in await manager.start(new_id)
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING
    assert (await manager.require(new_id)).expected is S.Running


async def test_an_upgrade_rolled_back_is_started_in_the_same_check(
    reconciler, manager, memory, store, reports, new_id
):
    """A crash after an upgrade stopped the node: one check rolls it back and
    starts it, as expected of it, without waiting for the next pass."""
    await running(manager, new_id)
    node = await manager.require(new_id)
    await memory.stop(manager.spec(node))  # the upgrade's first step
    await manager.nodes()
    journal = json.dumps({"op": "upgrade", "from": "1", "to": "2"})
    store.save_node(node.replace(status=S.Upgrading, journal=journal))
    await manager.get(new_id)

    assert await settle(reconciler) == 1

    node = await manager.require(new_id)
    assert (node.status, node.version, node.journal) == (S.Running, "1", None)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING
    assert reports.statuses(new_id)[-3:] == ["Stopped", "Starting", "Running"]


async def test_nodes_the_store_lost_are_adopted_untouched(
    reconciler, manager, memory, store, new_id
):
    await running(manager, new_id)
    other = str(uuid.uuid4())
    await manager.create(other, create(name="beta"))
    await manager.nodes()  # a read waits for the writes queued before it
    for node in store.nodes():
        store.forget_node(node.id)
    calls = dict(memory.calls)
    await settle(reconciler, adopt=True)
    adopted = {n.id: n for n in store.nodes()}
    assert adopted[new_id].status is S.Running and adopted[new_id].name == "alpha"
    assert adopted[other].status is S.Stopped and adopted[other].url == "testchain/1"
    assert "adopted" in adopted[other].failure
    assert {
        k: v for k, v in memory.calls.items() if k not in ("inspect", "list_nodes")
    } == {k: v for k, v in calls.items() if k not in ("inspect", "list_nodes")}


async def test_a_running_node_removed_outside_is_made_again(
    reconciler, manager, memory, reports, new_id
):
    await running(manager, new_id)
    memory.remove_out_of_band(new_id)
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING
    assert reports.statuses(new_id)[-3:] == ["Stopped", "Starting", "Running"]
    assert "removed outside nodevisor" in reports[-3].failure


async def test_a_runtime_event_gets_the_node_checked_without_a_pass(
    reconciler, manager, memory, new_id
):
    await running(manager, new_id)
    send, receive = anyio.create_memory_object_stream[str](10)
    memory.changes = lambda: receive  # an engine's event feed
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reconciler.follow, memory)
        memory.set_state_out_of_band(new_id, NodeState.STOPPED)
        await send.send(new_id)
        await anyio.sleep(0.05)  # the feed hands the id on
        with anyio.fail_after(5):
            await reconciler.dispatcher.wait_idle()
        tasks.cancel_scope.cancel()
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING
    assert (await manager.require(new_id)).status is S.Running


async def test_a_node_that_keeps_stopping_by_itself_is_left_stopped(
    reconciler, manager, memory, new_id
):
    await running(manager, new_id)
    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    await settle(reconciler)  # the first fall: started again at once
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING

    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    await settle(reconciler)  # the second: reported, started after a delay
    assert (await memory.inspect(new_id)).state is NodeState.STOPPED
    assert (await manager.require(new_id)).status is S.Stopped
    assert await settle(reconciler) == 0
    await anyio.sleep(reconciler.first_delay)
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING

    memory.set_state_out_of_band(new_id, NodeState.STOPPED)  # attempts is 3
    await settle(reconciler)
    node = await manager.require(new_id)
    assert (await memory.inspect(new_id)).state is NodeState.STOPPED
    assert node.status is S.Stopped
    assert node.failure.startswith("the node stopped by itself 3 times within 10")
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.STOPPED
    await manager.start(new_id)  # a command brings it back
    assert (await manager.require(new_id)).failure is None


async def test_an_unreachable_engine_is_waited_for_not_given_up_on(
    reconciler, manager, memory, new_id
):
    from nodevisor import RuntimeUnavailable

    await running(manager, new_id)
    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    real_start = memory.start

    async def engine_down(spec):
        raise RuntimeUnavailable("cannot reach the engine")

    memory.start = engine_down
    for _ in range(5):  # more than attempts (3); the runtime lists its
        await settle(reconciler)  # nodes, so each pass tries again at once
    assert not reconciler._tries[new_id].given_up
    memory.start = real_start
    await settle(reconciler)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING


async def test_an_event_during_the_delay_after_a_failure_is_acted_on_after_it(
    manager, memory, store, new_id
):
    """With no periodic pass to come, a node named by an event while it
    waits out its retry delay is checked when the delay ends."""

    async def host_info():
        return host_pb2.HostInfo()

    await running(manager, new_id)
    async with Dispatcher(
        nodes=manager, db=StoreRunner(store), emit=lambda _: None, host_info=host_info
    ) as dispatcher:
        reconciler = Reconciler(manager, dispatcher, attempts=5, first_delay=0.3)
        memory.set_state_out_of_band(new_id, NodeState.STOPPED)
        memory.fail.add("start")
        await settle(reconciler)  # the start fails: 0.3 s before the next try
        memory.fail.discard("start")
        send, receive = anyio.create_memory_object_stream[str](10)
        memory.changes = lambda: receive
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reconciler.follow, memory)
            await send.send(new_id)  # within the delay
            await until_running(memory, new_id)
            tasks.cancel_scope.cancel()
    assert (await manager.require(new_id)).status is S.Running


async def test_an_event_for_a_busy_node_is_acted_on_once_it_is_free(
    reconciler, manager, memory, new_id
):
    """With no periodic pass to come, a node named by an event while a job
    holds its lane is checked when the lane is free, not forgotten."""
    await running(manager, new_id)
    release = anyio.Event()

    async def busy() -> None:
        await release.wait()

    assert reconciler.dispatcher.run_in_lane(new_id, busy)
    send, receive = anyio.create_memory_object_stream[str](10)
    memory.changes = lambda: receive
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reconciler.follow, memory)
        memory.set_state_out_of_band(new_id, NodeState.STOPPED)
        await send.send(new_id)  # while the lane is held
        await anyio.sleep(0.3)
        release.set()
        await until_running(memory, new_id)
        tasks.cancel_scope.cancel()
    assert (await manager.require(new_id)).status is S.Running


async def until_running(memory, node_id) -> None:
    with anyio.fail_after(5):
        while True:
            if (await memory.inspect(node_id)).state is NodeState.RUNNING:
                return
            await anyio.sleep(0.05)


async def test_a_node_whose_runtime_failed_to_load_says_so(
    manager, memory, reports, new_id
):
    """At start-up, a node on a runtime that could not be loaded is reported
    with the reason, its status as last known; the next start-up with the
    runtime back clears it."""
    await running(manager, new_id)
    manager.runtimes.clear()
    manager._unavailable["memory"] = "plugin 'memory' (x 1.0): failed to import"

    await manager.mark_unmanaged()
    await manager.mark_unmanaged()  # reported once, not at every start-up

    [report] = [r for r in reports if r.id == new_id and r.failure]
    assert report.status is S.Running
    assert report.failure == (
        "the node's runtime 'memory' is not available (plugin 'memory' (x 1.0): "
        "failed to import); the node is not managed until an agent starts with it"
    )
    manager.runtimes["memory"] = memory
    await manager.mark_unmanaged()
    assert reports[-1].id == new_id and reports[-1].failure is None


async def hiccup(n: int):
    """An event feed that breaks at once, as an engine's may."""
    raise RuntimeError(f"engine hiccup {n}")
    yield  # an async generator: it breaks when it is read


def feed_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("the event feed of")
    ]


async def test_an_event_feed_that_fails_is_asked_for_again_ever_later(
    reconciler, manager, memory, new_id, caplog
):
    """Each failure is logged once, and the next changes() waits twice as
    long, up to MAX_DELAY; the feed that then works is followed."""
    await running(manager, new_id)
    reconciler.MAX_DELAY = 0.2  # first_delay is 0.05
    send, receive = anyio.create_memory_object_stream[str](10)
    calls = 0

    def changes():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("engine hiccup 1")  # changes() itself fails
        return hiccup(calls) if calls <= 4 else receive

    memory.changes = changes
    caplog.set_level(logging.WARNING, logger="nodevisor._reconcile")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reconciler.follow, memory)
        memory.set_state_out_of_band(new_id, NodeState.STOPPED)
        await send.send(new_id)
        await until_running(memory, new_id)
        tasks.cancel_scope.cancel()
    assert calls == 5
    assert feed_warnings(caplog) == [
        f"the event feed of runtime 'memory' failed: RuntimeError('engine "
        f"hiccup {n}'); asking for it again in {delay}s"
        for n, delay in [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.2)]
    ]


async def test_a_feed_asked_for_again_that_is_none_is_not_followed(
    reconciler, memory, caplog
):
    calls = 0

    def changes():
        nonlocal calls
        calls += 1
        return hiccup(calls) if calls == 1 else None

    memory.changes = changes
    with anyio.fail_after(5):
        await reconciler.follow(memory)  # returns: no feed to follow
    assert calls == 2
    assert len(feed_warnings(caplog)) == 1
