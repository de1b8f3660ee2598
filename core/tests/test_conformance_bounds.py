"""The conformance kit's deadlines: a runtime that hangs fails the check
that called it, with a message naming the call, instead of stalling the run."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from nodevisor import NodeSpec, StopOutcome
from nodevisor.conformance import Harness
from nodevisor.conformance._bench import Bench
from nodevisor.conformance._bound import Overran
from nodevisor.conformance._common import running
from nodevisor.testing import MemoryRuntime

pytestmark = pytest.mark.anyio
IMAGES = ("testchain:1", "testchain:2")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the kit runs on asyncio, as the agent does


class StuckInAThread(MemoryRuntime):
    """Its stop blocks a worker thread for 3 s, past any cancellation."""

    async def stop(self, spec: NodeSpec) -> StopOutcome | None:
        await anyio.to_thread.run_sync(time.sleep, 3.0)
        return await super().stop(spec)


def harness(tmp_path: Path, runtime_class=MemoryRuntime, **fields) -> Harness:
    return Harness(
        runtime_class=runtime_class,
        data_dir=tmp_path / "runtime",
        settings=fields.pop("settings", {"known_images": IMAGES}),
        images=IMAGES,
        node={"command": ["testchaind"], "grace_period": 0.2},
        **fields,
    )


async def test_a_call_past_the_timeout_fails_naming_it(tmp_path):
    settings = {"known_images": IMAGES, "delay": {"start": 30}}
    bench = Bench(harness(tmp_path, settings=settings, timeout=0.3), tmp_path)
    spec = bench.spec()
    began = time.monotonic()
    try:
        with pytest.raises(Overran) as raised:
            await running(bench.runtime, spec)
    finally:
        await bench.aclose()
    assert time.monotonic() - began < 5
    message = str(raised.value)
    assert f"start() of runtime 'memory' on node {spec.id}" in message
    assert "did not return within 0.3s (Harness.timeout is 0.3s)" in message


async def test_a_stop_gets_its_grace_period_and_the_margin(tmp_path):
    """A stop blocked in a worker thread is given up on at grace + margin,
    although a cancel scope could not interrupt the thread."""
    kit = harness(tmp_path, runtime_class=StuckInAThread, margin=0.3)
    bench = Bench(kit, tmp_path)
    spec = await running(bench.runtime, bench.spec())
    began = time.monotonic()
    try:
        with pytest.raises(Overran) as raised:
            await bench.runtime.stop(spec)
        elapsed = time.monotonic() - began
    finally:
        await bench.aclose()
    assert 0.4 < elapsed < 2.5, f"the kit waited {elapsed:.2f}s"
    assert "grace period of 0.2s plus Harness.margin of 0.3s" in str(raised.value)


async def test_a_harness_hook_has_the_deadline_too(tmp_path):
    class SlowHarness(Harness):
        async def remove_out_of_band(self, runtime, spec) -> None:
            await anyio.sleep(30)

    kit = SlowHarness(
        runtime_class=MemoryRuntime,
        data_dir=tmp_path / "runtime",
        settings={"known_images": IMAGES},
        images=IMAGES,
        node={"command": ["testchaind"]},
        timeout=0.2,
    )
    bench = Bench(kit, tmp_path)
    spec = bench.spec()
    try:
        with pytest.raises(
            Overran, match=f"Harness.remove_out_of_band for node {spec.id}"
        ):
            await bench.remove_out_of_band(bench.runtime, spec)
    finally:
        await bench.aclose()


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "5", True])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=r"Harness\.timeout must be a positive number"):
        harness(tmp_path, timeout=value)
