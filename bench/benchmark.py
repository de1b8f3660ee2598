"""Commands through the real control plane and agent, against the gRPC ceiling.

From the repository root::

    uv run python bench/benchmark.py           # the full run, under 2 minutes
    uv run python bench/benchmark.py --quick   # a smoke run, about 30 seconds

In one run, on this machine, it

1. measures a bare grpc.aio bidirectional echo between two processes
   (``bench/echo.py``): round trips per second with a window of messages in
   flight, lock-step (one at a time), and with a window of messages each
   answered four times (a v1 command's shape on the agent's stream);
2. starts the reference control plane (``nodevisor control-plane serve``) and
   a real agent process on the memory runtime (``bench/agent.py``, which runs
   ``Agent`` as ``nodevisor agent run`` does), provisioned with a one-time
   password, state in a temporary folder;
3. creates the nodes through the admin API, then drives start and stop
   commands across them, all on one ``SendCommands`` call: saturated with a
   window of commands in flight, then paced at 100 commands a second; a
   command's latency runs from its submission until its final
   ``CommandInfo`` (with an exit code) arrives, which the agent sends only
   once the result is committed to its store;
4. samples the agent's resident memory throughout;
5. stops the agent, queues one command, starts the agent again and times
   its start-up: until the reconciler's first pass over every node is done,
   and until the queued command is answered (after the greeting that carries
   every node's NodeInfo);
6. checks durability: every command the control plane has a result for is
   finished in the agent's store, and the agent's outbox is empty;

and prints each figure with its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor.controlplane import AdminClient

sys.path.insert(0, str(Path(__file__).parent))
from echo import FAN, echo_rate

BENCH = Path(__file__).parent
CATALOGUE = """
protocol = "benchchain"
[node]
command = ["benchchaind"]
grace_period = 1
[versions."1".runtimes.memory]
image = "benchchain:1"
"""
console = Console(highlight=False, width=100)
RESULT_WITHIN = 60.0


@dataclasses.dataclass(frozen=True)
class Plan:
    nodes: int
    window: int
    echo_seconds: float
    saturated_seconds: float
    paced_rate: float
    paced_seconds: float


FULL = Plan(1000, 32, 4.0, 15.0, 100.0, 15.0)
QUICK = Plan(100, 32, 1.5, 3.0, 100.0, 3.0)


# Processes


class Processes:
    """Every child process started; ``close`` ends those still running."""

    def __init__(self) -> None:
        self.children: list[asyncio.subprocess.Process] = []

    async def start(self, *argv: str | Path, log: Path) -> asyncio.subprocess.Process:
        with log.open("ab") as sink:
            child = await asyncio.create_subprocess_exec(
                *map(str, argv), stdout=asyncio.subprocess.PIPE, stderr=sink
            )
        self.children.append(child)
        return child

    async def stop(self, child: asyncio.subprocess.Process) -> float:
        """SIGTERM, then wait; how long it took to exit."""
        began = time.perf_counter()
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 40)
            except TimeoutError:
                child.kill()
                await child.wait()
        return time.perf_counter() - began

    async def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                await self.stop(child)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nodevisor(*argv: str, verbose: bool) -> list[str]:
    return [sys.executable, "-m", "nodevisor", *(["-v"] if verbose else []), *argv]


# Commands


def node_command(node_id: str, **variant: object) -> command_flow_pb2.Command:
    inner = node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)  # type: ignore[arg-type]
    return command_flow_pb2.Command(node=inner)


def create_command(node_id: str, name: str) -> command_flow_pb2.Command:
    image = common_pb2.ContainerImage(url="benchchain/1")
    return node_command(node_id, create=node_pb2.NodeCreate(name=name, image=image))


class Batch:
    """One ``SendCommands`` call that commands are submitted on as they come."""

    def __init__(self, admin: AdminClient, host_id: str) -> None:
        self.admin, self.host_id = admin, host_id
        self._requests: asyncio.Queue[command_flow_pb2.Command | None] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[command_flow_pb2.CommandInfo]] = {}
        self._submitted = 0
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Batch:
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._requests.put_nowait(None)  # the end of the call's requests
        assert self._reader is not None
        await self._reader

    async def send(
        self, command: command_flow_pb2.Command
    ) -> tuple[float, command_flow_pb2.CommandInfo]:
        """Submit ``command``; seconds until its result arrived, and the result."""
        began = time.perf_counter()
        future = asyncio.get_running_loop().create_future()
        self._waiting[self._submitted] = future
        self._submitted += 1
        self._requests.put_nowait(command)
        # A result that never comes fails the run instead of hanging it.
        result = await asyncio.wait_for(asyncio.shield(future), RESULT_WITHIN)
        return time.perf_counter() - began, result

    async def _commands(
        self,
    ) -> AsyncIterator[tuple[str, command_flow_pb2.Command]]:
        while (command := await self._requests.get()) is not None:
            yield self.host_id, command

    async def _read(self) -> None:
        async for answer in self.admin.send_commands(self._commands()):
            kind = answer.WhichOneof("update")
            if kind == "refused":
                error = RuntimeError(f"refused: {answer.refused}")
                self._waiting.pop(answer.index).set_exception(error)
            elif kind == "result":
                self._waiting.pop(answer.index).set_result(answer.result)


class Driver:
    """Sends commands through the admin API and times them.

    ``windowed`` and ``paced`` submit on the ``SendCommands`` call of
    ``batch``, opened by the caller; ``send`` makes a ``SendCommand`` call.
    """

    def __init__(self, admin: AdminClient, host_id: str) -> None:
        self.admin, self.host_id = admin, host_id
        self.batch = Batch(admin, host_id)
        self.node_ids: list[str] = []
        self.results = 0
        self.failures: list[str] = []
        self._running: dict[str, bool] = {}
        self._cycle: Iterator[str] = iter(())

    def use_nodes(self, node_ids: list[str]) -> None:
        self.node_ids = node_ids
        self._running = dict.fromkeys(node_ids, False)
        self._cycle = itertools.cycle(node_ids)

    def next_toggle(self) -> command_flow_pb2.Command:
        """A start for the next stopped node, a stop for the next running one."""
        node_id = next(self._cycle)
        running = self._running[node_id]
        self._running[node_id] = not running
        if running:
            return node_command(node_id, stop=node_pb2.NodeStop())
        return node_command(node_id, start=node_pb2.NodeStart())

    async def send(
        self, command: command_flow_pb2.Command, queued: asyncio.Event | None = None
    ) -> float:
        """Send ``command``; seconds until its result arrived."""
        began = time.perf_counter()
        # A result that never comes fails the run instead of hanging it.
        updates = self.admin.send_command(self.host_id, command, RESULT_WITHIN)
        async with contextlib.aclosing(updates):  # type: ignore[type-var]
            async for response in updates:
                if queued is not None and response.HasField("queued"):
                    queued.set()
                info = response.command_info
                if response.HasField("command_info") and info.HasField("exit_code"):
                    self._count(info)
                    return time.perf_counter() - began
        raise RuntimeError("SendCommand ended before the command's result")

    async def submit(self, command: command_flow_pb2.Command) -> float:
        """Submit ``command`` on the batch; seconds until its result arrived."""
        latency, result = await self.batch.send(command)
        self._count(result)
        return latency

    def _count(self, info: command_flow_pb2.CommandInfo) -> None:
        self.results += 1
        if info.exit_code != 0:
            self.failures.append(f"exit code {info.exit_code}: {info.response}")

    async def windowed(
        self, commands: Iterator[command_flow_pb2.Command], window: int, seconds: float
    ) -> tuple[float, list[float]]:
        """``window`` commands in flight until ``commands`` or time runs out."""
        latencies: list[float] = []
        began = time.perf_counter()
        end = began + seconds

        async def worker() -> None:
            for command in commands:
                latencies.append(await self.submit(command))
                if time.perf_counter() >= end:
                    return

        async with asyncio.TaskGroup() as tasks:
            for _ in range(window):
                tasks.create_task(worker())
        return len(latencies) / (time.perf_counter() - began), latencies

    async def paced(self, rate: float, seconds: float) -> tuple[float, list[float]]:
        """Commands sent at ``rate`` a second whatever the answers (open loop)."""
        latencies: list[float] = []

        async def one() -> None:
            latencies.append(await self.submit(self.next_toggle()))

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
                tasks.create_task(one())
        return len(latencies) / (time.perf_counter() - began), latencies


def toggles(driver: Driver) -> Iterator[command_flow_pb2.Command]:
    while True:
        yield driver.next_toggle()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# The measured system


@dataclasses.dataclass
class Agent:
    process: asyncio.subprocess.Process
    spawned: float
    events: dict[str, float]
    reader: asyncio.Task[None]


class System:
    """A control plane and an agent in their own processes, in ``work``."""

    def __init__(self, work: Path, processes: Processes, verbose: bool) -> None:
        self.work, self.processes, self.verbose = work, processes, verbose
        self.address = f"127.0.0.1:{free_port()}"
        self.cp_dir = work / "control-plane"
        self.agent_dir = work / "agent"
        self.config = work / "agent.toml"
        self.cp: asyncio.subprocess.Process | None = None
        self.admin: AdminClient | None = None
        self.agent: Agent | None = None
        self.host_id = ""

    async def start_control_plane(self) -> AdminClient:
        argv = ["control-plane", "serve", "--listen", self.address]
        self.cp = await self.processes.start(
            *nodevisor(*argv, "--data-dir", str(self.cp_dir), verbose=self.verbose),
            log=self.work / "control-plane.log",
        )
        token = self.cp_dir / "admin-token"
        await _until(token.exists, "the control plane wrote no admin token")
        self.admin = admin = AdminClient.for_data_dir(self.address, self.cp_dir)

        async def serving() -> bool:
            return await admin.list_hosts() is not None

        await _until_async(serving, "the control plane does not answer")
        return admin

    async def provision(self) -> str:
        assert self.admin is not None
        catalogue = self.work / "catalogue"
        catalogue.mkdir()
        (catalogue / "benchchain.toml").write_text(CATALOGUE)
        self.config.write_text(
            f'api_url = "{self.address}"\ndata_dir = "{self.agent_dir}"\n'
            f'runtime = "memory"\ncatalogue = ["{catalogue}"]\nname = "bench"\n'
        )
        otp = await self.admin.create_otp()
        argv = ["agent", "provision", "--otp", otp, "--config", str(self.config)]
        child = await self.processes.start(
            *nodevisor(*argv, verbose=False), log=self.work / "provision.log"
        )
        if await child.wait() != 0:
            raise RuntimeError("provisioning failed; see provision.log")
        credentials = json.loads((self.agent_dir / "credentials.json").read_text())
        self.host_id = credentials["host_id"]
        return self.host_id

    async def start_agent(self) -> Agent:
        level = "INFO" if self.verbose else "WARNING"
        spawned = time.time()
        child = await self.processes.start(
            sys.executable, BENCH / "agent.py", self.config, level,
            log=self.work / "agent.log",
        )  # fmt: skip
        events: dict[str, float] = {}
        reader = asyncio.create_task(_read_events(child, events))
        self.agent = Agent(child, spawned, events, reader)
        await self.wait_online(True)
        return self.agent

    async def stop_agent(self) -> float:
        assert self.agent is not None
        took = await self.processes.stop(self.agent.process)
        await self.wait_online(False)
        return took

    async def wait_online(self, online: bool) -> None:
        assert self.admin is not None
        admin, host_id = self.admin, self.host_id

        async def check() -> bool:
            hosts = {host.id: host.online for host in await admin.list_hosts()}
            return hosts.get(host_id) == online

        await _until_async(check, f"the agent did not go online={online}")


async def _read_events(
    child: asyncio.subprocess.Process, events: dict[str, float]
) -> None:
    assert child.stdout is not None
    async for line in child.stdout:
        event = json.loads(line)
        events[event["event"]] = event["at"]


async def _until(check: Callable[[], bool], why: str, seconds: float = 20) -> None:
    async def wrapped() -> bool:
        return check()

    await _until_async(wrapped, why, seconds)


async def _until_async(
    check: Callable[[], Awaitable[bool]], why: str, seconds: float = 20
) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.02)
    raise TimeoutError(why)


class CpuUse:
    """CPU seconds the three processes spend from now until ``record``."""

    def __init__(self, system: System) -> None:
        assert system.cp is not None and system.agent is not None
        self.processes = {
            "driver": psutil.Process(),
            "control plane": psutil.Process(system.cp.pid),
            "agent": psutil.Process(system.agent.process.pid),
        }
        self.began = {name: _cpu(p) for name, p in self.processes.items()}
        self.wall = time.perf_counter()

    def record(self, figures: Figures, commands: int) -> None:
        wall = time.perf_counter() - self.wall
        for name, process in self.processes.items():
            used = _cpu(process) - self.began[name]
            figures[f"cpu {name}"] = used / wall
            figures[f"cpu ms per command {name}"] = used / commands * 1e3


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class Memory:
    """The highest resident set size a process had while sampled."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0

    @contextlib.asynccontextmanager
    async def sampling(self, every: float = 0.2) -> AsyncIterator[None]:
        async def sample() -> None:
            while True:
                self.peak = max(self.peak, self.process.memory_info().rss)
                await asyncio.sleep(every)

        task = asyncio.create_task(sample())
        try:
            yield
        finally:
            task.cancel()
            self.peak = max(self.peak, self.process.memory_info().rss)


