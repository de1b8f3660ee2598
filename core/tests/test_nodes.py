"""Node commands on the memory runtime: the status flow each one reports."""

import threading
import uuid

import anyio
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor import (
    Capabilities,
    Catalogue,
    Conflict,
    InvalidArgument,
    InvalidTransition,
    NodeNotFound,
    NodeState,
    NotSupported,
    RuntimeFailure,
    ServiceNotReady,
    UpgradeFailed,
)
from nodevisor._messages import node_update
from nodevisor._nodes import NodeManager
from nodevisor._outbox import Outbox
from nodevisor._states import NodeStatus
from nodevisor._store import StoreRunner

pytestmark = pytest.mark.anyio


def create(name="alpha", url="testchain/1", blockchain=""):
    return node_pb2.NodeCreate(
        name=name, blockchain=blockchain, image=common_pb2.ContainerImage(url=url)
    )


async def running(manager, node_id):
    await manager.create(node_id, create())
    await manager.start(node_id)


async def test_create_goes_installing_creating_stopped(
    manager, reports, memory, new_id
):
    response = await manager.create(new_id, create())
    assert "created from testchain/1" in response
    assert reports.statuses(new_id) == ["Installing", "Creating", "Stopped"]
    assert (await memory.inspect(new_id)).state is NodeState.STOPPED
    assert (await manager.require(new_id)).expected is NodeStatus.Stopped


async def test_full_lifecycle_reports_every_transition(manager, reports, new_id):
    await manager.create(new_id, create())
    await manager.start(new_id)
    await manager.restart(new_id)
    await manager.upgrade(
        new_id, node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    )
    await manager.stop(new_id)
    await manager.delete(new_id)
    assert reports.statuses(new_id) == [
        "Installing",
        "Creating",
        "Stopped",
        "Starting",
        "Running",
        "Stopping",
        "Stopped",
        "Starting",
        "Running",
        "Upgrading",
        "Upgraded",
        "Running",
        "Stopping",
        "Stopped",
        "Deleting",
        "Deleted",
    ]


async def test_create_of_an_existing_id_does_nothing(manager, reports, memory, new_id):
    await manager.create(new_id, create())
    before = len(reports)
    response = await manager.create(new_id, create(name="other"))
    assert "exists already" in response
    assert len(reports) == before
    assert memory.calls["create"] == 1


async def test_create_with_a_taken_name_fails_and_changes_nothing(
    manager, reports, new_id
):
    await manager.create(new_id, create())
    other = str(uuid.uuid4())
    with pytest.raises(Conflict, match=f"'alpha' is taken by node {new_id}"):
        await manager.create(other, create())
    assert reports.statuses(other) == []
    with pytest.raises(NodeNotFound):
        await manager.require(other)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "node name is empty"),
        ("x" * 64, "is 64 characters long; at most 63"),
        ("../etc", "may hold only ASCII letters"),
        ("a/b", "may hold only ASCII letters"),
        ("-lead", "must start with a letter or digit"),
        ("alpha\n", "may hold only ASCII letters"),
    ],
)
async def test_bad_names_are_refused(manager, reports, new_id, name, message):
    with pytest.raises(InvalidArgument, match=message):
        await manager.create(new_id, create(name=name))
    assert reports == []


async def test_unknown_image_and_mismatched_blockchain_are_refused(
    manager, reports, new_id
):
    with pytest.raises(InvalidArgument, match="has no version '7'"):
        await manager.create(new_id, create(url="testchain/7"))
    with pytest.raises(InvalidArgument, match="blockchain 'ethereum' does not match"):
        await manager.create(new_id, create(blockchain="ethereum"))
    assert reports == []


async def test_a_node_id_must_be_a_uuid(manager):
    with pytest.raises(InvalidArgument, match="node id 'node-1' is not a UUID"):
        await manager.create("node-1", create())


