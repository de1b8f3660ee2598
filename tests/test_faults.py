"""Fault injection: the agent as a real process, a real control plane, and
faults in between (SIGKILL, a control plane restart, a silent or cut
connection, SIGTERM mid-command).

How the properties are observed, in every test:

- *Exactly one final result*: every command the control plane queued ends
  FINISHED with an exit code; and every result the control plane received
  for a command (it stores each update it gets, repeats included, in its
  ``updates`` table, which the tests read) is identical to that final one.
- *Executed at most once*: the dispatcher logs ``command <id> (<kind>) for
  <node>: started`` at DEBUG right before it hands a command to its node
  manager, and nowhere else; the agent runs with ``-vv`` and every run
  appends to one log file, so the lines count executions across kills. A
  command whose result is not "interrupted" must have been executed exactly
  once; an interrupted one at most once.
- *Convergence*: the control plane's last NodeInfo and the memory runtime's
  own state file (``nodes.json``) agree, and match what the commands asked.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import time
import uuid
from pathlib import Path

import anyio
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor.controlplane.testing import running_control_plane

from ._proxy import TcpProxy
from .conftest import AgentProcess, nodevisor

pytestmark = pytest.mark.anyio

Status = node_pb2.NodeInfo.ContainerStatus
INTERRUPTED = 1  # ExitCode.INTERNAL_ERROR, with a response saying the agent stopped
FINISHED = 4  # admin CommandState.COMMAND_STATE_FINISHED

CATALOGUE = """
protocol = "testchain"
[node]
command = ["testchaind"]
stop_signal = "SIGINT"
grace_period = 0.2
[versions."1".runtimes.memory]
image = "testchain:1"
[versions."2".runtimes.memory]
image = "testchain:2"
"""

OPENED = re.compile(r"stream to \S+ open")
STARTED = re.compile(r"command (\S+) \((\S+)\) for \S+: started")


# commands


def node_command(node_id: str, **variant: object) -> command_flow_pb2.Command:
    inner = node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)
    return command_flow_pb2.Command(node=inner)


def create(node_id: str, name: str) -> command_flow_pb2.Command:
    image = common_pb2.ContainerImage(url="testchain/1")
    return node_command(node_id, create=node_pb2.NodeCreate(name=name, image=image))


def action(node_id: str, verb: str) -> command_flow_pb2.Command:
    messages = {
        "start": node_pb2.NodeStart(),
        "stop": node_pb2.NodeStop(),
        "restart": node_pb2.NodeRestart(),
        "delete": node_pb2.NodeDelete(),
    }
    return node_command(node_id, **{verb: messages[verb]})


def upgrade(node_id: str, version: str) -> command_flow_pb2.Command:
    image = common_pb2.ContainerImage(url=f"testchain/{version}")
    return node_command(node_id, upgrade=node_pb2.NodeUpgrade(image=image))


# the agent process


class MemoryAgent(AgentProcess):
    """An agent process on the memory runtime, provisioned for a new host."""

    def __init__(self, folder: Path, host_id: str) -> None:
        super().__init__(folder / "agent.toml", folder / "agent.log")
        self.folder, self.host_id = folder, host_id
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        super().start()

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def executions(self) -> collections.Counter[str]:
        """How often each command id was handed to the node manager."""
        return collections.Counter(m[1] for m in STARTED.finditer(self.output()))

    def connects(self) -> int:
        """How many streams the agent opened, over all its runs."""
        return len(OPENED.findall(self.output())) if self.log.exists() else 0

    @property
    def _runtime_dir(self) -> Path:
        return self.folder / "data" / "runtimes" / "memory" / "nodes"

    def runtime_nodes(self) -> dict[str, dict]:
        """The memory runtime's own record of the nodes (a file per node)."""
        nodes = {}
        for path in self._runtime_dir.glob("node-*.json"):
            with contextlib.suppress(FileNotFoundError):
                node = json.loads(path.read_text())
                nodes[node["id"]] = node
        return nodes

    def set_runtime_state(self, node_id: str, state: str) -> None:
        """Change a node's state behind the agent's back, as a crash would."""
        path = self._runtime_dir / f"node-{node_id}.json"
        node = json.loads(path.read_text())
        temporary = path.with_suffix(".outside")
        temporary.write_text(json.dumps({**node, "state": state}))
        os.replace(temporary, path)

    async def wait_connected(self, connects: int, seconds: float = 20.0) -> None:
        """Wait until the agent has opened its ``connects``-th stream."""

        def opened() -> bool:
            assert self.alive, (
                f"the agent exited with {self.process.returncode}: "
                f"{self.output()[-1500:]}"
            )
            return self.connects() >= connects

        await eventually(opened, seconds)


