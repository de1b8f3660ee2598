"""Fault injection on the Docker engine: a node's container killed from
outside, and the Docker daemon itself restarted under running nodes. The
agent is a real process, with a reconciler pass every second or, to show
that the Docker runtime's container events alone bring the news, every
600 s; what it reports is read from the control plane's store of every
update."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import anyio
import pytest

from blockjoy.api.v1 import common_pb2, node_pb2

from .conftest import _docker_agent
from .test_faults import action, eventually, node_command, node_reports, run

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

Status = node_pb2.NodeInfo.ContainerStatus
URL = "litecoin-regtest/0.21.2-1"
DOCKER_PID = Path("/var/run/docker.pid")
# The way scripts/setup starts the daemon, in a session of its own: it must
# outlive the test run that restarted it.
START_DOCKERD = "setsid nohup dockerd >/var/log/nodevisor-dockerd.log 2>&1 </dev/null &"


def create(node_id: str, name: str):
    image = common_pb2.ContainerImage(url=URL)
    return node_command(node_id, create=node_pb2.NodeCreate(name=name, image=image))


async def running_node(cp, host_id: str) -> str:
    node_id = str(uuid.uuid4())
    name = f"ltc-{node_id[:8]}"
    assert (await run(cp, host_id, create(node_id, name), 120))[0] == 0
    assert (await run(cp, host_id, action(node_id, "start"), 120))[0] == 0
    return node_id


def seen_stopped_then_running(cp, node_id: str, after: int) -> bool:
    """Whether, after the first ``after`` reports, the control plane heard the
    node was found stopped (with a reason) and then running again."""
    reports = node_reports(cp.data_dir, node_id)[after:]
    for number, info in enumerate(reports):
        if info.container_status == Status.Stopped and info.failure_reason:
            later = reports[number + 1 :]
            return any(r.container_status == Status.Running for r in later)
    return False


def docker_answers() -> bool:
    done = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return done.returncode == 0


def start_dockerd() -> None:
    subprocess.run(["bash", "-c", START_DOCKERD], check=True)


async def wait_docker(seconds: float = 60.0) -> None:
    with anyio.fail_after(seconds):
        while True:
            if await anyio.to_thread.run_sync(docker_answers):
                return
            await anyio.sleep(0.5)


@pytest.fixture
async def event_driven_docker_host(
    tmp_path, control_plane, docker_client, litecoin_images
):
    """As ``docker_host``, with the reconciler's periodic pass as good as off:
    after the first, the agent hears of a change only through events."""
    extra = "reconcile_interval = 600\n"
    async with _docker_agent(tmp_path, control_plane, docker_client, extra) as host:
        yield host


@pytest.fixture
async def dockerd_restored():
    """Whatever a test does to dockerd, it answers again afterwards."""
    yield
    if not await anyio.to_thread.run_sync(docker_answers):
        start_dockerd()
        await wait_docker()


async def test_a_container_killed_from_outside_is_reported_and_restarted(
    control_plane, reconciling_docker_host, docker_client
):
    """``docker kill`` on a node's container: the reconciler records the
    node stopped with a reason, reports it, and starts it again."""
    await killed_and_back(control_plane, reconciling_docker_host, docker_client, 60)


async def test_a_killed_container_is_noticed_through_the_engine_events(
    control_plane, event_driven_docker_host, docker_client
):
    """``docker kill`` with no periodic pass to come for 600 s: the node is
    reported stopped and running again within 15 s, so the runtime's event
    feed told the agent."""
    await killed_and_back(control_plane, event_driven_docker_host, docker_client, 15)


async def test_a_removed_container_is_made_again_through_the_engine_events(
    control_plane, event_driven_docker_host, docker_client
):
    """``docker rm -f`` with no periodic pass to come: the kill and the
    removal arrive while the node is being checked; the node is made again
    and runs within 20 s, in a new container on the same volume."""
    cp = control_plane
    host_id, agent = event_driven_docker_host
    await cp.wait_online(host_id, seconds=30)
    node_id = await running_node(cp, host_id)
    old = docker_client.containers.get(f"nodevisor-{node_id}")
    before = len(node_reports(cp.data_dir, node_id))

    await anyio.to_thread.run_sync(lambda: old.remove(force=True))
    await eventually(lambda: seen_stopped_then_running(cp, node_id, before), 20, 0.2)

    new = docker_client.containers.get(f"nodevisor-{node_id}")
    assert new.id != old.id and new.status == "running"
    assert agent.process.poll() is None


async def killed_and_back(cp, host, docker_client, within: float) -> None:
    """Kill a running node's container; within ``within`` seconds the node is
    reported stopped with a reason, then running in a new process."""
    host_id, agent = host
    await cp.wait_online(host_id, seconds=30)
    node_id = await running_node(cp, host_id)
    container = docker_client.containers.get(f"nodevisor-{node_id}")
    started = container.attrs["State"]["StartedAt"]
    before = len(node_reports(cp.data_dir, node_id))

    await anyio.to_thread.run_sync(container.kill)
    await eventually(
        lambda: seen_stopped_then_running(cp, node_id, before), within, 0.2
    )

    container.reload()
    assert container.status == "running"
    assert container.attrs["State"]["StartedAt"] != started
    assert agent.process.poll() is None


async def test_dockerd_restarted_with_nodes_running(
    control_plane, reconciling_docker_host, docker_client, dockerd_restored
):
    """SIGTERM to dockerd (its containers stop; their restart policy is "no"),
    then dockerd started again as scripts/setup does. The agent stays up,
    reports both nodes stopped with a reason, and has them running again
    within 90 s of the engine answering."""
    cp = control_plane
    host_id, agent = reconciling_docker_host
    await cp.wait_online(host_id, seconds=30)
    nodes = [await running_node(cp, host_id) for _ in range(2)]
    before = {node: len(node_reports(cp.data_dir, node)) for node in nodes}

    pid = int(await anyio.Path(DOCKER_PID).read_text())
    os.kill(pid, signal.SIGTERM)
    await eventually(lambda: not Path(f"/proc/{pid}").exists(), 60, 0.2)
    assert agent.process.poll() is None, "the agent died with the engine"
    start_dockerd()
    await wait_docker()
    back = time.monotonic()

    for node in nodes:
        try:
            await eventually(
                lambda node=node: seen_stopped_then_running(cp, node, before[node]),
                max(1.0, 90 - (time.monotonic() - back)),
                0.5,
            )
        except TimeoutError as exc:
            exc.add_note(what_the_agent_did(cp, agent, node, before[node]))
            raise
        container = docker_client.containers.get(f"nodevisor-{node}")
        assert container.status == "running"
    assert agent.process.poll() is None


def what_the_agent_did(cp, agent, node_id: str, after: int) -> str:
    """The node's reports since ``after`` and the end of the agent's log, for
    a failure that happened on a machine no one can look at any more."""
    reports = [
        f"  {Status.Name(info.container_status)}: {info.failure_reason}"
        for info in node_reports(cp.data_dir, node_id)[after:]
    ]
    log = agent.output().splitlines()[-60:]
    return "\n".join(
        [f"reports of node {node_id}:", *reports, "the agent's last log lines:", *log]
    )
