"""Two nodes of a protocol with fixed ports cannot run on one host at once."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from nodevisor import NodeSpec, NodeState, RuntimeContext, RuntimeFailure
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


def _runtime(tmp_path: Path) -> tuple[str, BabelRuntime]:
    (tmp_path / "images" / "sleeper-1" / "bin").mkdir(parents=True)
    host_id = f"ports-{uuid.uuid4().hex[:8]}"
    runtime = BabelRuntime(
        RuntimeContext(
            host_id, tmp_path / "runtime", {"images": str(tmp_path / "images")}
        )
    )
    return host_id, runtime


async def test_a_second_node_of_a_protocol_with_fixed_ports_is_refused(
    tmp_path: Path,
) -> None:
    host_id, runtime = _runtime(tmp_path)
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


async def test_of_two_starts_at_once_one_runs_and_one_is_refused(
    tmp_path: Path,
) -> None:
    host_id, runtime = _runtime(tmp_path)
    nodes = [_spec(host_id, "chain"), _spec(host_id, "chain")]
    outcomes: dict[str, Exception | None] = {}

    async def start(spec: NodeSpec) -> None:
        try:
            await runtime.start(spec)
        except RuntimeFailure as exc:
            outcomes[spec.id] = exc
        else:
            outcomes[spec.id] = None

    try:
        for spec in nodes:
            await runtime.create(spec)
        async with anyio.create_task_group() as tasks:
            for spec in nodes:
                tasks.start_soon(start, spec)
        listed = await runtime.list_nodes()
        running = [n.id for n in listed if n.state is NodeState.RUNNING]
    finally:
        for spec in nodes:
            await runtime.stop(spec)
            await runtime.delete(spec.id)
        await runtime.aclose()

    refused = [node_id for node_id, error in outcomes.items() if error is not None]
    assert len(refused) == 1, outcomes
    assert "holds its ports 19443" in str(outcomes[refused[0]])
    assert running == [n.id for n in nodes if n.id not in refused]
