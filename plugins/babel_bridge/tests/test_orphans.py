"""A node's processes live no longer than its babel.

babel killed with SIGKILL (``kill -9 $(cat babel.pid)``) takes its node's
process with it; what outlives it all the same (here the child of a shell
that is the node's process) is killed before the node starts again, and by
inspect, list_nodes, stop and delete; and a pid that ``node.pid`` or
``babel.pid`` records but that another process has by now is never killed.
Real processes throughout: ``sleep``, and a real litecoind if the host has
one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from nodevisor import NodeSpec, NodeState, RuntimeContext
from nodevisor_babel import BabelRuntime

pytestmark = pytest.mark.anyio

SLEEPER = ("sleep", "600")
#: A node whose process has a child: the parent-death signal reaches the
#: shell only, so the sleep outlives babel, as a node's own children would.
FORKING = ("sh", "-c", "sleep 600 & wait")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[BabelRuntime]:
    (tmp_path / "images" / "sleeper-1" / "bin").mkdir(parents=True)
    host_id = f"orphans-{uuid.uuid4().hex[:8]}"
    context = RuntimeContext(
        host_id, tmp_path / "runtime", {"images": str(tmp_path / "images")}
    )
    runtime = BabelRuntime(context)
    try:
        yield runtime
    finally:
        await runtime.aclose()
        for pid in _processes_of(tmp_path):  # what a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _spec(
    runtime: BabelRuntime,
    command: tuple[str, ...],
    protocol: str = "chain",
    ports: tuple[int, ...] = (19443,),
    image: str = "sleeper-1",
) -> NodeSpec:
    node_id = str(uuid.uuid4())
    return NodeSpec(
        id=node_id,
        name=f"n-{node_id[:8]}",
        host_id=runtime.context.host_id,
        protocol=protocol,
        version="1",
        image=image,
        command=command,
        ports=ports,
        data_path=".",
        grace_period=5,
    )


def _folder(runtime: BabelRuntime, node_id: str) -> Path:
    return runtime.root / node_id


def _pid(runtime: BabelRuntime, node_id: str, name: str) -> int:
    return int((_folder(runtime, node_id) / f"{name}.pid").read_text())


def _stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def _alive(pid: int) -> bool:
    """Whether the process runs: a zombie does not (pid 1 may never reap it)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in "ZXx"


async def _gone(pid: int, seconds: float = 5.0) -> bool:
    with anyio.move_on_after(seconds):
        while _alive(pid):  # noqa: ASYNC110 (/proc, polled)
            await anyio.sleep(0.05)
    return not _alive(pid)


