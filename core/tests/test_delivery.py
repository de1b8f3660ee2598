"""Delivery across a control plane restart: nothing lost, everything confirmed."""

import socket
import sqlite3
import uuid

import anyio
import pytest

from blockjoy.api.v1 import node_pb2
from nodevisor._agent import Agent
from nodevisor._config import AgentConfig
from nodevisor._provision import provision
from nodevisor.controlplane import _agent_api
from nodevisor.controlplane.testing import running_control_plane

from .test_agent import create, node_command, updates

pytestmark = pytest.mark.anyio


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def eventually(check, seconds=20.0):
    with anyio.fail_after(seconds):
        for _ in range(100_000):
            if await check():
                return
            await anyio.sleep(0.05)


async def test_a_result_made_while_the_control_plane_was_down_arrives(
    tmp_path, catalogue_dir
):
    address, cp_dir = free_address(), tmp_path / "cp"
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        runtime="memory",
        catalogue=[catalogue_dir],
        runtimes={"memory": {"delay": {"create": 1.5}}},
    )
    node_id = str(uuid.uuid4())
    async with running_control_plane(cp_dir, listen=address) as cp:
        otp = await cp.admin.create_otp()
        host = (await provision(config, otp, address)).host_id
    agent = Agent(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(agent.run)
        async with running_control_plane(cp_dir, listen=address) as cp:
            await cp.admin.queue_command(host, create(node_id))
            await eventually(lambda: _acked(cp, host))
        # the control plane is down while the create finishes
        await anyio.sleep(2)
        assert len(agent.outbox) >= 2  # Stopped and the result, unconfirmed
        async with running_control_plane(cp_dir, listen=address) as cp:
            await eventually(lambda: _finished(cp, host))
            [command] = await cp.admin.list_commands(host)
            assert command.exit_code == 0 and "created" in command.response
            [node] = await cp.admin.list_nodes(host)
            assert node.info.container_status == node_pb2.NodeInfo.Stopped
            start = node_command(node_id, start=node_pb2.NodeStart())
            assert (await updates(cp, host, start))[-1] == ("result", 0)
            await eventually(lambda: _confirmed(agent))
        tasks.cancel_scope.cancel()


async def _acked(cp, host):
    return any(c.state >= 3 for c in await cp.admin.list_commands(host))


async def _finished(cp, host):
    return all(c.HasField("exit_code") for c in await cp.admin.list_commands(host))


async def _confirmed(agent):
    return len(agent.outbox) == 0


async def test_updates_a_control_plane_failed_to_store_are_sent_again(
    tmp_path, catalogue_dir, monkeypatch
):
    """An agent fresh from a restart, whose control plane takes the stream
    but cannot store updates for longer than ``heartbeat_timeout``, keeps
    them: the control plane said it confirms, so sent is not delivered."""
    address, cp_dir = free_address(), tmp_path / "cp"
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        runtime="memory",
        catalogue=[catalogue_dir],
        heartbeat_interval=60,
        heartbeat_timeout=1,
    )
    storing = False
    record_updates = _agent_api.record_updates

    def failing_disk(*args):
        if not storing:
            raise sqlite3.OperationalError("disk I/O error")
        return record_updates(*args)

    monkeypatch.setattr(_agent_api, "record_updates", failing_disk)
    node_id = str(uuid.uuid4())
    async with running_control_plane(cp_dir, listen=address) as cp:
        otp = await cp.admin.create_otp()
        host = (await provision(config, otp, address)).host_id
        await cp.admin.queue_command(host, create(node_id))
        agent = Agent(config)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent.run)
            await eventually(lambda: _holds(agent, 2))  # the ack and the result
            await anyio.sleep(3 * config.heartbeat_timeout)
            assert len(agent.outbox) >= 2
            storing = True
            await eventually(lambda: _finished(cp, host))
            [command] = await cp.admin.list_commands(host)
            assert command.exit_code == 0
            await eventually(lambda: _confirmed(agent))
            tasks.cancel_scope.cancel()


async def _holds(agent, count):
    return agent.outbox is not None and len(agent.outbox) >= count


async def test_a_command_that_came_during_start_up_runs_after_the_recovery(
    tmp_path, catalogue_dir
):
    """The agent stops in the middle of a start, and a stop is queued while
    it is down. At start-up the reconciler first finishes the interrupted
    start; only then does the stop run, and it succeeds instead of finding
    the node half-way ("it is Starting")."""
    address, cp_dir = free_address(), tmp_path / "cp"

    def config(start_delay: float) -> AgentConfig:
        return AgentConfig(
            data_dir=tmp_path / "agent",
            runtime="memory",
            catalogue=[catalogue_dir],
            # The listing is slow: the stop arrives before the first pass.
            runtimes={"memory": {"delay": {"start": start_delay, "list_nodes": 1}}},
            shutdown_grace=0.2,
        )

    node_id = str(uuid.uuid4())
    async with running_control_plane(cp_dir, listen=address) as cp:
        otp = await cp.admin.create_otp()
        host = (await provision(config(30), otp, address)).host_id
        stopping = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(Agent(config(30)).run, stopping)
            assert (await updates(cp, host, create(node_id)))[-1] == ("result", 0)
            await cp.admin.queue_command(
                host, node_command(node_id, start=node_pb2.NodeStart())
            )
            await eventually(lambda: _acked(cp, host))
            stopping.set()  # the start is cut short: the node is left Starting
        stop = await cp.admin.queue_command(
            host, node_command(node_id, stop=node_pb2.NodeStop())
        )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(Agent(config(0.5)).run)
            await eventually(lambda: _finished(cp, host))
            tasks.cancel_scope.cancel()
        answers = {c.id: c for c in await cp.admin.list_commands(host)}
        assert answers[stop.id].exit_code == 0, answers[stop.id].response
        [node] = await cp.admin.list_nodes(host)
        assert node.info.container_status == node_pb2.NodeInfo.Stopped