def toml_table(values: dict) -> str:
    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str | Path):
            return f'"{v}"'
        return str(v).lower() if isinstance(v, bool) else str(v)

    return "".join(f"{key} = {value(v)}\n" for key, v in values.items())


@pytest.fixture
def memory_agent(tmp_path):
    """Make agents on the memory runtime: ``await memory_agent(cp, api, ...)``.

    ``api`` is the address the agent is provisioned with (and so streams to),
    ``memory`` the runtime's settings, the rest agent config keys. Every agent
    made is killed at the end.
    """
    made: list[MemoryAgent] = []
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    (catalogue / "testchain.toml").write_text(CATALOGUE)

    async def make(cp, api: str | None = None, memory=None, **config) -> MemoryAgent:
        folder = tmp_path / f"agent-{len(made)}"
        folder.mkdir()
        settings = {
            "api_url": api or cp.address,
            "data_dir": folder / "data",
            "runtime": "memory",
            "catalogue": [catalogue],
            "reconcile_interval": 0.3,
            "reconcile_attempts": 100,
            "shutdown_grace": 2.0,
            **config,
        }
        text = toml_table(settings) + "[runtimes.memory]\n" + toml_table(memory or {})
        (folder / "agent.toml").write_text(text)
        otp = await cp.admin.create_otp()
        provisioned = await anyio.run_process(
            nodevisor(
                "agent",
                "provision",
                "--config",
                str(folder / "agent.toml"),
                "--otp",
                otp,
            ),
            check=False,
        )
        assert provisioned.returncode == 0, provisioned.stderr.decode()
        agent = MemoryAgent(folder, provisioned.stdout.decode().split()[-1])
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.kill()


# what the control plane received


def _updates(cp_dir: Path, kind: str) -> list[command_flow_pb2.InfoUpdate]:
    """Every update of ``kind`` the control plane stored, repeats included."""
    path = cp_dir / "controlplane.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT payload FROM updates WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()
    return [command_flow_pb2.InfoUpdate.FromString(row[0]) for row in rows]