# The run


@dataclasses.dataclass
class Figures:
    figures: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __setitem__(self, key: str, value: float) -> None:
        self.figures[key] = value

    def __getitem__(self, key: str) -> float:
        return self.figures[key]


async def measure_echo(plan: Plan, processes: Processes, work: Path) -> Figures:
    figures = Figures()
    server = await processes.start(
        sys.executable, BENCH / "echo.py", log=work / "echo.log"
    )
    assert server.stdout is not None
    address = f"127.0.0.1:{int(await server.stdout.readline())}"
    seconds = plan.echo_seconds
    both = (psutil.Process(), psutil.Process(server.pid))
    began = sum(map(_cpu, both))
    figures["echo_window"] = await echo_rate(
        address, window=plan.window, seconds=seconds
    )
    # The warm-up's round trips are not counted; their CPU is, a little.
    used = sum(map(_cpu, both)) - began
    figures["echo_cpu_ms"] = used / (figures["echo_window"] * (seconds + 0.5)) * 1e3
    figures["echo_lockstep"] = await echo_rate(address, window=1, seconds=seconds)
    figures["echo_fan"] = await echo_rate(
        address, window=plan.window, seconds=seconds, fan=True
    )
    await processes.stop(server)
    return figures


async def measure_commands(
    plan: Plan, system: System, figures: Figures, memory: Memory
) -> Driver:
    assert system.admin is not None
    driver = Driver(system.admin, system.host_id)
    node_ids = [str(uuid.uuid4()) for _ in range(plan.nodes)]
    creates = (create_command(n, f"bench-{i:05d}") for i, n in enumerate(node_ids))
    async with driver.batch:
        console.print(f"creating {plan.nodes} nodes, {plan.window} commands in flight")
        figures["create_rate"], _ = await driver.windowed(creates, plan.window, 600)
        driver.use_nodes(node_ids)

        console.print("start/stop, saturated: warming up for 1s, then measuring")
        await driver.windowed(toggles(driver), plan.window, 1.0)
        cpu = CpuUse(system)
        rate, latencies = await driver.windowed(
            toggles(driver), plan.window, plan.saturated_seconds
        )
        cpu.record(figures, commands=len(latencies))
        figures["saturated_rate"] = rate
        figures["saturated_p50"] = percentile(latencies, 0.50)
        figures["saturated_p99"] = percentile(latencies, 0.99)

        console.print(f"start/stop, paced at {plan.paced_rate:g} a second")
        rate, latencies = await driver.paced(plan.paced_rate, plan.paced_seconds)
        figures["paced_rate"] = rate
        figures["paced_p50"] = percentile(latencies, 0.50)
        figures["paced_p99"] = percentile(latencies, 0.99)
    figures["rss"] = memory.peak
    figures["rss_now"] = memory.process.memory_info().rss
    return driver


