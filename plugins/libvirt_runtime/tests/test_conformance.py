"""The conformance kit, on libvirt's test driver and on real QEMU guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodevisor.conformance import ConformanceSuite, Harness
from nodevisor_libvirt import LibvirtRuntime

from .conftest import SYSTEM_URI, TEST_URI, LibvirtHarness, sweep

# A libvirtd socket that nothing listens on.
UNREACHABLE = {"uri": "qemu:///system?socket=/nonexistent/nodevisor/libvirt-sock"}


class TestOnTheTestDriver(ConformanceSuite):
    """Fast: domains live in libvirt's memory; nothing boots."""

    @pytest.fixture
    def harness(self, tmp_path: Path, fake_images) -> Harness:
        kernel, first, second = fake_images
        harness = LibvirtHarness(
            runtime_class=LibvirtRuntime,
            data_dir=tmp_path / "runtime",
            settings={"uri": TEST_URI, "data_disk_mib": 16},
            images=(str(first), str(second)),
            node={"grace_period": 5, "options": {"kernel": str(kernel)}},
            unreachable_settings=UNREACHABLE,
        )
        yield harness
        sweep(TEST_URI, tmp_path)


class TestOnQemu(ConformanceSuite):
    """For real: the busybox guest boots under plain QEMU emulation."""

    @pytest.fixture
    def harness(self, guest_images: Path, vm_dir: Path) -> Harness:
        options = {"kernel": str(guest_images / "vmlinuz"), "memory_mib": 128}
        stubborn = dict(options, cmdline="console=ttyS0 quiet nodevisor.stubborn")
        harness = LibvirtHarness(
            runtime_class=LibvirtRuntime,
            data_dir=vm_dir / "runtime",
            settings={"uri": SYSTEM_URI, "data_disk_mib": 64},
            images=(
                str(guest_images / "busybox-guest-1.cpio.gz"),
                str(guest_images / "busybox-guest-2.cpio.gz"),
            ),
            node={"grace_period": 30, "options": options},
            stubborn_node={"grace_period": 3, "options": stubborn},
            unreachable_settings=UNREACHABLE,
        )
        harness.uri = SYSTEM_URI
        return harness