def results_received(cp_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Every final result the control plane received, by command id."""
    results = collections.defaultdict(list)
    for update in _updates(cp_dir, "command"):
        if update.command.HasField("exit_code"):
            info = update.command
            results[info.id.value].append((info.exit_code, info.response))
    return results


def node_reports(cp_dir: Path, node_id: str) -> list[node_pb2.NodeInfo]:
    """Every NodeInfo the control plane received about ``node_id``, in order."""
    return [u.node for u in _updates(cp_dir, "node") if u.node.id.value == node_id]


def interrupted(result: tuple[int, str]) -> bool:
    return result[0] == INTERRUPTED and "agent stopped" in result[1]


async def all_finished(cp, host_id: str, seconds: float = 60.0):
    """The host's commands, once every one has a final result."""
    with anyio.fail_after(seconds):
        while True:
            commands = await cp.admin.list_commands(host_id)
            if all(c.state == FINISHED for c in commands):
                return commands
            await anyio.sleep(0.1)


async def state_of(cp, command_id: str):
    for record in await cp.admin.list_commands():
        if record.id == command_id:
            return record
    raise AssertionError(f"no command {command_id}")


async def wait_state(cp, command_id: str, state: int, seconds: float = 20.0):
    with anyio.fail_after(seconds):
        while True:
            record = await state_of(cp, command_id)
            if record.state >= state:
                return record
            await anyio.sleep(0.005)


async def assert_exactly_once(cp, agent: MemoryAgent) -> dict[str, tuple[int, str]]:
    """Every command: one final result, repeats identical, run at most once.

    Returns each command's final result.
    """
    commands = await all_finished(cp, agent.host_id)
    received = results_received(cp.data_dir)
    executions = agent.executions()
    final = {}
    for record in commands:
        result = (record.exit_code, record.response)
        final[record.id] = result
        assert received[record.id], f"no result ever received for {record.id}"
        assert set(received[record.id]) == {result}, (record.id, received[record.id])
        runs = executions[record.id]
        if interrupted(result):
            assert runs <= 1, f"command {record.id} ran {runs} times: {result}"
        else:
            assert runs == 1, f"command {record.id} ran {runs} times: {result}"
    unknown = set(executions) - set(final)
    assert not unknown, f"executed commands the control plane never sent: {unknown}"
    return final


async def eventually(check, seconds: float = 20.0, every: float = 0.01) -> None:
    """Wait until ``check()`` is true."""
    with anyio.fail_after(seconds):
        while True:
            if check():
                return
            await anyio.sleep(every)


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def run(cp, host_id: str, command, seconds: float = 30.0) -> tuple[int, str]:
    """Send ``command`` and wait for its result."""
    async for update in cp.admin.send_command(host_id, command, seconds):
        info = update.command_info
        if update.WhichOneof("update") == "command_info" and info.HasField("exit_code"):
            return info.exit_code, info.response
    raise AssertionError("SendCommand ended without a result")


Actual = tuple[str, str | None]  # (status name, version), or ("Absent", None)


async def actual_states(cp, agent: MemoryAgent) -> dict[str, Actual]:
    """Each node as the control plane last heard of it, where that agrees with
    the runtime's own record; a node between the two is "Unsettled"."""
    runtime = {
        node_id: (node["state"].capitalize(), node["url"].rpartition("/")[2])
        for node_id, node in agent.runtime_nodes().items()
    }
    seen: dict[str, Actual] = {}
    for node in await cp.admin.list_nodes(agent.host_id):
        info = node.info
        status = Status.Name(info.container_status)
        if status in ("Deleted", "UndefinedContainerStatus"):
            status = "Absent"
        state = (status, info.image.rpartition("/")[2] or None)
        on_disk = runtime.get(info.id.value, ("Absent", None))
        if status == "Absent":
            state = on_disk if on_disk[0] == "Absent" else ("Unsettled", None)
        elif state != on_disk:
            state = ("Unsettled", f"reported {state}, runtime {on_disk}")
        seen[info.id.value] = state
    for node_id in runtime.keys() - seen.keys():
        seen[node_id] = ("Unreported", str(runtime[node_id]))
    return seen


async def converge(cp, agent, wanted: dict[str, set[Actual]], seconds=30.0) -> None:
    """Wait until every node is in one of the states it may end in."""
    deadline = time.monotonic() + seconds
    while True:
        actual = await actual_states(cp, agent)
        wrong = {
            node_id: (actual.get(node_id, ("Absent", None)), sorted(map(str, states)))
            for node_id, states in wanted.items()
            if actual.get(node_id, ("Absent", None)) not in states
        }
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes did not converge (actual, allowed): {wrong}")
        await anyio.sleep(0.2)


async def exited(agent: MemoryAgent, seconds: float) -> int:
    assert agent.process is not None
    return await anyio.to_thread.run_sync(lambda: agent.process.wait(timeout=seconds))


# 7. SIGTERM


async def test_sigterm_lets_a_short_command_finish_and_refuses_new_ones(
    control_plane, memory_agent
):
    """A command that fits in shutdown_grace finishes and its result reaches
    the control plane before the agent exits 0; a command sent after the
    signal is left for the next run, which executes it once."""
    cp = control_plane
    agent = await memory_agent(cp, memory={"delay": {"start": 2.0}}, shutdown_grace=8)
    agent.start()
    await agent.wait_connected(1)
    node, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await run(cp, agent.host_id, create(node, "alpha")))[0] == 0
    assert (await run(cp, agent.host_id, create(other, "beta")))[0] == 0

    start = await cp.admin.queue_command(agent.host_id, action(node, "start"))
    await wait_state(cp, start.id, 3)  # acked: running in the agent
    signalled = time.monotonic()
    agent.terminate()
    await eventually(lambda: "new commands are refused" in agent.output(), 5)
    late = await cp.admin.queue_command(agent.host_id, action(other, "start"))

    assert await exited(agent, 15) == 0
    assert time.monotonic() - signalled < 6, "did not exit once the command finished"
    # Its own threads (the store's) end with it: none counts as left running.
    assert "agent stopped" in agent.output()
    assert "given up on still run" not in agent.output()
    record = await state_of(cp, start.id)
    assert (record.state, record.exit_code) == (FINISHED, 0), record
    assert agent.executions()[late.id] == 0
    assert (await state_of(cp, late.id)).state != FINISHED

    agent.start()
    final = await assert_exactly_once(cp, agent)
    assert final[late.id][0] == 0
    await converge(cp, agent, {node: {("Running", "1")}, other: {("Running", "1")}})