async def measure_start_up(system: System, driver: Driver, figures: Figures) -> None:
    """Restart the agent with every node in its store and runtime."""
    console.print("restarting the agent with its nodes")
    figures["drain"] = await system.stop_agent()
    queued = asyncio.Event()
    info = node_command(driver.node_ids[0], info_get=node_pb2.NodeInfoGet())
    answer = asyncio.create_task(driver.send(info, queued))
    await queued.wait()
    agent = await system.start_agent()
    await answer
    answered = time.time()
    await _until(lambda: "reconciled" in agent.events, "no reconciliation")
    figures["startup_imported"] = agent.events["imported"] - agent.spawned
    figures["startup_reconciled"] = agent.events["reconciled"] - agent.spawned
    figures["startup_answered"] = answered - agent.spawned


def check_durability(system: System, driver: Driver, figures: Figures) -> None:
    """After the agent's drain: every result is in its store, nothing unsent."""
    store = sqlite3.connect(f"file:{system.agent_dir / 'state.db'}?mode=ro", uri=True)
    with contextlib.closing(store):
        finished, open_, outbox = store.execute(
            "SELECT (SELECT count(*) FROM commands WHERE exit_code IS NOT NULL),"
            " (SELECT count(*) FROM commands WHERE exit_code IS NULL),"
            " (SELECT count(*) FROM outbox)"
        ).fetchone()
    figures["agent_finished"] = finished
    figures["results"] = driver.results
    figures["durable"] = float(finished >= driver.results and open_ == 0)
    figures["outbox_left"] = outbox
    if not figures["durable"]:
        figures.notes.append(
            f"agent store: {finished} finished, {open_} open; the control plane "
            f"saw {driver.results} results"
        )
    if outbox:
        figures.notes.append(
            f"{outbox} confirmed updates were still in the agent's outbox after "
            "it stopped (its last confirmation was not committed); they are "
            "sent again on the next start"
        )


