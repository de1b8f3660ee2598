"""The reference in-memory runtime."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio

from .._errors import ConfigError, ImageUnavailable, RuntimeFailure
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
    """Nodes that exist only as small JSON files, one per node.

    Node ``<id>`` lives in ``<data_dir>/nodes/node-<id>.json``: an operation
    reads and rewrites that one file, so its cost does not grow with the
    number of nodes. A new instance on the same ``data_dir`` finds them all.
    Listing reads only the files that changed since the instance last read
    or wrote them: same size, inode and modification time, and that time
    was already well past when the file was read (a rewrite within the same
    clock tick keeps the time, so a file read that soon is read again).

    Settings (the ``[runtimes.memory]`` config table, or keyword arguments):

    - ``fail``: operation names (``prepare``, ``start``, ...) that raise
      ``RuntimeFailure``; ``prepare`` raises ``ImageUnavailable``.
    - ``delay``: seconds each named operation takes, e.g. ``{"start": 0.5}``;
      ``list_nodes`` is one too.
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
        _check_settings(settings)
        self.fail: set[str] = set(settings.get("fail", ()))
        self.delay: dict[str, float] = dict(settings.get("delay", {}))
        self.missing_images: set[str] = set(settings.get("missing_images", ()))
        known = settings.get("known_images")
        self.known_images: set[str] | None = None if known is None else set(known)
        self.ignore_stop: bool = bool(settings.get("ignore_stop", False))
        self.calls: Counter[str] = Counter()
        self._dir = context.data_dir / "nodes"
        #: What each node file held when last read, by path, with the
        #: ``_stamp`` of the file then; only files settled at that time.
        self._seen: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._paths: dict[str, str] = {}

    # persistence: a file per node, so that a new instance finds the old nodes

    def _path(self, node_id: str) -> str:
        # Quoted, so that no id can name a path outside the folder. Kept, as
        # every step of every command looks its node's file up.
        path = self._paths.get(node_id)
        if path is None:
            path = str(self._dir / f"node-{quote(node_id, safe='')}.json")
            self._paths[node_id] = path
        return path

    def _load(self, node_id: str) -> dict[str, Any] | None:
        try:
            return _read(self._path(node_id))
        except (FileNotFoundError, _Unwritten):
            return None

    def _dump(self, node_id: str, node: dict[str, Any]) -> None:
        # Rewritten in place: on ext4 replacing a file just written (a
        # temporary renamed over it, or truncated to nothing) waits for the
        # disk, about a millisecond. A process killed between the write and
        # the truncate leaves old bytes after the JSON, which _read ignores.
        data = json.dumps({**node, "id": node_id}).encode()
        try:
            fd = os.open(self._path(node_id), os.O_WRONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:
            self._dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path(node_id), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _remove(self, node_id: str) -> None:
        path = self._path(node_id)
        del self._paths[node_id]
        self._seen.pop(path, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _load_all(self) -> Iterator[dict[str, Any]]:
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            return
        seen: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        for entry in entries:
            if not (entry.name.startswith("node-") and entry.name.endswith(".json")):
                continue
            try:
                stamp = _stamp(entry.stat())
                known = self._seen.get(entry.path)
                if known is not None and known[0] == stamp:
                    node = known[1]
                else:
                    node = _read(entry.path)
            except (FileNotFoundError, _Unwritten):  # removed, or never made
                continue
            if time.time_ns() - stamp[0] > _SETTLED_NS:
                seen[entry.path] = (stamp, node)
            yield node
        self._seen = seen

    async def _delay(self, operation: str) -> None:
        # Without a delay, no sleep at all: even a sleep of 0 costs a few
        # microseconds a call, which the benchmark would count as the agent's.
        seconds = self.delay.get(operation, 0)
        if seconds:
            await anyio.sleep(seconds)

    async def _step(self, operation: str, node_id: str) -> dict[str, Any] | None:
        self.calls[operation] += 1
        await self._delay(operation)
        if operation in self.fail:
            raise RuntimeFailure(
                f"memory runtime told to fail {operation} (node {node_id})"
            )
        return self._load(node_id)

    def _owned(self, node: dict[str, Any] | None, node_id: str) -> dict[str, Any]:
        if node is None or node["host_id"] != self.context.host_id:
            raise RuntimeFailure(f"node {node_id} does not exist in the memory runtime")
        return node

    # the contract

    async def prepare(self, spec: NodeSpec) -> None:
        self.calls["prepare"] += 1
        await self._delay("prepare")
        if "prepare" in self.fail or not self._has_image(spec.image):
            raise ImageUnavailable(
                f"image {spec.image!r} for node {spec.id} is not available"
            )

    def _has_image(self, image: str) -> bool:
        if image in self.missing_images:
            return False
        return self.known_images is None or image in self.known_images

    async def create(self, spec: NodeSpec) -> None:
        if await self._step("create", spec.id) is not None:
            return
        node = {
            "name": spec.name,
            "host_id": spec.host_id,
            "image": spec.image,
            "url": spec.url,
            "state": NodeState.STOPPED.value,
            "files": {},
        }
        self._dump(spec.id, node)

    async def start(self, spec: NodeSpec) -> None:
        node = self._owned(await self._step("start", spec.id), spec.id)
        node["state"] = NodeState.RUNNING.value
        self._dump(spec.id, node)

    async def stop(self, spec: NodeSpec) -> StopOutcome:
        node = self._owned(await self._step("stop", spec.id), spec.id)
        if node["state"] == NodeState.STOPPED.value:
            return StopOutcome(clean=True)
        clean = True
        if self.ignore_stop or spec.options.get("ignore_stop"):
            await anyio.sleep(spec.grace_period)
            clean = False
        node["state"] = NodeState.STOPPED.value
        self._dump(spec.id, node)
        return StopOutcome(clean=clean, detail="" if clean else "killed by SIGKILL")

    async def upgrade(self, old: NodeSpec, new: NodeSpec) -> None:
        node = self._owned(await self._step("upgrade", new.id), new.id)
        node.update(image=new.image, url=new.url)
        self._dump(new.id, node)

    async def snapshot(self, spec: NodeSpec, destination: Path) -> Path:
        node = self._owned(await self._step("snapshot", spec.id), spec.id)
        files = node["files"]
        path = destination / f"{spec.id}.json"
        path.write_text(json.dumps(files))
        return path

    async def delete(self, node_id: str) -> None:
        node = await self._step("delete", node_id)
        # Another host's node with this id is not this runtime's to remove.
        if node is not None and node["host_id"] == self.context.host_id:
            self._remove(node_id)

    async def inspect(self, node_id: str) -> RuntimeNode | None:
        self.calls["inspect"] += 1
        node = self._load(node_id)
        if node is None or node["host_id"] != self.context.host_id:
            return None
        return _as_runtime_node(node_id, node)

    async def list_nodes(self) -> list[RuntimeNode]:
        self.calls["list_nodes"] += 1
        await self._delay("list_nodes")
        # Reading every file takes a while with many nodes: not on the loop.
        return await anyio.to_thread.run_sync(self._list_owned)

    def _list_owned(self) -> list[RuntimeNode]:
        return [
            _as_runtime_node(node["id"], node)
            for node in self._load_all()
            if node["host_id"] == self.context.host_id
        ]

    # test helpers: the "data" a node holds, and out-of-band changes

    def write_file(self, node_id: str, name: str, content: str) -> None:
        node = self._owned(self._load(node_id), node_id)
        node["files"][name] = content
        self._dump(node_id, node)

    def read_file(self, node_id: str, name: str) -> str | None:
        node = self._load(node_id)
        return None if node is None else node["files"].get(name)

    def remove_out_of_band(self, node_id: str) -> None:
        self._remove(node_id)

    def set_state_out_of_band(self, node_id: str, state: NodeState) -> None:
        node = self._owned(self._load(node_id), node_id)
        node["state"] = state.value
        self._dump(node_id, node)


_SETTINGS = {
    "fail": "a list of operation names",
    "delay": "a table of operation = seconds",
    "missing_images": "a list of image references",
    "known_images": "a list of image references",
    "ignore_stop": "true or false",
}


def _check_settings(settings: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` naming the first key of the table that is wrong."""
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConfigError(
            f"[runtimes.memory] has unknown keys {unknown}; known: {sorted(_SETTINGS)}"
        )
    for key, value in settings.items():
        if not _fits(key, value):
            raise ConfigError(
                f"[runtimes.memory] {key} = {value!r} is not valid: expected "
                f"{_SETTINGS[key]}"
            )


def _fits(key: str, value: object) -> bool:
    if key == "ignore_stop":
        return isinstance(value, bool)
    if key == "delay":
        return isinstance(value, Mapping) and all(
            isinstance(k, str)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and 0 <= v < math.inf
            for k, v in value.items()
        )
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


#: How long after its last change a file's time is sure to change again
#: with its next write: well over a clock tick of the file system.
_SETTLED_NS = 100_000_000


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class _Unwritten(Exception):
    """A node file created but never written: its node was never made."""


def _read(path: Path | str) -> dict[str, Any]:
    # os calls, not Path.read_text: listing a thousand nodes reads many files.
    fd = os.open(path, os.O_RDONLY)
    try:
        text = os.read(fd, os.fstat(fd).st_size + 1).decode()
    finally:
        os.close(fd)
    if not text:
        # A process killed between creating the file and writing it.
        raise _Unwritten(path)
    node, _ = json.JSONDecoder().raw_decode(text)
    return node


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
