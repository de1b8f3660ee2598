"""The reference runtime's own behaviour, beyond the conformance kit."""

from __future__ import annotations

import os

import pytest

from nodevisor import NodeSpec, NodeState, RuntimeContext
from nodevisor.testing import MemoryRuntime

pytestmark = pytest.mark.anyio


async def test_a_listing_sees_a_rewrite_that_kept_the_files_size_and_time(tmp_path):
    """Two instances on one folder, as an agent and a test can be: a node
    rewritten by the other to the same size, and left with the same time
    (as within one clock tick), is still listed as it now is."""
    first = MemoryRuntime(RuntimeContext("host", tmp_path, {}))
    second = MemoryRuntime(RuntimeContext("host", tmp_path, {}))
    spec = NodeSpec(
        id="n1", name="n1", host_id="host", protocol="testchain", version="1",
        image="testchain:1",
    )  # fmt: skip
    await first.create(spec)
    [listed] = await first.list_nodes()
    path = next((tmp_path / "nodes").iterdir())
    before = path.stat()

    await second.start(spec)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert path.stat().st_size == before.st_size
    assert listed.state is NodeState.STOPPED
    [now] = await first.list_nodes()
    assert now.state is NodeState.RUNNING
