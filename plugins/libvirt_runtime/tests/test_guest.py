"""The test guest runs until it is told to stop, and stops when told."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from nodevisor import NodeState, RuntimeContext
from nodevisor_libvirt import EventKind, LibvirtRuntime

from .conftest import SYSTEM_URI, new_host_id
from .test_events import _spec

pytestmark = pytest.mark.anyio

#: Longer than the guest takes to boot and to look for its power button,
#: which is when an earlier guest powered itself off unasked.
QUIET = 15


async def test_a_started_guest_keeps_running_then_stops_cleanly(
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
        await anyio.sleep(QUIET)
        running = await runtime.inspect(spec.id)
        last = runtime.last_event(spec.id)
        outcome = await runtime.stop(spec)
    finally:
        await runtime.delete(spec.id)
        await runtime.aclose()

    assert running is not None and running.state is NodeState.RUNNING
    assert last is not None and last.kind in (EventKind.STARTED, EventKind.RESUMED)
    assert outcome.clean, outcome.detail
    assert outcome.detail == "shut down by the ACPI power button"