async def test_sigterm_reports_a_command_longer_than_the_grace_interrupted(
    control_plane, memory_agent
):
    """A command longer than shutdown_grace is cut short: the agent exits 0
    soon after the grace, the command is recorded failed as interrupted, the
    control plane gets that result (at the latest from the next run), never a
    hanging command, and the next run brings the node where the command was
    taking it."""
    cp = control_plane
    agent = await memory_agent(cp, memory={"delay": {"start": 6.0}}, shutdown_grace=1)
    agent.start()
    await agent.wait_connected(1)
    node = str(uuid.uuid4())
    assert (await run(cp, agent.host_id, create(node, "alpha")))[0] == 0
    start = await cp.admin.queue_command(agent.host_id, action(node, "start"))
    await wait_state(cp, start.id, 3)

    signalled = time.monotonic()
    agent.terminate()
    assert await exited(agent, 15) == 0
    assert time.monotonic() - signalled < 4, "exit was not prompt after the grace"
    assert "interrupted by the agent stopping" in agent.output()

    agent.start()
    final = await assert_exactly_once(cp, agent)
    assert interrupted(final[start.id]), final[start.id]
    await converge(cp, agent, {node: {("Running", "1")}})


# 1. kill -9 at random points

KILLS = 20
STEP_DELAYS = {
    "prepare": 0.05,
    "create": 0.15,
    "start": 0.3,
    "stop": 0.3,
    "upgrade": 0.3,
    "delete": 0.2,
}


class Script:
    """Random but mostly sensible commands for a few nodes at a time.

    It tracks what each node should be if every command succeeded; when a
    kill makes that wrong, the next commands may be refused, which is fine.
    """

    def __init__(self, rng: random.Random, width: int = 4) -> None:
        self.rng = rng
        self.nodes: dict[str, tuple[str, str]] = {}  # id -> (state, version)
        self.names: dict[str, str] = {}
        self.width = width

    def next(self) -> command_flow_pb2.Command:
        while len(self.nodes) < self.width:
            node_id = str(uuid.uuid4())
            self.nodes[node_id] = ("absent", "1")
            self.names[node_id] = f"node-{len(self.names)}"
        node_id = self.rng.choice(sorted(self.nodes))
        state, version = self.nodes[node_id]
        if state == "absent":
            self.nodes[node_id] = ("stopped", "1")
            return create(node_id, self.names[node_id])
        verbs = ["start", "restart", "delete"]
        if state == "running":
            verbs = ["stop", "restart", "upgrade", "upgrade", "delete"]
        verb = self.rng.choice(verbs)
        if verb == "delete":
            del self.nodes[node_id]
            return action(node_id, "delete")
        if verb == "upgrade":
            version = "2" if version == "1" else "1"
            self.nodes[node_id] = ("running", version)
            return upgrade(node_id, version)
        self.nodes[node_id] = ("stopped" if verb == "stop" else "running", version)
        return action(node_id, verb)


def allowed_end_states(commands, final) -> dict[str, set[Actual]]:
    """What each node may end as, from its commands and their results.

    A successful command sets the node's state; a refused one leaves it; an
    interrupted one may have taken effect or not (the agent may have died
    before or after recording what it expected of the node), so both stay
    allowed. Deleted and never created are both "Absent".
    """
    allowed: dict[str, set[Actual]] = {}
    for record in commands:
        command = record.command.node
        which = command.WhichOneof("command")
        before = allowed.get(record.node_id, {("Absent", None)})
        after = {_target(which, command, state) for state in before}
        result = final[record.id]
        if result[0] == 0 and not (which == "upgrade" and "already" in result[1]):
            allowed[record.node_id] = after
        elif interrupted(result):
            allowed[record.node_id] = before | after
        else:
            allowed[record.node_id] = before
    return allowed


