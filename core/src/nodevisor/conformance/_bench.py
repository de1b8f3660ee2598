"""One check's workbench: runtimes, the agent's state machine, its nodes.

The bench writes a catalogue from the harness, builds runtimes and a real
``NodeManager`` around them, hands out node ids, and deletes every node it
handed out when the check ends, pass or fail.

Every contract method of a runtime the bench builds, and every hook of the
harness it calls, has a deadline (see ``_bound``): a call that overruns it
fails the check, naming the method and the node, instead of hanging it.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from blockjoy.api.v1 import common_pb2, node_pb2

from .._catalogue import Catalogue
from .._nodes import NodeManager
from .._runtime import NodeSpec, Runtime, RuntimeContext
from .._store import NodeRecord, Store, StoreRunner
from ._bound import bounded
from ._harness import Harness
from ._toml import toml_value

__all__ = ["PROTOCOL", "Bench", "create_message", "node_name", "upgrade_message"]

log = logging.getLogger(__name__)

PROTOCOL = "conformance"
VERSIONS = ("1", "2")
#: The methods of ``Runtime`` that the bench gives a deadline.
BOUNDED = (
    "check",
    "prepare",
    "create",
    "start",
    "stop",
    "upgrade",
    "snapshot",
    "exec",
    "protocol_status",
    "protocol_command",
    "delete",
    "inspect",
    "list_nodes",
    "aclose",
)

T = TypeVar("T")


class Bench:
    """The runtimes, nodes and agent state machine of one conformance check."""

    def __init__(self, harness: Harness, root: Path) -> None:
        self.harness = harness
        self.root = root
        self.host_id = _new_host_id()
        self._runtimes: list[Runtime] = []
        self._closed: set[int] = set()
        self.runtime = self.open_runtime()
        self.catalogue = Catalogue.load([_write_catalogue(harness, root, self.name)])
        self.reports: list[NodeRecord] = []
        self.snapshot_dir = root / "snapshots"
        self._store: Store | None = None
        self._manager: NodeManager | None = None
        self._node_ids: list[str] = []

    @property
    def name(self) -> str:
        """The runtime's name, as the catalogue and messages use it."""
        return self.harness.runtime_class.name

    def open_runtime(
        self, host_id: str | None = None, settings: Mapping[str, Any] | None = None
    ) -> Runtime:
        """A runtime instance for ``host_id`` (the bench's own by default).

        ``settings`` replace the harness's settings.
        """
        context = RuntimeContext(
            host_id=host_id or self.host_id,
            data_dir=self.harness.data_dir,
            settings=self.harness.settings if settings is None else settings,
        )
        runtime = self.harness.runtime_class(context)
        for method in BOUNDED:
            setattr(runtime, method, self._bound(runtime, method))
        self._runtimes.append(runtime)
        return runtime

    def _bound(self, runtime: Runtime, method: str) -> Callable[..., Any]:
        call = getattr(runtime, method)
        about = f"{method}() of runtime {runtime.name!r}"

        @functools.wraps(call)
        async def bounded_call(*args: Any, **kwargs: Any) -> Any:
            if method == "aclose":
                self._closed.add(id(runtime))
            seconds, why = self._limit(method, args)
            what = f"{about}{_on(args, runtime)}"
            return await bounded(call(*args, **kwargs), seconds, what, why)

        return bounded_call

    def _limit(self, method: str, args: tuple[Any, ...]) -> tuple[float, str]:
        """How long a call may take, and why, for the failure message."""
        margin = self.harness.margin
        if method == "stop" and args:
            grace = args[0].grace_period
            why = (
                f"the node's grace period of {grace:g}s plus Harness.margin of "
                f"{margin:g}s: a stop kills the node once its grace period is over"
            )
            return grace + margin, why
        if method == "exec" and len(args) >= 3:
            why = (
                f"its timeout of {args[2]:g}s plus Harness.margin of {margin:g}s: "
                "an exec gives up on the command at its timeout"
            )
            return args[2] + margin, why
        return self.harness.timeout, f"Harness.timeout is {self.harness.timeout:g}s"

    async def write_data(
        self, runtime: Runtime, spec: NodeSpec, name: str, content: str
    ) -> None:
        """``Harness.write_data``, with the kit's deadline."""
        call = self.harness.write_data(runtime, spec, name, content)
        await self._hook("write_data", spec, call)

    async def read_data(
        self, runtime: Runtime, spec: NodeSpec, name: str
    ) -> str | None:
        """``Harness.read_data``, with the kit's deadline."""
        call = self.harness.read_data(runtime, spec, name)
        return await self._hook("read_data", spec, call)

    async def remove_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        """``Harness.remove_out_of_band``, with the kit's deadline."""
        call = self.harness.remove_out_of_band(runtime, spec)
        await self._hook("remove_out_of_band", spec, call)

    async def stop_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        """``Harness.stop_out_of_band``, with the kit's deadline."""
        call = self.harness.stop_out_of_band(runtime, spec)
        await self._hook("stop_out_of_band", spec, call)

    async def _hook(self, method: str, spec: NodeSpec, call: Awaitable[T]) -> T:
        what = f"Harness.{method} for node {spec.id}"
        why = f"Harness.timeout is {self.harness.timeout:g}s"
        return await bounded(call, self.harness.timeout, what, why)

    def closed(self, runtime: Runtime) -> bool:
        """Whether ``runtime.aclose()`` was called."""
        return id(runtime) in self._closed

    def new_host_id(self) -> str:
        """Another unique host id, for a second host sharing the engine."""
        return _new_host_id()

    def new_id(self) -> str:
        """A node id that the bench deletes when the check ends."""
        self._node_ids.append(str(uuid.uuid4()))
        return self._node_ids[-1]

    def spec(
        self, version: str = "1", node_id: str | None = None, **changes: Any
    ) -> NodeSpec:
        """The spec of a node (a new one unless ``node_id``) at ``version``."""
        release = self.catalogue.resolve(f"{PROTOCOL}/{version}", self.name)
        node_id = node_id or self.new_id()
        spec = release.node_spec(
            node_id=node_id, name=node_name(node_id), host_id=self.host_id
        )
        return replace(spec, **_as_spec_fields(changes))

    @property
    def manager(self) -> NodeManager:
        """The agent's state machine, driving ``runtime``."""
        if self._manager is None:
            self._store = Store(self.root / "state.db")
            self._manager = NodeManager(
                db=StoreRunner(self._store),
                catalogue=self.catalogue,
                runtimes={self.name: self.runtime},
                unavailable={},
                default_runtime=self.name,
                host_id=self.host_id,
                snapshot_dir=self.snapshot_dir,
                report=self.reports.append,
            )
        return self._manager

    def statuses(self, node_id: str) -> list[str]:
        """The statuses the manager reported for ``node_id``, in order."""
        return [r.status.name for r in self.reports if r.id == node_id]

    async def aclose(self) -> None:
        """Delete every node handed out, close the runtimes and the store."""
        with anyio.CancelScope(shield=True):
            open_ = [r for r in self._runtimes if not self.closed(r)]
            for runtime in open_:
                await _delete_all(runtime, self._node_ids)
            for runtime in open_:
                await _close(runtime)
            if self._store is not None:
                await anyio.to_thread.run_sync(self._store.close)