async def run(plan: Plan, work: Path, verbose: bool) -> Figures:
    processes = Processes()
    try:
        console.print(
            f"echo: {plan.echo_seconds:g}s each with a window, lock-step, "
            "and answered four times"
        )
        figures = await measure_echo(plan, processes, work)
        system = System(work, processes, verbose)
        async with await system.start_control_plane():
            await system.provision()
            agent = await system.start_agent()
            memory = Memory(agent.process.pid)
            async with memory.sampling():
                driver = await measure_commands(plan, system, figures, memory)
            await measure_start_up(system, driver, figures)
            figures["drain"] = await system.stop_agent()
            check_durability(system, driver, figures)
            figures["failures"] = len(driver.failures)
            figures.notes.extend(driver.failures[:5])
            if system.cp is not None:
                figures["cp_rss"] = psutil.Process(system.cp.pid).memory_info().rss
        return figures
    finally:
        await processes.close()


# The report


def report(plan: Plan, figures: Figures) -> bool:
    """Print the table; whether every figure with a target met it."""
    rows = _rows(plan, figures)
    table = Table("figure", "in flight", "measured", "target", "")
    for name, window, value, target, passed in rows:
        mark = "" if passed is None else ("[green]pass" if passed else "[red]FAIL")
        table.add_row(name, str(window), f"{value:,.2f}", target, mark)
    console.print(table)
    for note in figures.notes:
        console.print(f"note: {note}")
    return all(passed is not False for *_, passed in rows)