def _children_in_group(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` other than its leader."""
    found = []
    for entry in os.listdir("/proc"):
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat and int(stat[2]) == pgid and int(entry) != pgid and _alive(int(entry)):
            found.append(int(entry))
    return found


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]


def _ignored(pid: int) -> int:
    """The mask of the signals the process ignores."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.partition("SigIgn:")[2].split()[0], 16)


def _processes_of(root: Path) -> list[int]:
    """Live processes working under ``root`` or naming it on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{entry}/cwd")
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            inside = cwd == str(root) or cwd.startswith(f"{root}/")
            if (inside or str(root) in argv) and _alive(int(entry)):
                found.append(int(entry))
    return found


async def _running(runtime: BabelRuntime, spec: NodeSpec) -> int:
    """Create and start the node; its process's pid."""
    await runtime.create(spec)
    await runtime.start(spec)
    return _pid(runtime, spec.id, "node")


async def _kill_babel(runtime: BabelRuntime, node_id: str) -> None:
    """``kill -9 $(cat babel.pid)``, as the tester did."""
    os.kill(_pid(runtime, node_id, "babel"), signal.SIGKILL)
    assert await _gone(_pid(runtime, node_id, "babel"))


async def _orphaned(runtime: BabelRuntime, spec: NodeSpec) -> int:
    """Start a FORKING node and kill its babel: the shell dies with babel, but
    its sleep lives on. The pid of that sleep."""
    shell = await _running(runtime, spec)
    with anyio.fail_after(5):
        while not (children := _children_in_group(shell)):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    [orphan] = children
    await _kill_babel(runtime, spec.id)
    await anyio.sleep(0.2)
    assert _alive(orphan), "the shell's child died too: nothing left to test"
    return orphan


async def test_the_node_dies_with_its_babel(runtime: BabelRuntime) -> None:
    spec = _spec(runtime, SLEEPER)
    node = await _running(runtime, spec)

    await _kill_babel(runtime, spec.id)

    assert await _gone(node), f"node process {node} outlived its babel"
    assert (await runtime.inspect(spec.id)).state is NodeState.STOPPED
    await runtime.start(spec)  # a new babel, a new process
    again = _pid(runtime, spec.id, "node")
    assert again != node and _alive(again)
    assert (await runtime.inspect(spec.id)).state is NodeState.RUNNING
    await runtime.delete(spec.id)
    assert await _gone(again), "delete left the node's process running"
    assert not _folder(runtime, spec.id).exists()
    assert _processes_of(runtime.root) == []


async def test_the_node_process_is_the_program_with_default_signals(
    runtime: BabelRuntime,
) -> None:
    """The wrapper that sets the parent-death signal execs the program in
    place, and leaves no signal ignored that Python ignores (SIGPIPE,
    SIGXFSZ), as babel's subprocess would not."""
    spec = _spec(runtime, SLEEPER)
    node = await _running(runtime, spec)
    with anyio.fail_after(5):
        while _argv(node) != list(SLEEPER):  # noqa: ASYNC110 (/proc, polled)
            await anyio.sleep(0.02)
    ignored = _ignored(node)
    await runtime.delete(spec.id)

    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), f"the node ignores {signum.name}"


async def test_what_outlives_babel_is_killed_before_the_node_starts_again(
    runtime: BabelRuntime,
) -> None:
    spec = _spec(runtime, FORKING, ports=())  # no ports: start lists no node
    orphan = await _orphaned(runtime, spec)

    await runtime.start(spec)  # the new babel kills it before it starts the node

    assert await _gone(orphan, 0), f"process {orphan} outlived the new start"
    assert (await runtime.inspect(spec.id)).state is NodeState.RUNNING
    log = (_folder(runtime, spec.id) / "logs" / "node.log").read_text()
    assert "babel: killed the node's processes left from before: " in log
    assert f"{orphan} (sleep 600)" in log
    await runtime.delete(spec.id)
    assert _processes_of(runtime.root) == []


async def _inspect(runtime: BabelRuntime, spec: NodeSpec) -> None:
    assert (await runtime.inspect(spec.id)).state is NodeState.STOPPED


async def _list(runtime: BabelRuntime, spec: NodeSpec) -> None:
    listed = {node.id: node.state for node in await runtime.list_nodes()}
    assert listed == {spec.id: NodeState.STOPPED}


async def _stop(runtime: BabelRuntime, spec: NodeSpec) -> None:
    outcome = await runtime.stop(spec)
    assert not outcome.clean
    assert "outlived its babel; killed by SIGKILL" in outcome.detail


async def _delete(runtime: BabelRuntime, spec: NodeSpec) -> None:
    await runtime.delete(spec.id)
    assert not _folder(runtime, spec.id).exists()


async def _start_another(runtime: BabelRuntime, spec: NodeSpec) -> None:
    """A second node with the same fixed ports: the first one's orphan
    held them, so it must be gone before the second starts."""
    other = _spec(runtime, SLEEPER)
    await runtime.create(other)
    await runtime.start(other)
    assert (await runtime.inspect(other.id)).state is NodeState.RUNNING
    await runtime.delete(other.id)


@pytest.mark.parametrize(
    "operation",
    [_inspect, _list, _stop, _delete, _start_another],
    ids=["inspect", "list_nodes", "stop", "delete", "start-of-another-node"],
)
async def test_what_outlives_babel_is_killed_by_the_runtime(
    runtime: BabelRuntime,
    operation: Callable[[BabelRuntime, NodeSpec], Awaitable[None]],
) -> None:
    spec = _spec(runtime, FORKING)
    orphan = await _orphaned(runtime, spec)

    await operation(runtime, spec)

    assert await _gone(orphan, 0), f"process {orphan} of the node still runs"
    await runtime.delete(spec.id)
    assert _processes_of(runtime.root) == []


async def test_a_stop_kills_a_babel_that_does_not_answer_and_its_node(
    runtime: BabelRuntime,
) -> None:
    spec = _spec(runtime, SLEEPER)
    node = await _running(runtime, spec)
    babel = _pid(runtime, spec.id, "babel")
    os.kill(babel, signal.SIGSTOP)  # frozen: alive, and deaf
    try:
        outcome = await runtime.stop(spec)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(babel, signal.SIGCONT)

    assert not outcome.clean and not outcome.outlived_grace
    assert f"its babel, process {babel}, did not answer" in outcome.detail
    assert _stat(babel) is None, "killed, and left a zombie behind"
    assert await _gone(babel, 0) and await _gone(node), "the node still runs"
    assert (await runtime.inspect(spec.id)).state is NodeState.STOPPED
    await runtime.delete(spec.id)
    assert _processes_of(runtime.root) == []


async def test_a_pid_another_process_has_now_is_never_killed(
    runtime: BabelRuntime, tmp_path: Path
) -> None:
    """node.pid and babel.pid left by a babel long gone (a reboot, say) name
    a process of someone else's by now: a group leader, as the node was."""
    stranger = await anyio.open_process(
        ["sleep", "600"], cwd=tmp_path, start_new_session=True
    )
    spec = _spec(runtime, SLEEPER)
    folder = _folder(runtime, spec.id)
    try:
        await runtime.create(spec)
        for name in ("node.pid", "babel.pid"):
            (folder / name).write_text(str(stranger.pid))

        assert (await runtime.inspect(spec.id)).state is NodeState.STOPPED
        assert (await runtime.stop(spec)).clean
        await runtime.start(spec)
        assert (await runtime.inspect(spec.id)).state is NodeState.RUNNING
        await runtime.stop(spec)
        for name in ("node.pid", "babel.pid"):
            (folder / name).write_text(str(stranger.pid))
        await runtime.delete(spec.id)

        assert stranger.returncode is None, "a process not of the node was killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            stranger.kill()
        await stranger.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _answers(port: int, seconds: float = 60) -> None:
    with anyio.fail_after(seconds):
        while True:
            try:
                await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                return
            except OSError:
                await anyio.sleep(0.2)


@pytest.mark.skipif(shutil.which("litecoind") is None, reason="no litecoind")
async def test_litecoind_dies_with_its_babel_and_starts_again(
    runtime: BabelRuntime,
) -> None:
    rpc, p2p = _free_port(), _free_port()
    command = (
        "litecoind", "-regtest", "-datadir=.", "-printtoconsole", "-server",
        "-rpcuser=nodevisor", "-rpcpassword=nodevisor-regtest",
        "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1", f"-rpcport={rpc}",
        f"-port={p2p}", "-bind=127.0.0.1", "-listenonion=0", "-dbcache=16",
    )  # fmt: skip
    spec = _spec(runtime, command, "litecoin-regtest", (rpc, p2p), "system")
    first = await _running(runtime, spec)
    await _answers(rpc)  # it holds the data directory's lock by now

    await _kill_babel(runtime, spec.id)

    assert await _gone(first), f"litecoind {first} outlived its babel"
    assert (await runtime.inspect(spec.id)).state is NodeState.STOPPED
    await runtime.start(spec)
    second = _pid(runtime, spec.id, "node")
    await _answers(rpc)
    await anyio.sleep(2)  # long enough to fail on a lock held by the first
    assert _alive(second) and _pid(runtime, spec.id, "node") == second
    assert (await runtime.inspect(spec.id)).state is NodeState.RUNNING
    log = (_folder(runtime, spec.id) / "logs" / "node.log").read_text()
    assert "Cannot obtain a lock" not in log
    await runtime.delete(spec.id)
    assert await _gone(second, 0), "delete left litecoind running"
    assert _processes_of(runtime.root) == []
