import itertools

import pytest

from blockjoy.api.v1 import node_pb2
from nodevisor import InvalidTransition
from nodevisor._states import TRANSITIONS, NodeStatus, check_transition

S = NodeStatus


def test_statuses_mirror_the_proto_enum():
    proto = node_pb2.NodeInfo.ContainerStatus
    assert {s.name: int(s) for s in NodeStatus} == dict(proto.items())


@pytest.mark.parametrize(
    "path",
    [
        [S.UndefinedContainerStatus, S.Installing, S.Creating, S.Stopped],
        [S.Stopped, S.Starting, S.Running],
        [S.Running, S.Stopping, S.Stopped],
        [S.Running, S.Upgrading, S.Upgraded, S.Running],
        [S.Stopped, S.Deleting, S.Deleted],
        [S.Stopped, S.Snapshotting, S.Starting],
    ],
)
def test_the_documented_flows_are_allowed(path):
    for current, target in itertools.pairwise(path):
        check_transition("n", current, target)


def test_every_other_transition_is_refused_naming_both_states():
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert len(allowed) == 14
    with pytest.raises(InvalidTransition, match="from Running to Deleting"):
        check_transition("n", S.Running, S.Deleting)
    for current in NodeStatus:
        for target in NodeStatus:
            if (current, target) not in allowed:
                with pytest.raises(InvalidTransition):
                    check_transition("n", current, target)
