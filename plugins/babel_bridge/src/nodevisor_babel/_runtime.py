"""The ``babel`` runtime: each node runs as processes that a babel supervises.

No container engine: one babel per node on this host, started detached, so
that it and the node keep running when the agent stops. Per node, under
``<data_dir>/<host_id>/<node_id>/``:

- ``node.json``: name, image and release;
- ``babel.json``: the spec babel runs from (``BabelSpec``);
- ``data/``: the node's working directory, its chain data;
- ``logs/``: babel's log and the node's output, rotated;
- ``babel.pid``, ``node.pid``: the running babel's and node's process ids.

Its socket is ``<socket_dir>/<host_id>/<node_id>.sock``: Unix socket paths are short
(108 bytes), too short for a data directory of any depth.

A node's processes live no longer than its babel (see ``_procs``): what is
left of them once their babel is gone is killed when the runtime sees it,
in ``inspect``, ``list_nodes``, ``stop`` and ``delete``, so a node is never
stopped, nor deleted, while a process of it still holds its data and ports.
A babel that runs but does not answer is killed before a new one starts.

An image is ``system`` (programs from the host's ``PATH``, e.g. Debian's
``litecoind``) or a directory under the ``images`` setting whose ``bin/``
goes first on the node's ``PATH``. A runtime table in the catalogue may give
``command``, replacing the protocol's command on this runtime, where paths
are the host's (the node runs in its ``data/``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from nodevisor import (
    Capabilities,
    ExecResult,
    ImageUnavailable,
    NodeSpec,
    NodeState,
    Runtime,
    RuntimeContext,
    RuntimeFailure,
    RuntimeNode,
    StopOutcome,
)

from . import _procs
from ._bridge import BabelBridge, babel_call
from ._spec import BabelSpec
from .v1 import babel_pb2

__all__ = ["BabelRuntime"]

log = logging.getLogger(__name__)

SYSTEM_IMAGE = "system"
_READY_TIMEOUT = 20.0
#: Seconds babel gets to end after it answered Shutdown.
_SHUTDOWN_TIMEOUT = 5.0


def _default_socket_dir() -> Path:
    if os.getuid() == 0:
        return Path("/run/nodevisor-babel")
    return Path(f"/tmp/nodevisor-babel-{os.getuid()}")


class BabelRuntime(BabelBridge, Runtime):
    """Nodes as babel-supervised processes on this host."""

    name = "babel"
    capabilities = Capabilities(snapshot=False, upgrade=True, exec=True, protocol=True)

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        settings = context.settings
        self.images = Path(settings.get("images", context.data_dir / "images"))
        self.socket_dir = Path(settings.get("socket_dir", _default_socket_dir()))
        self.root = context.data_dir / context.host_id
        #: Held while a node of a protocol with fixed ports starts, by
        #: protocol: two starts at once would both find the ports free.
        self._starting: dict[str, anyio.Lock] = {}

    def babel_socket(self, node_id: str) -> Path:
        return self.socket_dir / self.context.host_id / f"{node_id}.sock"

    async def prepare(self, spec: NodeSpec) -> None:
        await anyio.to_thread.run_sync(self._path, spec)

    async def create(self, spec: NodeSpec) -> None:
        await anyio.to_thread.run_sync(self._create, spec)

    async def start(self, spec: NodeSpec) -> None:
        if await anyio.to_thread.run_sync(self._record, spec.id) is None:
            raise RuntimeFailure(f"node {spec.id} does not exist; create it first")
        if not spec.ports:
            await self._start(spec)
            return
        async with self._starting.setdefault(spec.protocol, anyio.Lock()):
            await self._refuse_port_clash(spec)
            await self._start(spec)

    async def _start(self, spec: NodeSpec) -> None:
        if not await self._answers(spec.id):
            await self._launch(spec.id)
        await self._call(spec.id, "Start", babel_pb2.StartRequest(), 30)
        log.info("node %s started by its babel", spec.id)

    async def stop(self, spec: NodeSpec) -> StopOutcome:
        if not await self._answers(spec.id):
            # A babel that lives but does not answer (frozen, say) cannot
            # stop its node: it is killed, and its node goes with it.
            babel = await anyio.to_thread.run_sync(
                self._kill_babel, spec.id, "it does not answer the stop"
            )
            killed = await anyio.to_thread.run_sync(self._end_orphans, spec.id)
            if babel:
                detail = f"its babel, process {babel}, did not answer; killed"
                if killed:
                    detail += f", and what outlived it: {killed}"
                return StopOutcome(clean=False, detail=detail, outlived_grace=False)
            if killed:
                return StopOutcome(
                    clean=False,
                    detail=f"outlived its babel; killed by SIGKILL: {killed}",
                    outlived_grace=False,
                )
            return StopOutcome(clean=True)
        answer = await self._call(
            spec.id, "Stop", babel_pb2.StopRequest(), spec.grace_period + 30
        )
        return StopOutcome(clean=answer.clean, detail=answer.detail)

    async def upgrade(self, old: NodeSpec, new: NodeSpec) -> None:
        if await anyio.to_thread.run_sync(self._record, new.id) is None:
            raise RuntimeFailure(f"node {new.id} does not exist; cannot upgrade it")
        await anyio.to_thread.run_sync(self._save, new)
        if await self._answers(new.id):
            await self._call(new.id, "Upgrade", babel_pb2.UpgradeRequest(), 60)
        log.info("node %s now runs image %r", new.id, new.image)

    async def exec(
        self,
        spec: NodeSpec,
        argv: Sequence[str],
        timeout: float,  # noqa: ASYNC109 (the process is killed at the limit)
    ) -> ExecResult:
        if not await self._answers(spec.id) or not await self._running(spec.id):
            raise RuntimeFailure(f"node {spec.id} is not running; cannot run {argv}")
        folder = self.root / spec.id
        babel = BabelSpec.read(folder / "babel.json")
        env = {**os.environ, **babel.environment}
        env["PATH"] = os.pathsep.join([*babel.path, env.get("PATH", "")])
        try:
            with anyio.fail_after(timeout):
                done = await anyio.run_process(
                    list(argv), cwd=babel.workdir, env=env, check=False
                )
        except (OSError, TimeoutError) as exc:
            raise RuntimeFailure(f"node {spec.id}: {argv} failed: {exc!r}") from exc
        return ExecResult(
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )

    async def delete(self, node_id: str) -> None:
        if not await anyio.Path(self.root / node_id).exists():
            return  # gone, or another host's
        shut_down = False
        if await self._answers(node_id):
            with contextlib.suppress(RuntimeFailure):  # killed below if it hangs
                await self._call(node_id, "Shutdown", babel_pb2.ShutdownRequest(), 300)
                shut_down = True
        await anyio.to_thread.run_sync(self._remove, node_id, shut_down)
        log.info("node %s deleted", node_id)

    async def inspect(self, node_id: str) -> RuntimeNode | None:
        record = await anyio.to_thread.run_sync(self._record, node_id)
        if record is None:
            return None
        running = await self._answers(node_id) and await self._running(node_id)
        if not running:  # stopped it is, then, with nothing left of it running
            await anyio.to_thread.run_sync(self._end_orphans, node_id)
        return RuntimeNode(
            id=node_id,
            name=record["name"],
            state=NodeState.RUNNING if running else NodeState.STOPPED,
            image=record["image"],
            url=record["url"],
        )

    async def _refuse_port_clash(self, spec: NodeSpec) -> None:
        # Processes on the host share its ports: a second node of a protocol
        # with fixed ports would fail to bind, and the first node would answer
        # the second one's protocol calls.
        for other in await self.list_nodes():
            same = other.url.partition("/")[0] == spec.protocol
            if other.id != spec.id and same and other.state is NodeState.RUNNING:
                raise RuntimeFailure(
                    f"cannot start node {spec.id}: node {other.id} of protocol "
                    f"{spec.protocol!r} runs on this host and holds its ports "
                    f"{', '.join(map(str, spec.ports))}; the babel runtime runs "
                    "one node of a protocol with fixed ports at a time"
                )

    async def list_nodes(self) -> list[RuntimeNode]:
        ids = await anyio.to_thread.run_sync(self._ids)
        found = [await self.inspect(node_id) for node_id in ids]
        return [node for node in found if node is not None]

    # talking to babel

    async def _call(
        self,
        node_id: str,
        method: str,
        request: Any,
        timeout: float,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> Any:
        return await babel_call(
            self.babel_socket(node_id),
            node_id,
            lambda stub: getattr(stub, method),
            request,
            timeout,
        )

    async def _answers(self, node_id: str) -> bool:
        if not await anyio.Path(self.babel_socket(node_id)).exists():
            return False
        try:
            await self._call(node_id, "Status", babel_pb2.StatusRequest(), 5)
        except RuntimeFailure:
            return False
        return True

    async def _running(self, node_id: str) -> bool:
        answer = await self._call(node_id, "Status", babel_pb2.StatusRequest(), 10)
        return answer.state == babel_pb2.PROCESS_STATE_RUNNING

    async def _launch(self, node_id: str) -> None:
        await anyio.to_thread.run_sync(self._spawn_babel, node_id)
        with anyio.move_on_after(_READY_TIMEOUT):
            while not await self._answers(node_id):  # noqa: ASYNC110 (a socket, polled)
                await anyio.sleep(0.1)
            return
        raise RuntimeFailure(
            f"babel of node {node_id} did not answer within {_READY_TIMEOUT:g}s; "
            f"see {self.root / node_id / 'logs' / 'babel.out'}"
        )

    # the blocking parts, run in worker threads

    def _path(self, spec: NodeSpec) -> list[str]:
        """The directories to put first on the node's PATH; checks the image."""
        if spec.image == SYSTEM_IMAGE:
            path: list[str] = []
        else:
            folder = self.images / spec.image
            if Path(spec.image).name != spec.image or not folder.is_dir():
                raise ImageUnavailable(
                    f"image {spec.image!r} of node {spec.id} is not a directory "
                    f"in {str(self.images)!r}"
                )
            path = [str(folder / "bin")]
        program = _command(spec)[0] if _command(spec) else None
        search = os.pathsep.join([*path, os.environ.get("PATH", "")])
        if program is None or shutil.which(program, path=search) is None:
            raise ImageUnavailable(
                f"image {spec.image!r} of node {spec.id} has no program "
                f"{program!r} to run"
            )
        return path

    def _create(self, spec: NodeSpec) -> None:
        folder = self.root / spec.id
        if (folder / "node.json").exists():
            return
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "logs").mkdir(exist_ok=True)
        self._save(spec)
        log.info("node %s created in %s", spec.id, folder)

    def _save(self, spec: NodeSpec) -> None:
        folder = self.root / spec.id
        BabelSpec(
            node_id=spec.id,
            protocol=spec.protocol,
            command=_command(spec),
            environment=dict(spec.environment),
            path=tuple(self._path(spec)),
            workdir=folder / "data",
            stop_signal=spec.stop_signal,
            grace_period=spec.grace_period,
            interface=spec.interface,
        ).write(folder / "babel.json")
        record = {"name": spec.name, "image": spec.image, "url": spec.url}
        partial = folder / "node.tmp"
        partial.write_text(json.dumps(record))
        partial.replace(folder / "node.json")

    def _spawn_babel(self, node_id: str) -> None:
        folder = self.root / node_id
        self._kill_babel(node_id, "it runs but does not answer")
        self.babel_socket(node_id).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "nodevisor_babel",
            "--spec", str(folder / "babel.json"),
            "--socket", str(self.babel_socket(node_id)),
            "--logs", str(folder / "logs"),
        ]  # fmt: skip
        with (folder / "logs" / "babel.out").open("ab") as output:
            babel = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the agent
            )
        (folder / "babel.pid").write_text(str(babel.pid))
        log.info("node %s: babel started as process %d", node_id, babel.pid)

    def _remove(self, node_id: str, shut_down: bool) -> None:
        folder = self.root / node_id
        # babel first: it takes its node's process with it, or would restart it
        babel = _procs.babel_alive(folder / "babel.pid", folder / "babel.json")
        if babel and not (shut_down and _procs.ended_within(babel, _SHUTDOWN_TIMEOUT)):
            self._kill_babel(node_id, "it did not shut down for the delete")
        self._end_orphans(node_id)
        socket = self.babel_socket(node_id)
        socket.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        # The host's socket folder goes with its last node.
        with contextlib.suppress(OSError):
            socket.parent.rmdir()

    def _kill_babel(self, node_id: str, why: str) -> int:
        """SIGKILL the node's babel, if it lives: its node goes with it.

        Returns the pid killed, or 0 if no babel of the node lived.
        """
        folder = self.root / node_id
        pid = _procs.babel_alive(folder / "babel.pid", folder / "babel.json")
        if not pid:
            return 0
        log.warning("node %s: killing its babel, process %d: %s", node_id, pid, why)
        try:
            _procs.kill_process(pid)
        except RuntimeFailure as exc:
            raise RuntimeFailure(f"node {node_id}: its babel: {exc}") from exc
        _procs.reap(pid)
        return pid

    def _end_orphans(self, node_id: str) -> str:
        """SIGKILL what lives of the node's processes if its babel is gone.

        Returns what was killed, or "" if nothing was. Raises RuntimeFailure
        if some of it outlives SIGKILL.
        """
        folder = self.root / node_id
        # node.pid before babel.pid: a babel started meanwhile writes its
        # babel.pid long before it starts a node and writes node.pid.
        pgid, members = _procs.node_group(folder / "node.pid", node_id, folder / "data")
        if not members or _procs.babel_alive(
            folder / "babel.pid", folder / "babel.json"
        ):
            return ""
        killed = _procs.describe(members)
        try:
            _procs.kill_group(pgid, members)
        except RuntimeFailure as exc:
            raise RuntimeFailure(f"node {node_id}: {exc}") from exc
        log.warning(
            "node %s: its processes outlived its babel; killed them: %s",
            node_id,
            killed,
        )
        return killed

    def _record(self, node_id: str) -> dict[str, str] | None:
        try:
            return json.loads((self.root / node_id / "node.json").read_text())
        except FileNotFoundError:
            return None

    def _ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [folder.name for folder in self.root.iterdir() if folder.is_dir()]


def _command(spec: NodeSpec) -> tuple[str, ...]:
    return tuple(spec.options.get("command", spec.command))
