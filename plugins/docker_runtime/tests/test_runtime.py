"""DockerRuntime against the real engine and the real litecoind images."""

from __future__ import annotations

import tarfile
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import anyio.to_thread
import docker
import docker.errors
import pytest

from nodevisor import (
    ConfigError,
    ImageUnavailable,
    NodeState,
    RuntimeContext,
    RuntimeFailure,
)
from nodevisor_docker import DockerRuntime, nodevisor_runtimes

pytestmark = pytest.mark.anyio

SLEEPER = ("busybox", "sleep", "600")
# A process that ignores the stop signal; only SIGKILL ends it.
IGNORES_TERM = ("sh", "-c", "trap '' TERM; busybox sleep 600 & wait")


async def test_lifecycle_reports_each_state(runtime, make_spec, shell) -> None:
    spec = make_spec()

    await runtime.prepare(spec)
    await runtime.create(spec)
    created = await runtime.inspect(spec.id)
    await runtime.start(spec)
    running = await runtime.inspect(spec.id)
    blocks = await shell.block_count(spec.id)
    outcome = await runtime.stop(spec)
    stopped = await runtime.inspect(spec.id)
    await runtime.start(spec)
    restarted = await runtime.inspect(spec.id)
    await runtime.delete(spec.id)

    assert (created.state, created.detail) == (
        NodeState.STOPPED,
        "created, never started",
    )
    assert (created.name, created.url) == (spec.name, "litecoin-regtest/0.21.2-1")
    assert created.image == spec.image
    assert running.state is NodeState.RUNNING
    assert blocks == 0
    assert (outcome.clean, outcome.detail) == (True, "exited with code 0")
    assert (stopped.state, stopped.detail) == (NodeState.STOPPED, "exited with code 0")
    assert restarted.state is NodeState.RUNNING
    assert await runtime.inspect(spec.id) is None


async def test_litecoind_runs_in_regtest(runtime, make_spec, shell) -> None:
    spec = make_spec()
    await runtime.create(spec)
    await runtime.start(spec)

    await shell.block_count(spec.id)
    code, cmdline = await shell.run(
        spec.id, "sh", "-c", "busybox cat /proc/$(busybox pidof litecoind)/cmdline"
    )

    assert code == 0
    assert cmdline.split("\0")[:3] == [
        "litecoind",
        "-conf=/etc/litecoin/litecoin.conf",
        "-regtest",
    ]


async def test_every_verb_is_idempotent(
    runtime, make_spec, shell, docker_client
) -> None:
    spec = make_spec()

    await runtime.create(spec)
    await runtime.create(spec)
    await runtime.start(spec)
    await runtime.start(spec)
    # A signal that reaches litecoind before its handler is set is lost.
    await shell.block_count(spec.id)
    first = await runtime.stop(spec)
    second = await runtime.stop(spec)
    await runtime.delete(spec.id)
    await runtime.delete(spec.id)
    await runtime.delete(str(uuid.uuid4()))

    assert first.clean
    assert (second.clean, second.detail) == (True, "already stopped")
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(f"nodevisor-data-{spec.id}")


async def test_create_twice_keeps_the_first_container(
    runtime, make_spec, docker_client
) -> None:
    spec = make_spec()
    await runtime.create(spec)
    first = docker_client.containers.get(f"nodevisor-{spec.id}").id

    await runtime.create(spec)

    assert docker_client.containers.get(f"nodevisor-{spec.id}").id == first


async def test_start_of_a_node_never_created_names_it(runtime, make_spec) -> None:
    spec = make_spec()

    with pytest.raises(RuntimeFailure, match=f"node {spec.id} has no container"):
        await runtime.start(spec)


async def test_upgrade_keeps_the_chain_data(runtime, make_spec, shell) -> None:
    old = make_spec("0.21.2-1")
    new = make_spec("0.21.2-2", id=old.id, name=old.name)
    await runtime.create(old)
    await runtime.start(old)
    await shell.block_count(old.id)
    await shell.run(old.id, "sh", "-c", "echo kept > /data/marker")
    await runtime.stop(old)

    await runtime.prepare(new)
    await runtime.upgrade(old, new)
    upgraded = await runtime.inspect(new.id)
    await runtime.start(new)

    assert (upgraded.image, upgraded.url) == (new.image, "litecoin-regtest/0.21.2-2")
    assert await shell.run(new.id, "busybox", "cat", "/data/marker") == (0, "kept\n")
    _, revision = await shell.run(new.id, "busybox", "cat", "/etc/nodevisor-image")
    assert "0.21.2-2" in revision
    assert await shell.block_count(new.id) == 0


async def test_delete_removes_the_chain_data(runtime, make_spec, shell) -> None:
    spec = make_spec(command=SLEEPER)
    await runtime.create(spec)
    await runtime.start(spec)
    await shell.run(spec.id, "sh", "-c", "echo gone > /data/marker")

    await runtime.delete(spec.id)
    await runtime.create(spec)
    await runtime.start(spec)

    code, _ = await shell.run(spec.id, "sh", "-c", "test -e /data/marker")
    assert code == 1


