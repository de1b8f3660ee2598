"""The Docker runtime: each node is one container with one data volume."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from nodevisor import (
    Capabilities,
    ExecResult,
    NodeSpec,
    Runtime,
    RuntimeContext,
    RuntimeFailure,
    RuntimeNode,
    StopOutcome,
)

from . import _describe, _labels, _ops
from ._engine import Engine
from ._exec import run_exec
from ._settings import DockerSettings

__all__ = ["DockerRuntime"]

_log = logging.getLogger(__name__)


class DockerRuntime(Runtime):
    """Runs each node as a container named ``nodevisor-<node id>``.

    Chain data lives in the volume ``nodevisor-data-<node id>``, mounted at
    the spec's ``data_path``; an upgrade recreates the container on the new
    image and keeps the volume. Settings come from ``[runtimes.docker]``:
    ``base_url``, ``timeout``, ``max_threads`` and ``pull``.
    """

    name = "docker"
    capabilities = Capabilities(snapshot=True, upgrade=True, exec=True)

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self.settings = DockerSettings.from_mapping(context.settings)
        self._engine = Engine(self.settings)
        self._host = context.host_id

    async def check(self) -> None:
        await self._engine.run("ping the Docker engine", _ops.ping)

    async def prepare(self, spec: NodeSpec) -> None:
        what = f"prepare image {spec.image!r} for node {spec.id}"
        pulled = await self._engine.run(
            what, _ops.ensure_image, spec, self.settings.pull
        )
        if pulled:
            _log.info("node %s: pulled image %s", spec.id, spec.image)

    async def create(self, spec: NodeSpec) -> None:
        spec = self._own(spec)
        created = await self._engine.run(_about("create", spec.id), _ops.create, spec)
        if created:
            _log.info("node %s: created container on %s", spec.id, spec.image)

    async def start(self, spec: NodeSpec) -> None:
        started = await self._engine.run(
            _about("start", spec.id), _ops.start, spec.id, self._host
        )
        if started:
            _log.info("node %s: started", spec.id)

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
        what = _about("recreate", new.id, f"on image {new.image!r}")
        await self._engine.run(what, _ops.upgrade, old, new)
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

    async def aclose(self) -> None:
        await self._engine.aclose()

    def _own(self, spec: NodeSpec) -> NodeSpec:
        # Labels carry the spec's host id: it must be the one this runtime serves.
        if spec.host_id != self._host:
            raise RuntimeFailure(
                f"the spec of node {spec.id} names host {spec.host_id!r}, but this "
                f"docker runtime serves host {self._host!r}"
            )
        return spec


def _about(verb: str, node_id: str, rest: str = "") -> str:
    tail = f" {rest}" if rest else ""
    return (
        f"{verb} container {_labels.container_name(node_id)}{tail} for node {node_id}"
    )