async def test_an_unavailable_image_rolls_the_create_back(
    manager, memory, reports, new_id
):
    memory.missing_images.add("testchain:1")
    with pytest.raises(RuntimeFailure, match="'testchain:1'"):
        await manager.create(new_id, create())
    assert reports.statuses(new_id) == ["Installing", "Deleted"]
    assert "create failed" in reports[-1].failure
    with pytest.raises(NodeNotFound):
        await manager.require(new_id)
    # nothing was left behind: the same create succeeds once the image exists
    memory.missing_images.clear()
    await manager.create(new_id, create())


async def test_noops_succeed_without_calling_the_runtime(
    manager, memory, reports, new_id
):
    await manager.create(new_id, create())
    assert "stopped already" in await manager.stop(new_id)
    await manager.start(new_id)
    starts = memory.calls["start"]
    assert "running already" in await manager.start(new_id)
    assert memory.calls["start"] == starts


async def test_commands_for_an_unknown_node(manager, new_id):
    for call in (
        manager.start,
        manager.stop,
        manager.delete,
        manager.info,
        manager.restart,
    ):
        with pytest.raises(NodeNotFound, match=f"no node with id '{new_id}'"):
            await call(new_id)


async def test_upgrade_needs_a_running_node(manager, new_id):
    await manager.create(new_id, create())
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(
        InvalidTransition, match="it is Stopped, and upgrade needs it Running"
    ):
        await manager.upgrade(new_id, upgrade)


async def test_upgrade_to_a_missing_image_leaves_the_node_running(
    manager, memory, reports, new_id
):
    await running(manager, new_id)
    memory.missing_images.add("testchain:2")
    before = len(reports)
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(UpgradeFailed, match="keeps running testchain/1"):
        await manager.upgrade(new_id, upgrade)
    assert len(reports) == before
    assert memory.calls["stop"] == 0
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING


async def test_failed_upgrade_rolls_back(manager, memory, reports, new_id, monkeypatch):
    """The image could not be replaced: the node is put back on its old
    version and started again, as it ran before."""
    await running(manager, new_id)
    upgrade_step = memory.upgrade

    async def replacing_fails(old, new):
        if new.version == "2":
            raise RuntimeFailure("disk full while unpacking testchain/2")
        await upgrade_step(old, new)

    monkeypatch.setattr(memory, "upgrade", replacing_fails)
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(UpgradeFailed, match="rolled back to testchain/1: disk full"):
        await manager.upgrade(new_id, upgrade)
    node = await manager.require(new_id)
    assert (node.version, node.status) == ("1", NodeStatus.Running)
    assert reports.statuses(new_id)[-2:] == ["Upgrading", "Running"]
    assert "disk full" in node.failure
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING


async def test_an_upgrade_whose_rollback_fails_says_so(
    manager, memory, reports, new_id
):
    """Replacing the image fails both ways: the result does not claim a
    rollback; it says that putting the node back failed, and where the node
    was left. The node keeps both reasons."""
    await running(manager, new_id)
    memory.fail.add("upgrade")
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(UpgradeFailed) as raised:
        await manager.upgrade(new_id, upgrade)
    message = str(raised.value)
    assert "was rolled back" not in message
    assert "and so did putting it back on testchain/1" in message
    assert "the node is Stopped" in message
    node = await manager.require(new_id)
    assert (node.version, node.status, node.journal) == ("1", NodeStatus.Stopped, None)
    assert node.failure.count("told to fail upgrade") == 2
    assert "rolling back to testchain/1 failed" in node.failure
    assert reports.statuses(new_id)[-2:] == ["Upgrading", "Stopped"]


