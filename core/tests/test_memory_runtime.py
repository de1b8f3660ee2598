"""The reference runtime's own behaviour, beyond the conformance kit."""

from __future__ import annotations

import os
import re

import pytest

from nodevisor import ConfigError, NodeSpec, NodeState, RuntimeContext
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


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"delay": "x"}, "delay = 'x' is not valid: expected a table of operation"),
        ({"delay": {"start": -1}}, "delay = {'start': -1} is not valid"),
        ({"fail": "start"}, "fail = 'start' is not valid: expected a list"),
        ({"ignore_stop": "yes"}, "ignore_stop = 'yes' is not valid"),
        ({"dealy": {}}, "has unknown keys ['dealy']"),
    ],
)
def test_settings_it_cannot_use_are_a_config_error(tmp_path, settings, problem):
    with pytest.raises(ConfigError, match=re.escape(f"[runtimes.memory] {problem}")):
        MemoryRuntime(RuntimeContext("host", tmp_path, settings))
