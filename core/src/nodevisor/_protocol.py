"""What running nodes say about their chains, and generic commands' parameters.

``ProtocolWatch`` keeps the latest ``ProtocolStatus`` of every running node
whose runtime can ask it (``Capabilities.protocol``), refreshes it every
``protocol_interval`` seconds and on ``NodeInfoGet``, and sends a
``NodeInfo`` when it changed. A node that does not answer is logged and its
fields are left unset; it never fails a command.

A ``NodeGenericCommand`` names its command in the parameter ``command`` (a
``StringValue``); every other parameter is an argument, packed as
``StringValue``, ``Int64Value``, ``DoubleValue`` or ``BoolValue``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from blockjoy.api.v1 import common_pb2, node_pb2

from ._errors import InvalidArgument, InvalidCommand, shown
from ._interface import Value
from ._nodes import NodeManager
from ._runtime import ProtocolStatus
from ._states import NodeStatus
from ._store import NodeRecord

__all__ = ["COMMAND_PARAMETER", "ProtocolWatch", "pack_generic", "unpack_generic"]

log = logging.getLogger(__name__)

#: The parameter of a ``NodeGenericCommand`` that names the command.
COMMAND_PARAMETER = "command"
_WRAPPERS = (
    wrappers_pb2.StringValue,
    wrappers_pb2.Int64Value,
    wrappers_pb2.DoubleValue,
    wrappers_pb2.BoolValue,
)


def pack_generic(name: str, params: dict[str, Value]) -> node_pb2.NodeGenericCommand:
    """A ``NodeGenericCommand`` for command ``name``: the inverse of
    ``unpack_generic``."""
    packed = []
    for key, value in {COMMAND_PARAMETER: name, **params}.items():
        box = any_pb2.Any()
        box.Pack(_wrapped(value))
        packed.append(common_pb2.Parameter(name=key, value=box))
    return node_pb2.NodeGenericCommand(params=packed)


def _wrapped(value: Value) -> Message:
    # bool first: it is an int to Python.
    if isinstance(value, bool):
        return wrappers_pb2.BoolValue(value=value)
    if isinstance(value, int):
        return wrappers_pb2.Int64Value(value=value)
    if isinstance(value, float):
        return wrappers_pb2.DoubleValue(value=value)
    return wrappers_pb2.StringValue(value=value)


def unpack_generic(
    node_id: str, msg: node_pb2.NodeGenericCommand
) -> tuple[str, dict[str, Value]]:
    """The command's name and its other parameters as plain values."""
    values: dict[str, Value] = {}
    for param in msg.params:
        if param.name in values:
            raise InvalidArgument(f"parameter {shown(param.name)} is given twice")
        values[param.name] = _unpack(param.name, param.value)
    name = values.pop(COMMAND_PARAMETER, None)
    if not isinstance(name, str) or not name:
        raise InvalidCommand(
            f"the generic command for node {node_id} names no command: give it "
            f"as the string parameter {COMMAND_PARAMETER!r}"
        )
    return name, values


def _unpack(name: str, value: object) -> Value:
    for wrapper in _WRAPPERS:
        if value.Is(wrapper.DESCRIPTOR):  # type: ignore[attr-defined]
            unpacked = wrapper()
            value.Unpack(unpacked)  # type: ignore[attr-defined]
            return unpacked.value
    kind = value.TypeName() or "nothing"  # type: ignore[attr-defined]
    raise InvalidArgument(
        f"parameter {shown(name)} holds a {kind[:80]}; pack it as a StringValue, "
        "Int64Value, DoubleValue or BoolValue"
    )


class ProtocolWatch:
    """The latest protocol status of each running node, kept fresh."""

    def __init__(
        self,
        nodes: NodeManager,
        report: Callable[[NodeRecord], None],
        *,
        interval: float,
        timeout: float = 15.0,
    ) -> None:
        self._nodes = nodes
        self._report = report
        self.interval = interval
        self.timeout = timeout
        self._latest: dict[str, ProtocolStatus] = {}

    def latest(self, node: NodeRecord) -> ProtocolStatus | None:
        """What the node last said; ``None`` unless it runs."""
        if node.status is not NodeStatus.Running:
            self._latest.pop(node.id, None)
            return None
        return self._latest.get(node.id)

    async def run(self) -> None:
        """Refresh every running node every ``interval`` seconds."""
        while True:
            await anyio.sleep(self.interval)
            await self.refresh_all()

    async def refresh_all(self) -> None:
        asking = {
            name
            for name, runtime in self._nodes.runtimes.items()
            if runtime.capabilities.protocol
        }
        if not asking:  # no runtime can tell: spare the read of every node
            return
        running = [
            node
            for node in await self._nodes.nodes()
            if node.status is NodeStatus.Running and node.runtime in asking
        ]
        async with anyio.create_task_group() as tasks:
            for node in running:
                tasks.start_soon(self.refresh, node)

    async def refresh(self, node: NodeRecord, *, report: bool = True) -> None:
        """Ask the node again; send its ``NodeInfo`` if anything changed."""
        status = await self._ask(node)
        previous = self._latest.get(node.id)
        if status is None:
            self._latest.pop(node.id, None)
        else:
            self._latest[node.id] = status
        if report and status != previous:
            log.debug("node %s: protocol status now %s", node.id, status)
            self._report(node)

    async def _ask(self, node: NodeRecord) -> ProtocolStatus | None:
        nodes = self._nodes
        runtime = nodes.runtimes.get(node.runtime)
        if node.status is not NodeStatus.Running or runtime is None:
            return None
        if not runtime.capabilities.protocol:
            return None
        try:
            with anyio.fail_after(self.timeout):
                return await runtime.protocol_status(nodes.spec(node))
        except Exception as exc:  # one node's silence must not stop the others
            log.warning(
                "node %s (%s): no protocol status from runtime %r: %r",
                node.id,
                node.name,
                runtime.name,
                exc,
            )
            return None