def create_message(name: str, version: str = "1") -> node_pb2.NodeCreate:
    """The control plane's create command for a conformance node."""
    url = f"{PROTOCOL}/{version}"
    return node_pb2.NodeCreate(name=name, image=common_pb2.ContainerImage(url=url))


def upgrade_message(version: str = "2") -> node_pb2.NodeUpgrade:
    """The control plane's upgrade command to ``version``."""
    url = f"{PROTOCOL}/{version}"
    return node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url=url))


def node_name(node_id: str) -> str:
    """The name the kit gives a node."""
    return f"conformance-{node_id[:8]}"


def _on(args: tuple[Any, ...], runtime: Runtime) -> str:
    """Which node a call is about, from its first argument: spec or id."""
    if not args:
        return f" for host {runtime.context.host_id}"
    node_id = getattr(args[0], "id", args[0])
    return f" on node {node_id}"


def _new_host_id() -> str:
    return f"conformance-{uuid.uuid4().hex[:12]}"


def _as_spec_fields(changes: dict[str, Any]) -> dict[str, Any]:
    tuples = {"command", "ports"}
    return {k: tuple(v) if k in tuples else v for k, v in changes.items()}


async def _delete_all(runtime: Runtime, node_ids: list[str]) -> None:
    for node_id in node_ids:
        try:
            await runtime.delete(node_id)
        except Exception as exc:  # cleanup carries on with the other nodes
            log.warning(
                "conformance cleanup: %r could not delete node %s: %r",
                runtime,
                node_id,
                exc,
            )


async def _close(runtime: Runtime) -> None:
    try:
        await runtime.aclose()
    except Exception as exc:  # cleanup carries on with the other runtimes
        log.warning("conformance cleanup: %r could not close: %r", runtime, exc)


def _write_catalogue(harness: Harness, root: Path, runtime_name: str) -> Path:
    folder = root / "catalogue"
    folder.mkdir(parents=True, exist_ok=True)
    node = dict(harness.node)
    options = dict(node.pop("options", {}))
    lines = [f"protocol = {toml_value(PROTOCOL)}", "[node]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in node.items()]
    for version, image in zip(VERSIONS, harness.images, strict=True):
        lines.append(f'[versions."{version}".runtimes.{toml_value(runtime_name)}]')
        lines.append(f"image = {toml_value(image)}")
        lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in options.items()]
    (folder / f"{PROTOCOL}.toml").write_text("\n".join(lines) + "\n")
    return folder