async def test_an_upgrade_whose_new_version_does_not_start_is_rolled_back(
    manager, memory, reports, new_id, monkeypatch
):
    """The image was replaced, then the new version failed to start: the node
    goes back to the old one and runs it; exit code 7 says the upgrade
    failed, and a later upgrade is possible."""
    await running(manager, new_id)
    start = memory.start

    async def new_version_crashes(spec):
        if spec.version == "2":
            raise RuntimeFailure("qemu: linux kernel too old to load a ram disk")
        await start(spec)

    monkeypatch.setattr(memory, "start", new_version_crashes)
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(UpgradeFailed, match="did not start, and the node was rolled"):
        await manager.upgrade(new_id, upgrade)

    node = await manager.require(new_id)
    assert (node.version, node.status, node.journal) == ("1", NodeStatus.Running, None)
    assert "kernel too old" in node.failure
    assert (await memory.inspect(new_id)).url == "testchain/1"
    assert reports.statuses(new_id)[-3:] == ["Upgrading", "Upgraded", "Running"]
    monkeypatch.undo()
    await manager.upgrade(new_id, upgrade)
    assert (await manager.require(new_id)).version == "2"


async def test_upgrade_keeps_data_and_delete_removes_it(manager, memory, new_id):
    await running(manager, new_id)
    memory.write_file(new_id, "marker", "kept")
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    await manager.upgrade(new_id, upgrade)
    assert memory.read_file(new_id, "marker") == "kept"
    assert (await manager.require(new_id)).url == "testchain/2"
    await manager.delete(new_id)
    assert memory.read_file(new_id, "marker") is None


async def test_upgrade_to_another_protocol_is_refused(manager, catalogue_dir, new_id):
    (catalogue_dir / "other.toml").write_text(
        'protocol = "other"\n[versions."1".runtimes.memory]\nimage = "o:1"\n'
    )
    manager.catalogue = Catalogue.load([catalogue_dir])
    await running(manager, new_id)
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="other/1"))
    with pytest.raises(InvalidArgument, match="an upgrade keeps the protocol"):
        await manager.upgrade(new_id, upgrade)


async def test_delete_of_a_running_node_stops_it_first(manager, reports, new_id):
    await running(manager, new_id)
    await manager.delete(new_id)
    assert reports.statuses(new_id)[-4:] == [
        "Stopping",
        "Stopped",
        "Deleting",
        "Deleted",
    ]
    with pytest.raises(NodeNotFound, match="was deleted"):
        await manager.start(new_id)


async def test_unclean_stop_is_reported_in_the_response(manager, memory, new_id):
    await running(manager, new_id)
    memory.ignore_stop = True
    response = await manager.stop(new_id)
    assert "stopped uncleanly: killed by SIGKILL" in response
    assert "within 0.2s of SIGINT" in response
    node = await manager.require(new_id)
    assert node.failure.startswith("stopped uncleanly: killed by SIGKILL")
    await manager.start(new_id)  # the next command clears it
    assert (await manager.require(new_id)).failure is None


async def test_a_failed_start_settles_on_the_actual_state(
    manager, memory, reports, new_id
):
    await manager.create(new_id, create())
    memory.fail.add("start")
    with pytest.raises(RuntimeFailure, match="told to fail start"):
        await manager.start(new_id)
    node = await manager.require(new_id)
    assert node.status is NodeStatus.Stopped
    assert "told to fail start" in node.failure
    assert reports.statuses(new_id)[-2:] == ["Starting", "Stopped"]


