"""Which refusals to start a container mean the engine kept its old task.

Only those are answered by replacing the container; any other refusal (a
port taken, a missing image) is the node's failure and is reported as such.
The engine's own wording is reproduced here: the states that make it say so
follow a dockerd restart, which ``tests/test_fault_docker.py`` does for real.
"""

from __future__ import annotations

from types import SimpleNamespace

import docker.errors
import pytest

from nodevisor_docker._ops import _left_behind

CONTAINER = SimpleNamespace(id="93006120bce0c022b2c4428876746825cc2231c7638aaf236cc")


def refusal(explanation: str) -> docker.errors.APIError:
    return docker.errors.APIError("500 Server Error", explanation=explanation)


@pytest.mark.parametrize(
    "explanation",
    [
        "id already in use",
        f"failed to create task for container: mkdir /run/x/{CONTAINER.id}: "
        "file exists: unknown",
        f"task {CONTAINER.id} already exists",
    ],
)
def test_the_engine_still_holding_the_task_is_recognised(explanation):
    assert _left_behind(refusal(explanation), CONTAINER)


@pytest.mark.parametrize(
    "explanation",
    [
        "driver failed programming external connectivity: Bind for "
        "0.0.0.0:19443 failed: port is already allocated",
        "task 1f2e3d already exists",  # another container's
        "transport is closing: unavailable",
        "",
    ],
)
def test_other_refusals_are_not_taken_for_it(explanation):
    assert not _left_behind(refusal(explanation), CONTAINER)
