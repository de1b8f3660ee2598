"""The agent against a real control plane over gRPC, on the memory runtime."""

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import anyio
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, host_pb2, node_pb2
from nodevisor import AgentLocked, CatalogueError, ConfigError, CredentialsError
from nodevisor._agent import Agent
from nodevisor._config import AgentConfig
from nodevisor._credentials import Credentials
from nodevisor._hookspecs import hookimpl
from nodevisor._messages import host_update
from nodevisor._outbox import Outbox
from nodevisor._plugins import PluginManager
from nodevisor._provision import provision
from nodevisor._store import STORE_FILE, Store
from nodevisor.controlplane.testing import running_control_plane
from nodevisor.testing import MemoryRuntime

pytestmark = pytest.mark.anyio

Status = node_pb2.NodeInfo.ContainerStatus


def node_command(node_id, **variant):
    return command_flow_pb2.Command(
        node=node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)
    )


def create(node_id, name="alpha", url="testchain/1"):
    image = common_pb2.ContainerImage(url=url)
    return node_command(node_id, create=node_pb2.NodeCreate(name=name, image=image))


async def updates(cp, host_id, command, seconds=10):
    """What the agent reported about ``command``, as short tuples."""
    seen = []
    async for response in cp.admin.send_command(host_id, command, seconds):
        kind = response.WhichOneof("update")
        if kind == "command_info":
            info = response.command_info
            if info.HasField("exit_code"):
                seen.append(("result", info.exit_code))
            else:
                seen.append(("ack",))
        elif kind == "node_info":
            seen.append(("node", Status.Name(response.node_info.container_status)))
    return seen


@pytest.fixture
async def control_plane(tmp_path):
    async with running_control_plane(tmp_path / "cp") as cp:
        yield cp


@pytest.fixture
def config(tmp_path, catalogue_dir):
    return AgentConfig(
        data_dir=tmp_path / "agent", runtime="memory", catalogue=[catalogue_dir]
    )


