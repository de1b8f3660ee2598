"""Steps and looks that many checks share."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from .._runtime import NodeSpec, NodeState, Runtime, RuntimeNode
from ._harness import Harness

__all__ = [
    "DATA_FILE",
    "failure",
    "found",
    "ids",
    "require_hook",
    "running",
    "skip_without",
    "state",
]

#: The file the data checks write into a node's chain data.
DATA_FILE = "conformance.txt"
_STATES = (NodeState.RUNNING, NodeState.STOPPED)


def skip_without(runtime: Runtime, capability: str) -> None:
    """Skip the check, saying why, if ``runtime`` lacks ``capability``."""
    if not getattr(runtime.capabilities, capability):
        pytest.skip(f"runtime {runtime.name!r} declares no {capability} capability")


def require_hook(harness: Harness, method: str) -> None:
    """Skip the check, before it makes any node, if the harness lacks ``method``."""
    if getattr(type(harness), method) is getattr(Harness, method):
        pytest.skip(
            f"the harness of runtime {harness.runtime_class.name!r} does not "
            f"override Harness.{method}"
        )


async def found(runtime: Runtime, node_id: str) -> RuntimeNode | None:
    """``inspect(node_id)``, checked for the form the contract gives it."""
    node = await runtime.inspect(node_id)
    if node is None:
        return None
    assert isinstance(node, RuntimeNode), (
        f"inspect({node_id!r}) of runtime {runtime.name!r} returned {node!r}; it "
        "returns a nodevisor.RuntimeNode, or None for a node that does not exist"
    )
    assert node.id == node_id, (
        f"inspect({node_id!r}) of runtime {runtime.name!r} returned node {node.id!r}"
    )
    assert node.state in _STATES, (
        f"inspect({node_id!r}) of runtime {runtime.name!r} returned state "
        f"{node.state!r}; a node is RUNNING or STOPPED, and one that does not "
        "exist is None, never NodeState.ABSENT"
    )
    return node


async def state(runtime: Runtime, node_id: str) -> NodeState:
    """The node's state as ``inspect`` shows it, ``ABSENT`` if it finds none."""
    node = await found(runtime, node_id)
    return NodeState.ABSENT if node is None else node.state


async def ids(runtime: Runtime) -> list[str]:
    """The ids ``list_nodes`` returns, checked for the form the contract gives."""
    nodes = await runtime.list_nodes()
    assert isinstance(nodes, list), (
        f"list_nodes() of runtime {runtime.name!r} returned {nodes!r}, not a list"
    )
    for node in nodes:
        assert isinstance(node, RuntimeNode) and node.state in _STATES, (
            f"list_nodes() of runtime {runtime.name!r} returned {node!r}; each "
            "node is a nodevisor.RuntimeNode that is RUNNING or STOPPED"
        )
    return [node.id for node in nodes]


async def running(runtime: Runtime, spec: NodeSpec) -> NodeSpec:
    """Prepare, create and start the node, as the agent would."""
    await runtime.prepare(spec)
    await runtime.create(spec)
    await runtime.start(spec)
    return spec


async def failure(call: Awaitable[object]) -> Exception | None:
    """What ``call`` raised, or ``None`` if it returned."""
    try:
        await call
    except Exception as exc:
        return exc
    return None
