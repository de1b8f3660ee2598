"""Fixtures for testing LibvirtRuntime on libvirt's test driver and on QEMU.

``test:///default`` keeps domains in memory, per process: the fast tests need
nothing installed. ``qemu:///system`` boots the tiny busybox guest that
``images/build-guest.sh`` builds; outside CI those tests skip when libvirtd
does not answer, and with ``CI=true`` or ``NODEVISOR_REQUIRE_LIBVIRT=1`` they
fail instead. Every domain and file a test makes is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import libvirt
import pytest

from nodevisor import NodeSpec, Runtime
from nodevisor.conformance import Harness
from nodevisor_libvirt import LibvirtRuntime

PLUGIN = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = PLUGIN / "images/build-guest.sh"
IMAGES = Path(
    os.environ.get("NODEVISOR_LIBVIRT_IMAGES", "/var/lib/nodevisor/images/libvirt")
)
TEST_URI = "test:///default"
SYSTEM_URI = "qemu:///system"
NS = "https://nodevisor.dev/xmlns/libvirt-node/1"
# The harness keeps its files as JSON at the start of the data disk.
RECORD_BYTES = 65536


def libvirt_required() -> bool:
    """In CI (or with NODEVISOR_REQUIRE_LIBVIRT=1) QEMU tests must not skip."""
    return (
        os.environ.get("NODEVISOR_REQUIRE_LIBVIRT") == "1"
        or os.environ.get("CI") == "true"
    )


@pytest.fixture(scope="session")
def system_libvirt() -> Iterator[str]:
    """The ``qemu:///system`` URI, once libvirtd answers there."""
    try:
        conn = libvirt.open(SYSTEM_URI)
        conn.close()
    except libvirt.libvirtError as exc:
        message = f"libvirtd does not answer at {SYSTEM_URI} ({exc}); run scripts/setup"
        if libvirt_required():
            pytest.fail(message)
        pytest.skip(message)
    yield SYSTEM_URI


@pytest.fixture(scope="session")
def guest_images(system_libvirt: str) -> Path:
    """Build the busybox guest, or fail saying why."""
    result = subprocess.run(
        [str(BUILD_SCRIPT), str(IMAGES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{BUILD_SCRIPT} failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return IMAGES


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    """A data directory the qemu user can reach, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="nodevisor-libvirt-test-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    sweep(SYSTEM_URI, folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fake_images(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Stand-ins for kernel and two initramfs: the test driver boots nothing."""
    files = (tmp_path / "vmlinuz", tmp_path / "guest-1.img", tmp_path / "guest-2.img")
    for file in files:
        file.write_bytes(b"not booted by the test driver")
    return files


def sweep(uri: str, data_dir: Path) -> None:
    """Destroy and undefine every domain whose data disk is under ``data_dir``."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        for domain in conn.listAllDomains():
            if str(data_dir) in _data_disk(domain):
                _remove(domain)
    finally:
        conn.close()


def _data_disk(domain: libvirt.virDomain) -> str:
    try:
        return domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
    except libvirt.libvirtError:
        return ""


def _remove(domain: libvirt.virDomain) -> None:
    if domain.isActive():
        domain.destroy()
    domain.undefine()


class LibvirtHarness(Harness):
    """Reaches into a node's data disk from the host.

    A VM has no exec: the harness keeps its files as a JSON object in the
    first 64 KiB of the data disk. It writes them with ``qemu-io`` while the
    node is stopped (stopping and starting it around the write) and reads
    them with ``qemu-img dd -U``, which may share the disk with a running
    guest. The guest's own chain record lives at 1 MiB, clear of them.
    """

    uri: str = TEST_URI

    async def write_data(
        self, runtime: Runtime, spec: NodeSpec, name: str, content: str
    ) -> None:
        files = await self.read_files(runtime, spec)
        files[name] = content
        await runtime.stop(spec)
        await anyio.to_thread.run_sync(_write_record, _disk(runtime, spec), files)
        await runtime.start(spec)

    async def read_data(
        self, runtime: Runtime, spec: NodeSpec, name: str
    ) -> str | None:
        return (await self.read_files(runtime, spec)).get(name)

    async def read_files(self, runtime: Runtime, spec: NodeSpec) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(_read_record, _disk(runtime, spec))

    async def remove_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        await anyio.to_thread.run_sync(remove_with_libvirt, self.uri, spec.id)

    async def stop_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        await anyio.to_thread.run_sync(destroy_with_libvirt, self.uri, spec.id)


def remove_with_libvirt(uri: str, node_id: str) -> None:
    """Destroy and undefine a node's domain as an operator would."""
    name = f"nodevisor-{node_id}"
    if uri == TEST_URI:
        # The test driver's state lives in this process: virsh would not see it.
        conn = libvirt.open(uri)
        _remove(conn.lookupByName(name))
        conn.close()
        return
    for verb in ("destroy", "undefine"):
        subprocess.run(["virsh", "-q", "-c", uri, verb, name], check=False, timeout=60)


def destroy_with_libvirt(uri: str, node_id: str) -> None:
    """Pull the plug on a node's running domain, as a crash of QEMU would."""
    name = f"nodevisor-{node_id}"
    if uri == TEST_URI:
        conn = libvirt.open(uri)
        conn.lookupByName(name).destroy()
        conn.close()
        return
    subprocess.run(["virsh", "-q", "-c", uri, "destroy", name], check=True, timeout=60)


def _disk(runtime: Runtime, spec: NodeSpec) -> Path:
    assert isinstance(runtime, LibvirtRuntime)
    return runtime.data_disk(spec.id)


def _read_record(disk: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "record"
        subprocess.run(
            [
                "qemu-img",
                "dd",
                "-U",
                "-f",
                "qcow2",
                "-O",
                "raw",
                f"if={disk}",
                f"of={out}",
                f"bs={RECORD_BYTES}",
                "count=1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        raw = out.read_bytes().split(b"\0", 1)[0]
    return json.loads(raw) if raw else {}


def _write_record(disk: Path, files: dict[str, Any]) -> None:
    data = json.dumps(files).encode()
    assert len(data) < RECORD_BYTES, "the harness record outgrew its area"
    with tempfile.NamedTemporaryFile() as source:
        source.write(data.ljust(RECORD_BYTES, b"\0"))
        source.flush()
        subprocess.run(
            [
                "qemu-io",
                "-f",
                "qcow2",
                "-c",
                f"write -s {source.name} 0 {RECORD_BYTES}",
                str(disk),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )


def new_host_id() -> str:
    return f"libvirt-test-{uuid.uuid4().hex[:10]}"
