"""Two nodes of a protocol with fixed ports cannot run on one host at once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from nodevisor import NodeSpec, RuntimeContext, RuntimeFailure
from nodevisor_babel import BabelRuntime

pytestmark = pytest.mark.anyio


def _spec(host_id: str, protocol: str) -> NodeSpec:
    node_id = str(uuid.uuid4())
    return NodeSpec(
        id=node_id,
        name=f"n-{node_id[:8]}",
        host_id=host_id,
        protocol=protocol,
        version="1",
        image="sleeper-1",
        command=("sleep", "600"),
        ports=(19443,),
        data_path=".",
        grace_period=5,
    )


async def test_a_second_node_of_a_protocol_with_fixed_ports_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "images" / "sleeper-1" / "bin").mkdir(parents=True)
    host_id = f"ports-{uuid.uuid4().hex[:8]}"
    runtime = BabelRuntime(
        RuntimeContext(
            host_id, tmp_path / "runtime", {"images": str(tmp_path / "images")}
        )
    )
    first, second, other = (
        _spec(host_id, "chain"),
        _spec(host_id, "chain"),
        _spec(host_id, "other"),
    )
    try:
        for spec in (first, second, other):
            await runtime.create(spec)
        await runtime.start(first)
        with pytest.raises(
            RuntimeFailure, match=f"node {first.id} of protocol 'chain'"
        ):
            await runtime.start(second)
        await runtime.start(other)  # another protocol: no clash
        await runtime.stop(first)
        await runtime.start(second)  # the ports are free again
    finally:
        for spec in (first, second, other):
            await runtime.stop(spec)
            await runtime.delete(spec.id)
        await runtime.aclose()
