"""A node's container status and the transitions the agent allows."""

from __future__ import annotations

import enum

from blockjoy.api.v1 import node_pb2

from ._errors import InvalidTransition

__all__ = ["TRANSITIONS", "NodeStatus", "check_transition"]

_Proto = node_pb2.NodeInfo.ContainerStatus


class NodeStatus(enum.IntEnum):
    """``NodeInfo.ContainerStatus``, with the proto's numbers and names."""

    UndefinedContainerStatus = _Proto.UndefinedContainerStatus
    Creating = _Proto.Creating
    Running = _Proto.Running
    Starting = _Proto.Starting
    Stopping = _Proto.Stopping
    Stopped = _Proto.Stopped
    Upgrading = _Proto.Upgrading
    Upgraded = _Proto.Upgraded
    Deleting = _Proto.Deleting
    Deleted = _Proto.Deleted
    Installing = _Proto.Installing
    Snapshotting = _Proto.Snapshotting

    @property
    def settled(self) -> bool:
        """True for a status a node rests in between commands."""
        return self in _SETTLED


_SETTLED = frozenset({NodeStatus.Running, NodeStatus.Stopped, NodeStatus.Deleted})

S = NodeStatus

#: The transitions a command may make; nothing else is reported.
TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    S.UndefinedContainerStatus: frozenset({S.Installing}),
    S.Installing: frozenset({S.Creating}),
    S.Creating: frozenset({S.Stopped}),
    S.Stopped: frozenset({S.Starting, S.Deleting, S.Snapshotting}),
    S.Starting: frozenset({S.Running}),
    S.Running: frozenset({S.Stopping, S.Upgrading}),
    S.Stopping: frozenset({S.Stopped}),
    S.Upgrading: frozenset({S.Upgraded}),
    S.Upgraded: frozenset({S.Running}),
    S.Deleting: frozenset({S.Deleted}),
    S.Snapshotting: frozenset({S.Starting}),
    S.Deleted: frozenset(),
}


def check_transition(node_id: str, current: NodeStatus, target: NodeStatus) -> None:
    """Raise ``InvalidTransition`` unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(
            f"node {node_id} cannot go from {current.name} to {target.name}"
        )
