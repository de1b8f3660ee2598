"""The reference runtime passes the conformance kit.

MemoryRuntime declares no exec capability, so the exec checks skip, saying
so; its harness reaches the nodes' "data", and removes and stops nodes out
of band, through the runtime's own test helpers instead. It has no engine to
be out of reach, so that check skips too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodevisor import NodeSpec, NodeState, Runtime
from nodevisor.conformance import ConformanceSuite, Harness
from nodevisor.testing import MemoryRuntime

IMAGES = ("testchain:1", "testchain:2")


class MemoryHarness(Harness):
    """Data and out-of-band removal through MemoryRuntime's helpers."""

    async def write_data(
        self, runtime: Runtime, spec: NodeSpec, name: str, content: str
    ) -> None:
        assert isinstance(runtime, MemoryRuntime)
        runtime.write_file(spec.id, name, content)

    async def read_data(
        self, runtime: Runtime, spec: NodeSpec, name: str
    ) -> str | None:
        assert isinstance(runtime, MemoryRuntime)
        return runtime.read_file(spec.id, name)

    async def remove_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        assert isinstance(runtime, MemoryRuntime)
        runtime.remove_out_of_band(spec.id)

    async def stop_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        assert isinstance(runtime, MemoryRuntime)
        runtime.set_state_out_of_band(spec.id, NodeState.STOPPED)


class TestMemoryRuntime(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return MemoryHarness(
            runtime_class=MemoryRuntime,
            data_dir=tmp_path / "runtime",
            settings={"known_images": IMAGES},
            images=IMAGES,
            node={"command": ["testchaind"], "grace_period": 0.3},
            stubborn_node={"options": {"ignore_stop": True}},
        )


@pytest.mark.anyio
async def test_a_node_file_killed_before_its_first_write_is_no_node(memory):
    """An agent killed between creating a node's file and writing it leaves
    the file empty: that node was never made, and the others still list."""
    memory._dir.mkdir(parents=True)
    (memory._dir / "node-torn.json").touch()
    assert await memory.inspect("torn") is None
    assert await memory.list_nodes() == []
