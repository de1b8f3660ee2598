"""The reference in-memory runtime."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from .._errors import ImageUnavailable, RuntimeFailure
from .._hookspecs import hookimpl
from .._runtime import (
    Capabilities,
    NodeSpec,
    NodeState,
    Runtime,
    RuntimeContext,
    RuntimeNode,
    StopOutcome,
)

__all__ = ["MemoryRuntime", "nodevisor_runtimes"]


class MemoryRuntime(Runtime):
    """Nodes that exist only as entries in ``<data_dir>/nodes.json``.

    Settings (the ``[runtimes.memory]`` config table, or keyword arguments):

    - ``fail``: operation names (``prepare``, ``start``, ...) that raise
      ``RuntimeFailure``; ``prepare`` raises ``ImageUnavailable``.
    - ``delay``: seconds each named operation takes, e.g. ``{"start": 0.5}``.
    - ``missing_images``: image references that ``prepare`` cannot find.
    - ``known_images``: when given, the only image references ``prepare``
      finds.
    - ``ignore_stop``: when true, nodes "ignore" the stop signal and a stop
      waits the whole grace period, then reports an unclean stop. A node
      whose spec has ``options["ignore_stop"]`` true does so on its own.

    It has no ``exec``: its nodes run no processes a command could join.
    """

    name = "memory"
    capabilities = Capabilities(snapshot=True, upgrade=True, exec=False)

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        settings = context.settings
        self.fail: set[str] = set(settings.get("fail", ()))
        self.delay: dict[str, float] = dict(settings.get("delay", {}))
        self.missing_images: set[str] = set(settings.get("missing_images", ()))
        known = settings.get("known_images")
        self.known_images: set[str] | None = None if known is None else set(known)
        self.ignore_stop: bool = bool(settings.get("ignore_stop", False))
        self.calls: Counter[str] = Counter()
        self._file = context.data_dir / "nodes.json"

    # persistence: a JSON file so that a new instance finds the old nodes

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}

    def _dump(self, nodes: dict[str, dict[str, Any]]) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._file.with_suffix(".tmp")
        temporary.write_text(json.dumps(nodes))
        os.replace(temporary, self._file)

    async def _step(self, operation: str, node_id: str) -> dict[str, dict[str, Any]]:
        self.calls[operation] += 1
        await anyio.sleep(self.delay.get(operation, 0))
        if operation in self.fail:
            raise RuntimeFailure(
                f"memory runtime told to fail {operation} (node {node_id})"
            )
        return self._load()

    def _owned(self, nodes: dict[str, dict[str, Any]], node_id: str) -> dict[str, Any]:
        node = nodes.get(node_id)
        if node is None or node["host_id"] != self.context.host_id:
            raise RuntimeFailure(f"node {node_id} does not exist in the memory runtime")
        return node

    # the contract

    async def prepare(self, spec: NodeSpec) -> None:
        self.calls["prepare"] += 1
        await anyio.sleep(self.delay.get("prepare", 0))
        if "prepare" in self.fail or not self._has_image(spec.image):
            raise ImageUnavailable(
                f"image {spec.image!r} for node {spec.id} is not available"
            )

    def _has_image(self, image: str) -> bool:
        if image in self.missing_images:
            return False
        return self.known_images is None or image in self.known_images

    async def create(self, spec: NodeSpec) -> None:
        nodes = await self._step("create", spec.id)
        if spec.id in nodes:
            return
        nodes[spec.id] = {
            "name": spec.name,
            "host_id": spec.host_id,
            "image": spec.image,
            "url": spec.url,
            "state": NodeState.STOPPED.value,
            "files": {},
        }
        self._dump(nodes)

    async def start(self, spec: NodeSpec) -> None:
        nodes = await self._step("start", spec.id)
        self._owned(nodes, spec.id)["state"] = NodeState.RUNNING.value
        self._dump(nodes)

    async def stop(self, spec: NodeSpec) -> StopOutcome:
        nodes = await self._step("stop", spec.id)
        node = self._owned(nodes, spec.id)
        if node["state"] == NodeState.STOPPED.value:
            return StopOutcome(clean=True)
        clean = True
        if self.ignore_stop or spec.options.get("ignore_stop"):
            await anyio.sleep(spec.grace_period)
            clean = False
        node["state"] = NodeState.STOPPED.value
        self._dump(nodes)
        return StopOutcome(clean=clean, detail="" if clean else "killed by SIGKILL")

    async def upgrade(self, old: NodeSpec, new: NodeSpec) -> None:
        nodes = await self._step("upgrade", new.id)
        node = self._owned(nodes, new.id)
        node.update(image=new.image, url=new.url)
        self._dump(nodes)

    async def snapshot(self, spec: NodeSpec, destination: Path) -> Path:
        nodes = await self._step("snapshot", spec.id)
        files = self._owned(nodes, spec.id)["files"]
        path = destination / f"{spec.id}.json"
        path.write_text(json.dumps(files))
        return path

    async def delete(self, node_id: str) -> None:
        nodes = await self._step("delete", node_id)
        node = nodes.get(node_id)
        # Another host's node with this id is not this runtime's to remove.
        if node is not None and node["host_id"] == self.context.host_id:
            del nodes[node_id]
            self._dump(nodes)

    async def inspect(self, node_id: str) -> RuntimeNode | None:
        self.calls["inspect"] += 1
        node = self._load().get(node_id)
        if node is None or node["host_id"] != self.context.host_id:
            return None
        return _as_runtime_node(node_id, node)

    async def list_nodes(self) -> list[RuntimeNode]:
        self.calls["list_nodes"] += 1
        return [
            _as_runtime_node(node_id, node)
            for node_id, node in self._load().items()
            if node["host_id"] == self.context.host_id
        ]

    # test helpers: the "data" a node holds, and out-of-band changes

    def write_file(self, node_id: str, name: str, content: str) -> None:
        nodes = self._load()
        self._owned(nodes, node_id)["files"][name] = content
        self._dump(nodes)

    def read_file(self, node_id: str, name: str) -> str | None:
        node = self._load().get(node_id)
        return None if node is None else node["files"].get(name)

    def remove_out_of_band(self, node_id: str) -> None:
        nodes = self._load()
        nodes.pop(node_id, None)
        self._dump(nodes)

    def set_state_out_of_band(self, node_id: str, state: NodeState) -> None:
        nodes = self._load()
        self._owned(nodes, node_id)["state"] = state.value
        self._dump(nodes)


def _as_runtime_node(node_id: str, node: dict[str, Any]) -> RuntimeNode:
    return RuntimeNode(
        id=node_id,
        name=node["name"],
        state=NodeState(node["state"]),
        image=node["image"],
        url=node["url"],
    )


@hookimpl
def nodevisor_runtimes() -> list[type[Runtime]]:
    return [MemoryRuntime]
