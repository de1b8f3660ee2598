"""The Docker runtime: each node is one container with one data volume."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from nodevisor import (
    Capabilities,
    ExecResult,
    NodeSpec,
    NotSupported,
    ProtocolStatus,
    Runtime,
    RuntimeContext,
    RuntimeFailure,
    RuntimeNode,
    StopOutcome,
)
from nodevisor._interface import Value
from nodevisor_babel import BabelBridge
from nodevisor_babel._bridge import babel_call
from nodevisor_babel.v1 import babel_pb2

from . import _babel, _describe, _labels, _ops
from ._engine import Engine
from ._events import ContainerEvents
from ._exec import run_exec
from ._settings import DockerSettings

__all__ = ["DockerRuntime"]

_log = logging.getLogger(__name__)

#: Seconds babel may take to answer after its container started.
_BABEL_READY = 30.0


class DockerRuntime(BabelBridge, Runtime):
    """Runs each node as a container named ``nodevisor-<node id>``.

    Chain data lives in the volume ``nodevisor-data-<node id>``, mounted at
    the spec's ``data_path``; an upgrade recreates the container on the new
    image and keeps the volume. Settings come from ``[runtimes.docker]``:
    ``base_url``, ``timeout``, ``max_threads``, ``pull`` and ``babel_dir``.

    ``changes()`` follows the engine's container events, so the agent
    notices at once a node whose container died, was killed or removed.

    A catalogue entry with ``babel = true`` runs babel as the container's
    entrypoint (see ``_babel``); such nodes answer ``protocol_status`` and
    ``protocol_command`` through babel's socket. Other nodes report no
    protocol status and refuse generic commands.
    """

    name = "docker"
    capabilities = Capabilities(snapshot=True, upgrade=True, exec=True, protocol=True)

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self.settings = DockerSettings.from_mapping(context.settings)
        self._engine = Engine(self.settings)
        self._host = context.host_id
        self._events = ContainerEvents(self.settings, self._host)

    async def check(self) -> None:
        await self._engine.run("ping the Docker engine", _ops.ping)

    async def prepare(self, spec: NodeSpec) -> None:
        what = f"prepare image {spec.image!r} for node {spec.id}"
        pulled = await self._engine.run(
            what, _ops.ensure_image, spec, self.settings.pull
        )
        if pulled:
            _log.info("node %s: pulled image %s", spec.id, spec.image)

    def babel_socket(self, node_id: str) -> Path:
        return self._babel_folder(node_id) / _babel.SOCKET

    async def create(self, spec: NodeSpec) -> None:
        spec = self._own(spec)
        folder = await self._prepare_babel(spec)
        what = _about("create", spec.id)
        created = await self._engine.run(what, _ops.create, spec, folder)
        if created:
            _log.info("node %s: created container on %s", spec.id, spec.image)

    async def start(self, spec: NodeSpec) -> None:
        folder = await self._prepare_babel(self._own(spec))
        what = _about("start", spec.id)
        started = await self._engine.run(what, _ops.start, spec, folder)
        if started:
            _log.info("node %s: started", spec.id)
        if folder is not None:
            await self._start_babel(spec)

    async def protocol_status(self, spec: NodeSpec) -> ProtocolStatus:
        if not _babel.runs_babel(spec):
            return ProtocolStatus()
        return await super().protocol_status(spec)

    async def protocol_command(
        self, spec: NodeSpec, command: str, params: Mapping[str, Value]
    ) -> str:
        if not _babel.runs_babel(spec):
            raise NotSupported(
                f"node {spec.id} runs image {spec.image!r} without babel; "
                f"it cannot run generic command {command!r}"
            )
        return await super().protocol_command(spec, command, params)

    async def stop(self, spec: NodeSpec) -> StopOutcome:
        spec = self._own(spec)
        outcome = await self._engine.run(_about("stop", spec.id), _ops.stop, spec)
        if outcome is None:
            return StopOutcome(clean=True, detail="already stopped")
        log = _log.info if outcome.clean else _log.warning
        log("node %s: stopped (%s)", spec.id, outcome.detail)
        return outcome

    async def upgrade(self, old: NodeSpec, new: NodeSpec) -> None:
        old, new = self._own(old), self._own(new)
        folder = await self._prepare_babel(new)
        what = _about("recreate", new.id, f"on image {new.image!r}")
        await self._engine.run(what, _ops.upgrade, old, new, folder)
        _log.info("node %s: upgraded from %s to %s", new.id, old.image, new.image)

    async def snapshot(self, spec: NodeSpec, destination: Path) -> Path:
        spec = self._own(spec)
        what = _about("archive", spec.id, f"data path {spec.data_path!r}")
        path = await self._engine.run(what, _ops.snapshot, spec, destination)
        _log.info("node %s: snapshot written to %s", spec.id, path)
        return path

    async def exec(
        self,
        spec: NodeSpec,
        argv: Sequence[str],
        timeout: float,  # noqa: ASYNC109
    ) -> ExecResult:
        spec = self._own(spec)
        if not argv:
            raise RuntimeFailure(f"cannot run an empty command in node {spec.id}")
        result = await run_exec(self._engine, spec, argv, timeout)
        _log.debug("node %s: %r exited with %s", spec.id, argv, result.exit_code)
        return result

    async def delete(self, node_id: str) -> None:
        what = _about("remove", node_id, "and its volume")
        deleted = await self._engine.run(what, _ops.delete, node_id, self._host)
        folder = self._babel_folder(node_id)
        await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
        if deleted:
            _log.info("node %s: deleted container and volume", node_id)

    async def inspect(self, node_id: str) -> RuntimeNode | None:
        what = _about("inspect", node_id)
        container = await self._engine.run(what, _ops.find, node_id, self._host)
        return None if container is None else _describe.describe(container)

    async def list_nodes(self) -> list[RuntimeNode]:
        what = f"list the containers of host {self._host}"
        found = await self._engine.run(what, _ops.owned_containers, self._host)
        return [_describe.describe(container) for container in found]

    def changes(self) -> AsyncIterator[str]:
        """The id of each node whose container died, started or was removed.

        Events come from the moment of this call; the feed outlives engine
        restarts and ends when the iterator or the runtime is closed.
        """
        return self._events.follow()

    async def aclose(self) -> None:
        await self._events.aclose()
        await self._engine.aclose()

    def _babel_folder(self, node_id: str) -> Path:
        return self.settings.babel_root / self._host / node_id

    async def _prepare_babel(self, spec: NodeSpec) -> Path | None:
        """Write the node's babel folder if it runs babel; return the folder."""
        if not _babel.runs_babel(spec):
            return None
        folder = self._babel_folder(spec.id)
        what = f"write the babel folder {str(folder)!r} of node {spec.id}"
        await self._engine.run(what, _ops.prepare_babel, spec, folder)
        return folder

    async def _start_babel(self, spec: NodeSpec) -> None:
        """Have the container's babel start the node, once it answers."""
        socket = self.babel_socket(spec.id)
        request = babel_pb2.StartRequest()
        with anyio.move_on_after(_BABEL_READY):
            while True:
                try:
                    await babel_call(socket, spec.id, _start, request, 30)
                except RuntimeFailure:  # not listening yet
                    await anyio.sleep(0.2)
                    continue
                _log.info("node %s: started by the babel in its container", spec.id)
                return
        raise RuntimeFailure(
            f"babel in container {_labels.container_name(spec.id)} of node "
            f"{spec.id} did not answer on {str(socket)!r} within "
            f"{_BABEL_READY:g}s; see {str(socket.parent / 'logs')!r} and docker logs"
        )

    def _own(self, spec: NodeSpec) -> NodeSpec:
        # Labels carry the spec's host id: it must be the one this runtime serves.
        if spec.host_id != self._host:
            raise RuntimeFailure(
                f"the spec of node {spec.id} names host {spec.host_id!r}, but this "
                f"docker runtime serves host {self._host!r}"
            )
        return spec


def _start(stub: object) -> object:
    return stub.Start  # type: ignore[attr-defined]


def _about(verb: str, node_id: str, rest: str = "") -> str:
    tail = f" {rest}" if rest else ""
    return (
        f"{verb} container {_labels.container_name(node_id)}{tail} for node {node_id}"
    )
