"""How the Docker runtime names and labels what it owns.

Every container and volume carries the node id and the host id, so several
hosts can share one engine and each touches only its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodevisor import NodeSpec

__all__ = [
    "HOST_ID",
    "NAME",
    "NODE_ID",
    "URL",
    "container_name",
    "node_labels",
    "owned_by",
    "pending_name",
    "volume_name",
]

NODE_ID = "io.nodevisor.node-id"
HOST_ID = "io.nodevisor.host-id"
NAME = "io.nodevisor.name"
URL = "io.nodevisor.url"


def container_name(node_id: str) -> str:
    """The name of the container that runs the node."""
    return f"nodevisor-{node_id}"


def pending_name(node_id: str) -> str:
    """The name of a container being prepared by an upgrade."""
    return f"nodevisor-{node_id}-upgrade"


def volume_name(node_id: str) -> str:
    """The name of the volume that holds the node's chain data."""
    return f"nodevisor-data-{node_id}"


def node_labels(spec: NodeSpec) -> dict[str, str]:
    """The labels of the node's container."""
    return {
        NODE_ID: spec.id,
        HOST_ID: spec.host_id,
        NAME: spec.name,
        URL: spec.url,
    }


def owned_by(labels: Mapping[str, str] | None, host_id: str, node_id: str) -> bool:
    """Whether an object with ``labels`` belongs to this node on this host."""
    labels = labels or {}
    return labels.get(HOST_ID) == host_id and labels.get(NODE_ID) == node_id
