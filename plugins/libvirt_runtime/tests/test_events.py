"""Lifecycle events arrive through libvirt's event loop, not by polling."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import libvirt
import pytest

from nodevisor import NodeSpec, NodeState, RuntimeContext
from nodevisor_libvirt import DomainEvent, EventKind, LibvirtRuntime

from .conftest import SYSTEM_URI, TEST_URI, new_host_id, remove_with_libvirt, sweep

pytestmark = pytest.mark.anyio


def _spec(host_id: str, kernel: Path, image: Path) -> NodeSpec:
    node_id = str(uuid.uuid4())
    return NodeSpec(
        id=node_id,
        name=f"events-{node_id[:8]}",
        host_id=host_id,
        protocol="busybox-guest",
        version="1",
        image=str(image),
        grace_period=10,
        options={"kernel": str(kernel), "memory_mib": 128, "data_disk_mib": 16},
    )


async def _next_stop(events, node_id: str) -> DomainEvent:
    with anyio.fail_after(20):
        async for event in events:
            if event.node_id == node_id and event.is_stop:
                return event
    raise AssertionError("the event stream ended")


async def test_virsh_destroy_is_reported_by_an_event(
    guest_images: Path, vm_dir: Path
) -> None:
    context = RuntimeContext(new_host_id(), vm_dir, {"uri": SYSTEM_URI})
    runtime = LibvirtRuntime(context)
    spec = _spec(
        context.host_id,
        guest_images / "vmlinuz",
        guest_images / "busybox-guest-1.cpio.gz",
    )
    try:
        await runtime.create(spec)
        await runtime.start(spec)
        events = runtime.events()
        # Events arrive on libvirt's own loop: the start's may trail start().
        before = await _last_event_of_kind(
            runtime, spec.id, (EventKind.STARTED, EventKind.RESUMED)
        )
        await _destroy_with_virsh(spec.id)
        event = await _next_stop(events, spec.id)
        await events.aclose()
        found = await runtime.inspect(spec.id)
    finally:
        await runtime.delete(spec.id)
        await runtime.aclose()

    assert before is not None
    assert before.kind in (EventKind.STARTED, EventKind.RESUMED)
    assert (event.kind, event.detail) == (EventKind.STOPPED, "destroyed")
    assert event.sequence > before.sequence
    assert runtime.last_event(spec.id) is not None
    assert found is not None
    assert (found.state, found.detail) == (NodeState.STOPPED, "destroyed")


async def _last_event_of_kind(runtime, node_id: str, kinds, seconds: float = 10.0):
    """The node's last event, once it is of one of ``kinds``."""
    with anyio.fail_after(seconds):
        while True:
            event = runtime.last_event(node_id)
            if event is not None and event.kind in kinds:
                return event
            await anyio.sleep(0.02)


async def _destroy_with_virsh(node_id: str) -> None:
    argv = ["virsh", "-q", "-c", SYSTEM_URI, "destroy", f"nodevisor-{node_id}"]
    await anyio.to_thread.run_sync(
        lambda: subprocess.run(argv, check=True, capture_output=True, timeout=60)
    )


async def test_a_dropped_connection_is_reopened_and_events_resume(
    tmp_path: Path, fake_images
) -> None:
    kernel, image, _ = fake_images
    context = RuntimeContext(
        new_host_id(), tmp_path, {"uri": TEST_URI, "reconnect_delay": 0.1}
    )
    runtime = LibvirtRuntime(context)
    spec = _spec(context.host_id, kernel, image)
    try:
        await runtime.create(spec)
        dropped = runtime._conn.connected()
        runtime._conn._on_close(dropped, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
        with anyio.fail_after(10):
            # The reopen runs in a libvirt thread, which cannot set an anyio Event.
            while runtime.connections_opened < 2:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        events = runtime.events()
        await runtime.start(spec)
        await anyio.to_thread.run_sync(remove_with_libvirt, TEST_URI, spec.id)
        event = await _next_stop(events, spec.id)
        await events.aclose()
    finally:
        await runtime.delete(spec.id)
        await runtime.aclose()
        sweep(TEST_URI, tmp_path)

    assert (event.kind, event.detail) == (EventKind.STOPPED, "destroyed")