def raise_a_bug(memory, monkeypatch, step):
    """Make the memory runtime's ``step`` raise what no runtime should."""

    async def buggy(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(memory, step, buggy)


@pytest.mark.parametrize("step", ["prepare", "create"])
async def test_a_runtime_bug_in_create_rolls_the_create_back(
    manager, memory, reports, new_id, monkeypatch, step
):
    raise_a_bug(memory, monkeypatch, step)
    with pytest.raises(
        RuntimeFailure, match=r"runtime 'memory' .* unexpected KeyError: 'oops'"
    ):
        await manager.create(new_id, create())
    assert reports.statuses(new_id)[-1] == "Deleted"
    with pytest.raises(NodeNotFound):
        await manager.require(new_id)


@pytest.mark.parametrize(
    ("step", "command", "settled"),
    [
        ("start", "start", NodeStatus.Stopped),
        ("stop", "stop", NodeStatus.Running),
        ("delete", "delete", NodeStatus.Stopped),
    ],
)
async def test_a_runtime_bug_in_a_step_settles_the_node(
    manager, memory, new_id, monkeypatch, step, command, settled
):
    """A runtime raising a KeyError instead of a RuntimeFailure: the node is
    not left Starting, Stopping or Deleting, and can still be deleted."""
    await manager.create(new_id, create())
    if command == "stop":
        await manager.start(new_id)
    raise_a_bug(memory, monkeypatch, step)
    with pytest.raises(RuntimeFailure, match="unexpected KeyError") as caught:
        await getattr(manager, command)(new_id)
    assert isinstance(caught.value.__cause__, KeyError)
    node = await manager.require(new_id)
    assert node.status is settled
    assert "unexpected KeyError: 'oops'" in node.failure
    monkeypatch.undo()
    await manager.delete(new_id)


async def test_a_runtime_bug_in_an_upgrade_rolls_it_back(
    manager, memory, reports, new_id, monkeypatch
):
    await running(manager, new_id)
    raise_a_bug(memory, monkeypatch, "upgrade")
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(UpgradeFailed, match="unexpected KeyError"):
        await manager.upgrade(new_id, upgrade)
    node = await manager.require(new_id)
    assert node.version == "1" and node.status.settled and node.journal is None


async def test_snapshot_goes_snapshotting_starting_running(
    manager, reports, new_id, tmp_path
):
    await manager.create(new_id, create())
    response = await manager.snapshot(new_id)
    assert str(tmp_path / "snapshots" / new_id) in response
    assert reports.statuses(new_id)[-3:] == ["Snapshotting", "Starting", "Running"]


async def test_snapshot_of_a_running_node_is_refused(manager, new_id):
    await running(manager, new_id)
    with pytest.raises(
        InvalidTransition, match="it is Running, and snapshot needs it Stopped"
    ):
        await manager.snapshot(new_id)


async def test_info_notices_a_node_stopped_outside_nodevisor(
    manager, memory, reports, new_id
):
    await running(manager, new_id)
    memory.set_state_out_of_band(new_id, NodeState.STOPPED)
    assert "is Stopped" in await manager.info(new_id)
    assert "found Stopped outside nodevisor" in reports[-1].failure


async def test_rename_checks_the_name(manager, new_id):
    await manager.create(new_id, create())
    other = str(uuid.uuid4())
    await manager.create(other, create(name="beta"))
    with pytest.raises(Conflict):
        await manager.rename(new_id, node_pb2.NodeInfoUpdate(name="beta"))
    with pytest.raises(InvalidArgument):
        await manager.rename(new_id, node_pb2.NodeInfoUpdate(name="a b"))
    with pytest.raises(InvalidArgument):  # not a second "beta"
        await manager.rename(new_id, node_pb2.NodeInfoUpdate(name="beta\n"))
    await manager.rename(new_id, node_pb2.NodeInfoUpdate(name="gamma"))
    assert (await manager.require(new_id)).name == "gamma"


async def test_a_node_whose_runtime_is_missing_gets_service_not_ready(manager, new_id):
    manager.runtimes.clear()
    with pytest.raises(ServiceNotReady, match="runtime 'memory' is not available"):
        await manager.create(new_id, create())


async def test_a_runtime_without_snapshot_says_not_supported(manager, memory, new_id):
    await manager.create(new_id, create())
    memory.capabilities = Capabilities(snapshot=False)  # shadows the class flags
    with pytest.raises(NotSupported, match="cannot snapshot"):
        await manager.snapshot(new_id)


async def test_restart_says_when_its_stop_was_unclean(manager, memory, new_id):
    await running(manager, new_id)
    memory.ignore_stop = True
    response = await manager.restart(new_id)
    assert response.endswith(
        "its stop was unclean: killed by SIGKILL (it did not "
        "exit within 0.2s of SIGINT)"
    )


async def test_a_node_removed_outside_is_recorded_then_made_again_by_start(
    manager, memory, reports, new_id
):
    await running(manager, new_id)
    memory.remove_out_of_band(new_id)
    assert "is Stopped" in await manager.info(new_id)
    assert "removed outside nodevisor" in reports[-1].failure
    await manager.start(new_id)
    assert (await memory.inspect(new_id)).state is NodeState.RUNNING
    assert memory.calls["create"] == 2


async def test_delete_of_a_node_removed_outside_goes_through_at_once(
    manager, memory, reports, new_id
):
    await running(manager, new_id)
    memory.remove_out_of_band(new_id)
    assert "deleted" in await manager.delete(new_id)
    assert reports.statuses(new_id)[-2:] == ["Deleting", "Deleted"]
    assert memory.calls["stop"] == 0


async def test_two_creates_racing_for_one_name_leave_one_node(
    tmp_path, catalogue_dir, memory, store
):
    """Both pass the name check before either is stored: the second record
    is refused as a conflict (the first one's record is not replaced), and
    nothing is reported for the node that was never made."""
    async with StoreRunner(store) as db:
        outbox = Outbox(db)
        manager = NodeManager(
            db=db,
            catalogue=Catalogue.load([catalogue_dir]),
            runtimes={"memory": memory},
            unavailable={},
            default_runtime="memory",
            host_id="host-1",
            snapshot_dir=tmp_path / "snapshots",
            report=lambda node: outbox.put(node_update(node)),
        )
        outcomes = {}

        async def make(node_id):
            try:
                outcomes[node_id] = await manager.create(node_id, create("same"))
            except Conflict as exc:
                outcomes[node_id] = exc

        ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        async with anyio.create_task_group() as tasks:
            for node_id in ids:
                tasks.start_soon(make, node_id)
    refused = [i for i in ids if isinstance(outcomes[i], Conflict)]
    made = [i for i in ids if i not in refused]
    assert len(refused) == 1 and len(made) == 1, outcomes
    assert f"taken by node {made[0]}" in str(outcomes[refused[0]])
    assert [n.id for n in store.nodes()] == made
    assert await memory.inspect(refused[0]) is None
    reported = {
        command_flow_pb2.InfoUpdate.FromString(payload).node.id.value
        for _, payload in store.outbox()
    }
    assert reported == set(made)


async def test_a_new_version_that_does_not_start_nor_the_old_one_says_so(
    manager, memory, new_id
):
    """Neither version starts after the image was replaced: the result says
    the way back failed too, and the node is recorded stopped on the old
    version, for the reconciler to start."""
    await running(manager, new_id)
    memory.fail.add("start")
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url="testchain/2"))
    with pytest.raises(UpgradeFailed) as raised:
        await manager.upgrade(new_id, upgrade)
    message = str(raised.value)
    assert "did not start, and putting the node back on testchain/1 failed too" in (
        message
    )
    assert "the node is Stopped" in message
    node = await manager.require(new_id)
    assert (node.version, node.status, node.expected) == (
        "1",
        NodeStatus.Stopped,
        NodeStatus.Running,
    )


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (lambda dest: dest / "does-not-exist.tar", "but there is no such file"),
        (lambda dest: dest, "but there is no such file"),
        (lambda dest: dest.parent.parent / "elsewhere.tar", "outside its destination"),
        (lambda dest: None, "not the path of the file it wrote"),
    ],
    ids=["missing", "a-folder", "outside", "none"],
)
async def test_a_snapshot_the_runtime_did_not_write_is_a_failure(
    manager, memory, reports, new_id, monkeypatch, returned, said
):
    """The runtime's word is checked: a snapshot is reported written only if
    its file is there, under the node's destination. Otherwise the command
    fails naming what it got, and the node is settled as the runtime shows
    it (stopped, as it was)."""
    await manager.create(new_id, create())

    async def claims(spec, destination):
        path = returned(destination)
        if path is not None and path.name == "elsewhere.tar":
            path.write_text("not where it belongs")
        return path

    monkeypatch.setattr(memory, "snapshot", claims)
    with pytest.raises(RuntimeFailure, match=said) as raised:
        await manager.snapshot(new_id)
    assert new_id in str(raised.value)
    node = await manager.require(new_id)
    assert node.status is NodeStatus.Stopped and said in node.failure
    assert reports.statuses(new_id)[-2:] == ["Snapshotting", "Stopped"]