async def test_upgrade_of_a_running_node_is_refused(runtime, make_spec) -> None:
    old = make_spec(command=SLEEPER)
    new = make_spec("0.21.2-2", id=old.id, command=SLEEPER)
    await runtime.create(old)
    await runtime.start(old)

    with pytest.raises(RuntimeFailure, match="is running; stop the node first"):
        await runtime.upgrade(old, new)

    assert (await runtime.inspect(old.id)).image == old.image


async def test_upgrade_to_a_missing_image_keeps_the_old_container(
    runtime, make_spec
) -> None:
    old = make_spec()
    new = make_spec(id=old.id, image="nodevisor/litecoin-regtest:no-such-revision")
    await runtime.create(old)

    with pytest.raises(RuntimeFailure, match=f"for node {old.id}"):
        await runtime.upgrade(old, new)

    assert (await runtime.inspect(old.id)).image == old.image
    assert len(await runtime.list_nodes()) == 1


async def test_a_stop_right_after_start_is_clean(runtime, make_spec) -> None:
    # The init in the container forwards the signal even before litecoind
    # handles it; without one the signal is lost and the node is killed once
    # the grace period has passed.
    spec = make_spec(grace_period=5)
    await runtime.create(spec)
    await runtime.start(spec)

    outcome = await runtime.stop(spec)

    assert outcome.clean, outcome.detail


async def test_stop_kills_a_node_that_ignores_the_signal(runtime, make_spec) -> None:
    spec = make_spec(command=IGNORES_TERM, grace_period=1)
    await runtime.create(spec)
    await runtime.start(spec)

    outcome = await runtime.stop(spec)
    node = await runtime.inspect(spec.id)

    assert not outcome.clean
    assert "killed by SIGKILL" in outcome.detail
    assert (node.state, node.detail) == (NodeState.STOPPED, "killed by SIGKILL")


async def test_another_hosts_node_is_neither_listed_nor_touched(
    runtime, open_runtime, new_host, make_spec, docker_client
) -> None:
    other_host = new_host()
    other = open_runtime(other_host)
    theirs = make_spec(host_id=other_host, command=SLEEPER)
    ours = make_spec(command=SLEEPER)
    await other.create(theirs)
    await runtime.create(ours)

    listed = await runtime.list_nodes()
    seen = await runtime.inspect(theirs.id)
    await runtime.delete(theirs.id)

    assert [node.id for node in listed] == [ours.id]
    assert seen is None
    assert (await other.inspect(theirs.id)).state is NodeState.STOPPED
    assert docker_client.volumes.get(f"nodevisor-data-{theirs.id}")
    clash = make_spec(id=theirs.id)
    with pytest.raises(RuntimeFailure, match=f"does not belong to node {theirs.id}"):
        await runtime.create(clash)


async def test_a_spec_for_another_host_is_refused(runtime, make_spec) -> None:
    spec = make_spec(host_id="somebody-else")

    with pytest.raises(RuntimeFailure, match="names host 'somebody-else'"):
        await runtime.create(spec)


async def test_prepare_of_a_missing_image_says_how_to_build_it(
    runtime, make_spec
) -> None:
    # Nothing listens on port 1, so the pull fails at once.
    spec = make_spec(image="localhost:1/nodevisor-missing:1")

    with pytest.raises(ImageUnavailable) as caught:
        await runtime.prepare(spec)

    message = str(caught.value)
    assert "'localhost:1/nodevisor-missing:1'" in message
    assert f"node {spec.id}" in message
    assert "build-litecoin.sh" in message
    assert isinstance(caught.value.__cause__, docker.errors.APIError)


async def test_prepare_without_pulling(
    open_runtime, host_id, make_spec, litecoin_images
) -> None:
    runtime = open_runtime(host_id, pull=False)
    missing = make_spec(image="nodevisor/litecoin-regtest:absent")

    await runtime.prepare(make_spec())
    with pytest.raises(ImageUnavailable, match="pulling is turned off"):
        await runtime.prepare(missing)


async def test_a_container_removed_out_of_band_is_absent(
    runtime, make_spec, docker_client
) -> None:
    spec = make_spec()
    await runtime.create(spec)
    docker_client.containers.get(f"nodevisor-{spec.id}").remove(force=True)

    assert await runtime.inspect(spec.id) is None
    await runtime.delete(spec.id)

    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(f"nodevisor-data-{spec.id}")


# Where the engine keeps the bundle of each container's task: under the
# containerd that dockerd runs itself, or under a system-wide containerd.
TASK_ROOTS = (
    Path("/var/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby"),
    Path("/run/containerd/io.containerd.runtime.v2.task/moby"),
)