def _target(which: str, command: node_pb2.NodeCommand, state: Actual) -> Actual:
    if which == "create":
        return ("Stopped", "1")
    if which == "delete":
        return ("Absent", None)
    if which == "upgrade":
        return ("Running", command.upgrade.image.url.rpartition("/")[2])
    return ("Stopped" if which == "stop" else "Running", state[1])


async def test_kill_9_at_random_points(control_plane, memory_agent):
    """SIGKILL the agent 20 times at random moments while commands for a few
    nodes (create, start, stop, restart, upgrade, delete) stream in; every
    runtime step takes 0.05-0.3 s, so kills land in the middle of commands,
    between the store's writes and the runtime's steps, and before or after a
    result went out.

    Then, with the agent left running: every command has exactly one final
    result and every repeat the control plane got is identical; no command
    was executed twice (see the module docstring for how that is counted);
    every result is either the command's own or "interrupted"; and every
    node converges to a state its commands allow (``allowed_end_states``),
    as both the control plane and the runtime see it.

    The seed is random; set NODEVISOR_FAULT_SEED to replay one.
    """
    seed = int(os.environ.get("NODEVISOR_FAULT_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    cp = control_plane
    agent = await memory_agent(cp, memory={"delay": STEP_DELAYS})
    script = Script(rng)
    for _ in range(KILLS):
        opened = agent.connects()
        agent.start()
        for _ in range(rng.randint(1, 4)):
            await cp.admin.queue_command(agent.host_id, script.next())
        if rng.random() < 0.85:  # else: kill it while it is starting
            await agent.wait_connected(opened + 1)
        await anyio.sleep(rng.uniform(0.0, 1.2))
        agent.kill()

    agent.start()
    try:
        final = await assert_exactly_once(cp, agent)
        for result in final.values():
            assert result[0] in (0, 3, 4) or interrupted(result), result
        commands = await cp.admin.list_commands(agent.host_id)
        await converge(cp, agent, allowed_end_states(commands, final))
    except BaseException as exc:
        exc.add_note(f"NODEVISOR_FAULT_SEED={seed}; agent log: {agent.log}")
        raise
    assert agent.runs == KILLS + 1 and agent.alive
    repeats = sum(len(r) > 1 for r in results_received(cp.data_dir).values())
    cut_short = sum(map(interrupted, final.values()))
    print(
        f"seed {seed}: {len(final)} commands, {cut_short} interrupted, "
        f"{repeats} with repeated results, {agent.connects()} streams"
    )


# 2. the control plane restarted mid-stream


async def test_control_plane_restarted_mid_stream(tmp_path, memory_agent):
    """Commands queued before the control plane stops, some still running or
    waiting in the agent when it goes, and commands queued after it is back
    on the same port and data dir: each gets exactly one final result, each
    runs once, and what the agent did while the control plane was away (node
    statuses, results) arrives once it is back."""
    address, cp_dir = free_address(), tmp_path / "cp"
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    async with running_control_plane(cp_dir, listen=address) as cp:
        agent = await memory_agent(cp, memory={"delay": {"start": 1.5}})
        agent.start()
        await agent.wait_connected(1)
        assert (await run(cp, agent.host_id, create(a, "alpha")))[0] == 0
        assert (await run(cp, agent.host_id, create(b, "beta")))[0] == 0
        start_a = await cp.admin.queue_command(agent.host_id, action(a, "start"))
        await cp.admin.queue_command(agent.host_id, action(b, "start"))
        await cp.admin.queue_command(agent.host_id, action(a, "stop"))
        await wait_state(cp, start_a.id, 3)
    await anyio.sleep(4)  # both starts and the stop finish while it is down
    assert agent.alive

    async with running_control_plane(cp_dir, listen=address) as cp:
        await cp.admin.queue_command(agent.host_id, action(b, "restart"))
        await cp.admin.queue_command(agent.host_id, upgrade(b, "2"))
        final = await assert_exactly_once(cp, agent)
        assert all(code == 0 for code, _ in final.values()), final
        await converge(cp, agent, {a: {("Stopped", "1")}, b: {("Running", "2")}})
    reports = node_reports(cp_dir, a)
    assert [Status.Name(r.container_status) for r in reports].count("Running") >= 1
    assert agent.connects() >= 2


# 3. a silent connection


async def test_a_silent_connection_is_detected_and_replaced(
    control_plane, memory_agent
):
    """The proxy between agent and control plane stops forwarding without
    closing anything. The agent notices (its heartbeat goes unconfirmed for
    heartbeat_timeout), opens a new stream through the proxy once it forwards
    again, and delivers the result of the command that finished meanwhile;
    the command sent into the void is sent again and runs once.

    Uses heartbeat_interval = 1 s and heartbeat_timeout = 3 s; the transport
    keepalive (every 330 s) would take minutes.
    """
    cp = control_plane
    async with TcpProxy(cp.address) as proxy:
        agent = await memory_agent(
            cp,
            api=proxy.address,
            memory={"delay": {"start": 2.0}},
            heartbeat_interval=1.0,
            heartbeat_timeout=3.0,
        )
        agent.start()
        await agent.wait_connected(1)
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        assert (await run(cp, agent.host_id, create(a, "alpha")))[0] == 0
        assert (await run(cp, agent.host_id, create(b, "beta")))[0] == 0
        start_a = await cp.admin.queue_command(agent.host_id, action(a, "start"))
        await wait_state(cp, start_a.id, 3)

        proxy.black_hole()
        silenced = time.monotonic()
        await cp.admin.queue_command(agent.host_id, action(b, "start"))
        await anyio.sleep(1.0)
        proxy.resume()
        try:
            await agent.wait_connected(2, seconds=20)
        except TimeoutError:
            raise AssertionError(
                f"no new stream within 20s of a silenced one (agent alive: "
                f"{agent.alive}); log: {agent.log}"
            ) from None
        final = await assert_exactly_once(cp, agent)
        took = time.monotonic() - silenced

    assert all(code == 0 for code, _ in final.values()), final
    assert "looks dead" in agent.output()
    assert proxy.forwarded >= 2 and agent.connects() >= 2
    assert took < 20, f"the dead stream took {took:.0f}s to be replaced"
    await converge(cp, agent, {a: {("Running", "1")}, b: {("Running", "1")}})


# 4. the stream cut right after a command or a result


async def test_cuts_right_after_a_command_or_a_result_is_sent(
    control_plane, memory_agent
):
    """The proxy closes the connection at four moments of a command's trip:
    right after the control plane sent it, right after the agent acked it,
    right after the agent sent its result, right after the control plane
    stored the result. Each command still runs once and has one final
    result; repeats the control plane received are identical."""
    cp = control_plane
    async with TcpProxy(cp.address) as proxy:
        agent = await memory_agent(
            cp, api=proxy.address, memory={"delay": {"start": 1.0}}
        )
        agent.start()
        await agent.wait_connected(1)
        nodes = [str(uuid.uuid4()) for _ in range(4)]
        for number, node in enumerate(nodes):
            assert (await run(cp, agent.host_id, create(node, f"n{number}")))[0] == 0

        async def sent(record):
            await wait_state(cp, record.id, 2)

        async def acked(record):
            await wait_state(cp, record.id, 3)

        async def result_sent(record):
            marker = f"command {record.id} (node.start): exit code"
            await eventually(lambda: marker in agent.output(), 20, every=0.002)

        async def result_stored(record):
            await wait_state(cp, record.id, FINISHED)

        for node, moment in zip(
            nodes, [sent, acked, result_sent, result_stored], strict=True
        ):
            opened = agent.connects()
            record = await cp.admin.queue_command(agent.host_id, action(node, "start"))
            await moment(record)
            assert proxy.cut() >= 1
            await agent.wait_connected(opened + 1)

        final = await assert_exactly_once(cp, agent)
    assert all(code == 0 for code, _ in final.values()), final
    await converge(cp, agent, {node: {("Running", "1")} for node in nodes})