Row = tuple[str, int | str, float, str, bool | None]


def _rows(plan: Plan, f: Figures) -> list[Row]:
    ratio = f["saturated_rate"] / f["echo_window"]
    nodes, window, paced = plan.nodes, plan.window, f"paced at {plan.paced_rate:g}/s"
    results = int(f["results"])
    return [
        ("echo round trips/s", window, f["echo_window"], "", None),
        ("echo round trips/s, lock-step", 1, f["echo_lockstep"], "", None),
        ("CPU ms per echo round trip, both", window, f["echo_cpu_ms"], "", None),
        ("creates/s", window, f["create_rate"], "", None),
        ("commands/s, saturated", window, f["saturated_rate"], "", None),
        ("commands/s ÷ echo round trips/s", "", ratio, ">= 0.40", ratio >= 0.40),
        ("commands/s ÷ echo round trips/s, lock-step", "",
         f["saturated_rate"] / f["echo_lockstep"], "", None),
        (f"echo round trips/s, 1 down and {FAN} up", window, f["echo_fan"], "", None),
        (f"commands/s ÷ echo round trips/s, 1 down and {FAN} up", "",
         f["saturated_rate"] / f["echo_fan"], "", None),
        ("p50 ms, saturated", window, f["saturated_p50"] * 1e3, "", None),
        ("p99 ms, saturated", window, f["saturated_p99"] * 1e3, "", None),
        *(
            (f"CPU ms per command, {name} ({f[f'cpu {name}']:.0%} of a core)",
             window, f[f"cpu ms per command {name}"], "", None)
            for name in ("driver", "control plane", "agent")
        ),
        (f"commands/s, {paced}", "", f["paced_rate"], "", None),
        (f"p50 ms, {paced}", "", f["paced_p50"] * 1e3, "", None),
        (f"p99 ms, {paced}", "", f["paced_p99"] * 1e3, "< 20", f["paced_p99"] < 0.02),
        (f"agent RSS MB, peak, {nodes} nodes", "", f["rss"] / 1e6, "< 200",
         f["rss"] < 200e6),
        ("control plane RSS MB", "", f["cp_rss"] / 1e6, "", None),
        ("start-up s: interpreter, imports", "", f["startup_imported"], "", None),
        (f"start-up s: {nodes} nodes reconciled", "", f["startup_reconciled"], "< 2",
         f["startup_reconciled"] < 2),
        ("start-up s: queued command answered", "", f["startup_answered"], "", None),
        ("drain on SIGTERM s", "", f["drain"], "", None),
        ("results in the agent's store", "", f["agent_finished"], f">= {results}",
         bool(f["durable"])),
        ("commands with exit code != 0", "", f["failures"], "0", f["failures"] == 0),
    ]  # fmt: skip