@pytest.mark.parametrize("command", ["start", "restart"])
async def test_a_failed_command_leaves_the_node_expected_as_before(
    manager, memory, new_id, command
):
    """A start refused by the runtime is a failed command: the reconciler
    must not start the node later behind the control plane's back."""
    await manager.create(new_id, create())
    memory.fail.add("start")
    with pytest.raises(RuntimeFailure):
        await getattr(manager, command)(new_id)
    node = await manager.require(new_id)
    assert (node.status, node.expected) == (NodeStatus.Stopped, NodeStatus.Stopped)
    memory.fail.clear()
    assert not manager.out_of_step(node, await memory.inspect(new_id))


async def test_a_failed_stop_leaves_the_node_expected_running(manager, memory, new_id):
    await running(manager, new_id)
    memory.fail.add("stop")
    with pytest.raises(RuntimeFailure):
        await manager.stop(new_id)
    node = await manager.require(new_id)
    assert (node.status, node.expected) == (NodeStatus.Running, NodeStatus.Running)


async def test_a_failed_delete_is_not_carried_out_later(manager, memory, new_id):
    await manager.create(new_id, create())
    memory.fail.add("delete")
    with pytest.raises(RuntimeFailure):
        await manager.delete(new_id)
    node = await manager.require(new_id)
    assert node.expected is NodeStatus.Stopped
    memory.fail.clear()
    assert not manager.out_of_step(node, await memory.inspect(new_id))