@contextlib.asynccontextmanager
async def running_agent(config):
    agent = Agent(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(agent.run)
        with anyio.fail_after(10):
            await agent.started.wait()
            await agent.stream.connected.wait()
        yield agent
        tasks.cancel_scope.cancel()


async def test_provision_saves_private_credentials(control_plane, config):
    otp = await control_plane.admin.create_otp()
    credentials = await provision(config, otp, control_plane.address)
    path = config.data_dir / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Credentials.load(config.data_dir) == credentials
    [host] = await control_plane.admin.list_hosts()
    assert host.id == credentials.host_id
    assert host.info.cpu_count == os.cpu_count()
    assert host.info.mem_size > 0 and host.info.disk_size > 0
    assert host.info.ip == "127.0.0.1"


async def test_a_reused_otp_is_refused_and_nothing_is_saved(control_plane, config):
    otp = await control_plane.admin.create_otp()
    await provision(config, otp, control_plane.address)
    other = config.model_copy(update={"data_dir": config.data_dir.parent / "other"})
    with pytest.raises(CredentialsError, match="already used"):
        await provision(other, otp, control_plane.address)
    assert not (other.data_dir / "credentials.json").exists()


async def test_commands_flow_through_the_stream(control_plane, config):
    otp = await control_plane.admin.create_otp()
    credentials = await provision(config, otp, control_plane.address)
    node_id = str(uuid.uuid4())
    async with running_agent(config):
        seen = await updates(control_plane, credentials.host_id, create(node_id))
        assert seen == [
            ("ack",),
            ("node", "Installing"),
            ("node", "Creating"),
            ("node", "Stopped"),
            ("result", 0),
        ]
        start = node_command(node_id, start=node_pb2.NodeStart())
        assert await updates(control_plane, credentials.host_id, start) == [
            ("ack",),
            ("node", "Starting"),
            ("node", "Running"),
            ("result", 0),
        ]


async def test_a_reconnected_agent_reports_every_node(control_plane, config):
    otp = await control_plane.admin.create_otp()
    credentials = await provision(config, otp, control_plane.address)
    node_ids = [str(uuid.uuid4()) for _ in range(3)]
    async with running_agent(config):
        for index, node_id in enumerate(node_ids):
            await updates(
                control_plane, credentials.host_id, create(node_id, f"n{index}")
            )
    # Change the records while the agent is away: only the greeting on the
    # next connect can tell the control plane.
    store = Store(config.data_dir / "state.db")
    for node in store.nodes():
        store.save_node(node.replace(name=f"renamed-{node.name}"))
    store.close()
    async with running_agent(config):
        with anyio.fail_after(5):
            while True:
                nodes = await control_plane.admin.list_nodes(credentials.host_id)
                if all(n.info.name.startswith("renamed-") for n in nodes):
                    break
                await anyio.sleep(0.05)
    assert sorted(n.info.id.value for n in nodes) == sorted(node_ids)
    assert {n.info.container_status for n in nodes} == {Status.Stopped}


async def test_a_writer_that_fails_gets_the_stream_replaced(
    control_plane, config, monkeypatch, caplog
):
    """A bug that ends the stream's writer must not leave the stream open and
    silent, with updates piling up unsent: the stream is replaced, and what
    was not confirmed goes out on the new one."""
    credentials = await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    sent = Outbox.sent
    failures = []

    def fails_once(self):
        if not failures:
            failures.append(True)
            raise IndexError("a writer bug")
        sent(self)

    async with running_agent(config) as agent:
        monkeypatch.setattr(Outbox, "sent", fails_once)
        seen = await updates(
            control_plane, credentials.host_id, create(str(uuid.uuid4())), 20
        )
        assert seen[-1] == ("result", 0)
        assert failures
        assert agent.stream.connected.is_set()
    assert "a writer bug" in caplog.text


async def test_bad_input_leaves_the_stream_up(control_plane, config):
    otp = await control_plane.admin.create_otp()
    credentials = await provision(config, otp, control_plane.address)
    host = credentials.host_id
    node_id = str(uuid.uuid4())
    async with running_agent(config):
        assert await updates(control_plane, host, create(node_id, url="nope/1")) == [
            ("ack",),
            ("result", 8),
        ]
        assert await updates(control_plane, host, create(node_id, name="a/b")) == [
            ("ack",),
            ("result", 8),
        ]
        unknown = node_command(str(uuid.uuid4()), stop=node_pb2.NodeStop())
        assert await updates(control_plane, host, unknown) == [("ack",), ("result", 3)]
        assert (await updates(control_plane, host, create(node_id)))[-1] == (
            "result",
            0,
        )
    assert [n.info.id.value for n in await control_plane.admin.list_nodes(host)] == [
        node_id
    ]


async def test_a_wrong_token_keeps_the_agent_retrying(control_plane, config, caplog):
    otp = await control_plane.admin.create_otp()
    await provision(config, otp, control_plane.address)
    credentials = Credentials.load(config.data_dir)
    Credentials(credentials.host_id, "wrong", credentials.api_url).save(config.data_dir)
    agent = Agent(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(agent.run)
        for _ in range(200):  # the refusal is logged, then retried
            if caplog.text.count("UNAUTHENTICATED") >= 2:
                break
            await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()
    assert caplog.text.count("UNAUTHENTICATED") >= 2
    assert not agent.stream.connected.is_set()


async def test_a_catalogue_the_agent_would_refuse_is_refused_before_the_otp_is_used(
    control_plane, config, catalogue_dir
):
    (catalogue_dir / "misnamed.toml").write_text(
        (catalogue_dir / "testchain.toml").read_text()
    )
    otp = await control_plane.admin.create_otp()

    with pytest.raises(CatalogueError, match=r"name the file testchain\.toml"):
        await provision(config, otp, control_plane.address)

    assert not (config.data_dir / "credentials.json").exists()
    (catalogue_dir / "misnamed.toml").unlink()
    credentials = await provision(config, otp, control_plane.address)  # still good
    assert Credentials.load(config.data_dir) == credentials


async def test_provisioning_a_provisioned_host_needs_force(control_plane, config):
    first = await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    with pytest.raises(
        CredentialsError, match=f"provisioned already, as host {first.host_id}"
    ):
        await provision(
            config, await control_plane.admin.create_otp(), control_plane.address
        )
    assert Credentials.load(config.data_dir) == first
    second = await provision(
        config,
        await control_plane.admin.create_otp(),
        control_plane.address,
        force=True,
    )
    assert second.host_id != first.host_id


async def test_a_forced_provision_starts_the_new_identity_with_an_empty_store(
    control_plane, config
):
    """The old identity's nodes are not the new host's: they are neither
    managed nor reported under it, they stay untouched in their runtime, and
    the old store is kept aside under the old host id."""
    first = await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    node_id = str(uuid.uuid4())
    async with running_agent(config):
        seen = await updates(control_plane, first.host_id, create(node_id))
        assert seen[-1] == ("result", 0)
        # a second provision while the agent runs is refused, and changes nothing
        with pytest.raises(AgentLocked, match="stop it first"):
            await provision(
                config,
                await control_plane.admin.create_otp(),
                control_plane.address,
                force=True,
            )
    assert Credentials.load(config.data_dir) == first

    second = await provision(
        config,
        await control_plane.admin.create_otp(),
        control_plane.address,
        force=True,
    )
    kept = config.data_dir / f"state.{first.host_id}.db"
    assert [n.id for n in Store.open_readonly(kept).nodes()] == [node_id]
    async with running_agent(config):
        await anyio.sleep(0.5)  # the greeting went out
    assert Store.open_readonly(config.data_dir / "state.db").nodes() == []
    runtime_files = list((config.data_dir / "runtimes").rglob("node-*.json"))
    assert [json.loads(f.read_text())["host_id"] for f in runtime_files] == [
        first.host_id
    ]
    listed = await control_plane.admin.list_nodes(second.host_id)
    assert node_id not in {n.info.id.value for n in listed}


async def test_provisioning_again_dials_where_the_host_was_provisioned(
    control_plane, config, tmp_path
):
    """Without --api and without api_url in the config, a forced provision
    goes to the control plane the host was provisioned with, not to the
    default address."""
    path = tmp_path / "agent.toml"
    path.write_text(f'data_dir = "{config.data_dir}"\nruntime = "memory"\n')

    async def provision_cli(*extra: str):
        otp = await control_plane.admin.create_otp()
        argv = ["agent", "provision", "--config", str(path), "--otp", otp, *extra]
        return await anyio.run_process(
            [sys.executable, "-m", "nodevisor", *argv], check=False
        )

    first = await provision_cli("--api", control_plane.address)
    assert first.returncode == 0, first.stderr.decode()
    again = await provision_cli("--force")
    assert again.returncode == 0, again.stderr.decode()
    assert Credentials.load(config.data_dir).api_url == control_plane.address


async def test_a_second_agent_on_one_data_dir_is_refused(control_plane, config):
    await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    async with running_agent(config):
        with pytest.raises(AgentLocked, match=r"another agent \(pid \d+\) is running"):
            await Agent(config).run()


async def agent_run_cli(config_path):
    """``nodevisor agent run --config config_path`` to its end."""
    argv = ["agent", "run", "--config", str(config_path)]
    return await anyio.run_process(
        [sys.executable, "-m", "nodevisor", *argv], check=False
    )


async def test_the_command_line_says_so_in_one_line(control_plane, config, tmp_path):
    """The lock is taken inside the agent's task group; the error must still
    reach the operator as one line, not as a traceback of exception groups."""
    await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    path = tmp_path / "agent.toml"
    path.write_text(
        f'data_dir = "{config.data_dir}"\nruntime = "memory"\n'
        f'catalogue = ["{config.catalogue[0]}"]\n'
    )
    async with running_agent(config):
        second = await agent_run_cli(path)
    stderr = second.stderr.decode()
    assert second.returncode == 1
    assert re.search(r"^Error: another agent \(pid \d+\) is running", stderr, re.M)
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr


async def test_api_url_from_config_wins_over_the_provisioned_one(control_plane, config):
    await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    stored = Credentials.load(config.data_dir)
    # the control plane moved: the stored address is dead, the config names it
    Credentials(stored.host_id, stored.token, "127.0.0.1:1").save(config.data_dir)
    moved = AgentConfig.model_validate(
        config.model_dump() | {"api_url": control_plane.address}
    )
    async with running_agent(moved) as agent:
        assert agent.credentials.api_url == control_plane.address


async def test_a_runtime_no_plugin_provides_is_refused_at_start(
    control_plane, config, tmp_path
):
    """A typo in ``runtime`` stops ``agent run`` with one line naming the
    runtimes that are installed, instead of an agent that fails every
    create."""
    await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    with pytest.raises(
        ConfigError, match=r"runtime = 'memroy' .* \(installed: .*memory"
    ):
        Agent(config.model_copy(update={"runtime": "memroy"}))

    path = tmp_path / "agent.toml"
    path.write_text(f'data_dir = "{config.data_dir}"\nruntime = "memroy"\n')
    run = await agent_run_cli(path)
    stderr = run.stderr.decode()
    assert run.returncode == 1
    assert re.search(r"^Error: runtime = 'memroy' in the config names no", stderr, re.M)
    assert "Traceback" not in stderr


async def test_a_runtime_that_rejects_its_settings_stops_the_start(
    control_plane, config
):
    """The runtime's settings table is the operator's to fix: the agent
    does not start without the runtime it was configured to use."""

    class Strict(MemoryRuntime):
        name = "strict"

        def __init__(self, context):
            raise ConfigError("[runtimes.strict] speed = 'fast' is not valid")

    class Plugin:
        @hookimpl
        def nodevisor_runtimes(self):
            return [Strict]

    await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    plugins = PluginManager()
    plugins.register(Plugin(), name="strict")
    agent = Agent(config.model_copy(update={"runtime": "strict"}), plugins)
    with pytest.raises(ConfigError, match=r"\[runtimes.strict\] speed = 'fast'"):
        with anyio.fail_after(10):
            await _sole_error(agent.run())


async def _sole_error(running):
    """Await ``running``; raise the one error a task group wrapped."""
    try:
        await running
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


async def test_the_agent_forgets_commands_finished_long_ago(control_plane, config):
    """At start-up the agent prunes the history the config asks it to keep;
    a command whose result the control plane confirmed goes."""
    credentials = await provision(
        config, await control_plane.admin.create_otp(), control_plane.address
    )
    host_id = credentials.host_id
    async with running_agent(config) as agent:
        seen = await updates(control_plane, host_id, create(str(uuid.uuid4())))
        assert seen[-1] == ("result", 0)
        (record,) = await control_plane.admin.list_commands(host_id)
        command_id = record.id
        with anyio.fail_after(10):
            await agent.outbox.wait_empty()  # the result is confirmed
    assert remembers(config, command_id)

    brief = config.model_copy(update={"command_history_days": 1e-9})
    async with running_agent(brief):
        with anyio.fail_after(10):
            while True:
                if not remembers(config, command_id):
                    break
                await anyio.sleep(0.05)


def remembers(config, command_id) -> bool:
    store = Store.open_readonly(config.data_dir / STORE_FILE)
    try:
        return store.command(command_id) is not None
    finally:
        store.close()


async def test_stopping_with_the_control_plane_gone_does_not_wait_out_the_grace(
    tmp_path, config
):
    """Updates left in the outbox cannot go anywhere without a stream: the
    agent stops at once, keeping them for its next start."""
    stop = anyio.Event()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            async with running_control_plane(tmp_path / "cp2") as cp:
                await provision(config, await cp.admin.create_otp(), cp.address)
                agent = Agent(config)  # shutdown_grace is 30 s
                tasks.start_soon(agent.run, stop)
                await agent.started.wait()
                await agent.stream.connected.wait()
            while True:  # the control plane is gone
                if not agent.stream.connected.is_set():
                    break
                await anyio.sleep(0.05)
            agent.outbox.put(host_update(host_pb2.HostInfo(name="unsent")))
            began = anyio.current_time()
            stop.set()
    assert anyio.current_time() - began < 10  # well within the grace
    assert len(agent.outbox) == 1  # kept for the next start


def test_the_agent_exits_without_waiting_for_a_stuck_worker_thread():
    """A runtime call given up on may hold a worker thread for good; once
    the agent has stopped, the process ends at once instead of waiting."""
    script = textwrap.dedent(
        """
        import threading, time
        from nodevisor._cli_agent import leave_stuck_threads
        from nodevisor._logging import configure

        configure("INFO")
        threading.Thread(target=time.sleep, args=(60,)).start()
        leave_stuck_threads(wait=0.2)
        print("not reached")
        """
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )

    assert time.monotonic() - began < 20
    assert done.returncode == 0
    assert "not reached" not in done.stdout
    assert "1 runtime calls given up on still run in worker threads" in done.stderr