async def test_a_container_the_engine_cannot_start_again_is_replaced(
    runtime, make_spec, shell, docker_client
) -> None:
    """A dockerd stopped before it cleaned up leaves a container's task
    bundle behind, and the engine then refuses to start that container. The
    leftover bundle is made here by hand; start replaces the container and
    the node's data is still there."""
    roots = [root for root in TASK_ROOTS if root.is_dir()]
    if not roots:
        pytest.skip(f"the engine keeps its task bundles in none of {TASK_ROOTS}")
    spec = make_spec()
    await runtime.create(spec)
    await runtime.start(spec)
    await shell.run(spec.id, "sh", "-c", "echo kept > /data/marker")
    await runtime.stop(spec)
    old = docker_client.containers.get(f"nodevisor-{spec.id}")
    left_behind = roots[0] / old.id
    left_behind.mkdir()
    try:
        with pytest.raises(docker.errors.APIError, match="exists"):
            await anyio.to_thread.run_sync(old.start)

        await runtime.start(spec)
    finally:
        left_behind.rmdir()

    new = docker_client.containers.get(f"nodevisor-{spec.id}")
    assert new.id != old.id
    assert (await runtime.inspect(spec.id)).state is NodeState.RUNNING
    assert await shell.run(spec.id, "busybox", "cat", "/data/marker") == (0, "kept\n")
    assert new.labels == old.labels
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(old.id)


async def test_a_fresh_runtime_finds_the_nodes_of_the_last(
    runtime, open_runtime, host_id, make_spec
) -> None:
    specs = [make_spec(), make_spec("0.21.2-2")]
    for spec in specs:
        await runtime.create(spec)
    await runtime.aclose()

    fresh = open_runtime(host_id)
    found = {node.id: node for node in await fresh.list_nodes()}

    assert set(found) == {spec.id for spec in specs}
    for spec in specs:
        assert (found[spec.id].name, found[spec.id].url) == (spec.name, spec.url)
        assert found[spec.id].state is NodeState.STOPPED


async def test_snapshot_archives_the_data_path(
    runtime, make_spec, shell, tmp_path
) -> None:
    spec = make_spec()
    await runtime.create(spec)
    await runtime.start(spec)
    await shell.block_count(spec.id)
    await runtime.stop(spec)

    path = await runtime.snapshot(spec, tmp_path / "snapshots")

    assert path.parent == tmp_path / "snapshots"
    assert path.stat().st_size > 0
    names = await anyio.to_thread.run_sync(_tar_names, path)
    assert "data/regtest/blocks" in names


async def test_snapshot_of_a_running_node_is_refused(
    runtime, make_spec, tmp_path
) -> None:
    spec = make_spec(command=SLEEPER)
    await runtime.create(spec)
    await runtime.start(spec)

    with pytest.raises(RuntimeFailure, match="stop the node first"):
        await runtime.snapshot(spec, tmp_path)


async def test_delete_of_a_running_node(runtime, make_spec) -> None:
    spec = make_spec(command=SLEEPER)
    await runtime.create(spec)
    await runtime.start(spec)

    await runtime.delete(spec.id)

    assert await runtime.inspect(spec.id) is None


async def test_check_names_an_engine_that_is_not_there(open_runtime, host_id) -> None:
    await open_runtime(host_id).check()
    runtime = open_runtime(host_id, base_url="unix:///nonexistent/docker.sock")

    with pytest.raises(
        RuntimeFailure, match=r"unix:///nonexistent/docker\.sock: is dockerd"
    ):
        await runtime.check()


def test_bad_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_threads = 0"):
        DockerRuntime(RuntimeContext("h", tmp_path, {"max_threads": 0}))
    with pytest.raises(ConfigError, match="unknown keys"):
        DockerRuntime(RuntimeContext("h", tmp_path, {"socket": "x"}))


def test_the_plugin_is_found_through_its_entry_point() -> None:
    (entry,) = entry_points(group="nodevisor", name="docker")

    assert entry.load().nodevisor_runtimes() == [DockerRuntime]
    assert nodevisor_runtimes() == [DockerRuntime]
    assert DockerRuntime.capabilities.snapshot


def _tar_names(path: Path) -> set[str]:
    with tarfile.open(path) as archive:
        return set(archive.getnames())


async def test_the_container_carries_labels_signal_and_timeout(
    runtime, make_spec, docker_client
) -> None:
    spec = make_spec()
    await runtime.create(spec)

    attrs = docker_client.containers.get(f"nodevisor-{spec.id}").attrs

    assert attrs["Config"]["Labels"]["io.nodevisor.node-id"] == spec.id
    assert attrs["Config"]["Labels"]["io.nodevisor.url"] == spec.url
    assert (attrs["Config"]["StopSignal"], attrs["Config"]["StopTimeout"]) == (
        "SIGTERM",
        120,
    )
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert attrs["Mounts"][0]["Name"] == f"nodevisor-data-{spec.id}"