async def test_a_failed_snapshot_leaves_the_node_stopped_as_expected(
    manager, memory, new_id
):
    await manager.create(new_id, create())
    memory.fail.add("snapshot")
    with pytest.raises(RuntimeFailure):
        await manager.snapshot(new_id)
    node = await manager.require(new_id)
    assert (node.status, node.expected) == (NodeStatus.Stopped, NodeStatus.Stopped)


async def test_a_step_blocked_in_a_thread_fails_its_command_at_step_timeout(
    manager, memory, reports, new_id, monkeypatch, caplog
):
    await manager.create(new_id, create())
    release = threading.Event()

    async def start(spec):  # stuck in a worker thread, deaf to cancellation
        await anyio.to_thread.run_sync(release.wait)

    monkeypatch.setattr(memory, "start", start)
    manager.step_timeout = 0.3
    try:
        with anyio.fail_after(5), pytest.raises(RuntimeFailure) as failed:
            await manager.start(new_id)
        assert "finished late" not in caplog.text
    finally:
        release.set()
    with anyio.fail_after(5):  # left to itself, its end is logged
        while "given up on at step_timeout, finished late" not in caplog.text:  # noqa: ASYNC110 (a log, polled)
            await anyio.sleep(0.02)

    assert "did not finish start() for node" in str(failed.value)
    assert "within 0.3s (step_timeout)" in str(failed.value)
    node = await manager.require(new_id)
    assert node.status is NodeStatus.Stopped  # as the runtime shows it
    assert "step_timeout" in (node.failure or "")
    assert reports.statuses(new_id)[-2:] == ["Starting", "Stopped"]