def describe_machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cpus, {memory:.0f} GiB, Python {sys.version.split()[0]}, "
        f"load average before the run {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--nodes", type=int, help="how many nodes to create")
    parser.add_argument("--window", type=int, help="commands (and echoes) in flight")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--quiet-logs", action="store_true", help="run the agent and control "
        "plane at WARNING instead of INFO (as `nodevisor -v`)"
    )  # fmt: skip
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    plan = dataclasses.replace(
        plan, nodes=args.nodes or plan.nodes, window=args.window or plan.window
    )
    console.print(describe_machine())
    work = Path(tempfile.mkdtemp(prefix="nodevisor-bench."))
    console.print(f"work folder: {work}")
    began = time.perf_counter()
    try:
        figures = asyncio.run(run(plan, work, verbose=not args.quiet_logs))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    console.print(f"took {time.perf_counter() - began:.0f}s")
    explain(plan)
    sys.exit(0 if report(plan, figures) else 1)


def explain(plan: Plan) -> None:
    console.print(
        f"The echo keeps {plan.window} messages in flight on one stream, each "
        "slot lock-step (the next message goes when an echo comes back), as "
        f"the commands are driven: {plan.window} commands in flight on one "
        "SendCommands call, each slot sending the next command when its "
        "result is back. A command "
        "costs at least one message down and an ack and a result up, so the "
        "ratio compares like with like, and its target is held to it. "
        "Lock-step with one message in flight (the echo's slowest form, "
        "about 3,000 round trips a second on a 2-core VM) and the ratio to "
        "it are shown for reference. A plain v1 peer makes a command one message "
        f"down and {FAN} up on the agent's stream (ack, two status changes, "
        f"result): the echo answering each message {FAN} times is the "
        "ceiling of that shape. nodevisor's agent and control plane batch "
        "what is ready together, so under load a command costs less than "
        "that shape."
    )


if __name__ == "__main__":
    main()
