"""The libvirt runtime: each node is one persistent domain with a data disk."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import libvirt

from nodevisor import (
    Capabilities,
    ImageUnavailable,
    NodeSpec,
    NodeState,
    Runtime,
    RuntimeContext,
    RuntimeFailure,
    RuntimeNode,
    StopOutcome,
)

from . import _disks, _domain, _ops
from ._connection import Connection
from ._events import DomainEvent, EventHub
from ._settings import LibvirtSettings

__all__ = ["LibvirtRuntime"]

_log = logging.getLogger(__name__)
_DEFAULT_CMDLINE = "console=ttyS0 quiet panic=-1"

T = TypeVar("T")


class LibvirtRuntime(Runtime):
    """Runs each node as a libvirt domain named ``nodevisor-<node id>``.

    The catalogue entry's ``image`` is the guest's initramfs and its
    ``kernel`` option the kernel it boots directly; ``memory_mib``, ``vcpus``
    and ``cmdline`` are optional. Chain data lives in
    ``<data_dir>/nodes/<node id>/data.qcow2``, the guest's ``/dev/vda``; an
    upgrade redefines the domain on the new image and keeps the disk.

    Lifecycle events arrive through libvirt's event loop: ``events()``
    yields each one, and ``last_event(node_id)`` returns a node's latest.
    """

    name = "libvirt"
    capabilities = Capabilities(snapshot=True, upgrade=True, exec=False)

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self.settings = LibvirtSettings.from_mapping(context.settings)
        self._host = context.host_id
        self._hub = EventHub()
        self._conn = Connection(
            self.settings.uri,
            self._host,
            self._hub,
            self.settings.max_threads,
            self.settings.reconnect_delay,
        )

    # events

    def events(self) -> AsyncIterator[DomainEvent]:
        """Every lifecycle event of this host's domains from now on.

        Iterate it on the agent's (asyncio) event loop; close it to stop.
        The connection is opened if it is not yet, so events flow at once.
        """
        return self._hub.subscribe()

    def changes(self) -> AsyncIterator[str]:
        """The node id of every lifecycle event, for the agent to check."""
        return _node_ids(self.events())

    def last_event(self, node_id: str) -> DomainEvent | None:
        """The most recent lifecycle event of the node's domain, if any."""
        return self._hub.last(node_id)

    def data_disk(self, node_id: str) -> Path:
        """Where the node's data disk is (or will be) on this host."""
        return _disks.node_dir(self.context.data_dir, node_id) / "data.qcow2"

    @property
    def connections_opened(self) -> int:
        """How often the connection to libvirtd was opened (1 + reopens)."""
        return self._conn.opened

    # the contract

    async def check(self) -> None:
        await self._run(f"connect to libvirt at {self.settings.uri}", _version)

    async def prepare(self, spec: NodeSpec) -> None:
        await self._blocking(_check_files, spec)

    async def create(self, spec: NodeSpec) -> None:
        spec = self._own(spec)
        about = _about("define", spec.id)
        if await self._run(about, _ops.find, spec.id, self._host) is not None:
            return
        disk = self.data_disk(spec.id)
        await self._blocking(
            _disks.create_data_disk, disk, self._disk_size(spec), spec.id
        )
        await self._run(about, self._define, spec, str(disk))
        _log.info("node %s: defined domain on %s", spec.id, spec.image)

    async def start(self, spec: NodeSpec) -> None:
        started = await self._run(
            _about("start", spec.id), _ops.start, spec.id, self._host
        )
        if started:
            _log.info("node %s: started", spec.id)

    async def stop(self, spec: NodeSpec) -> StopOutcome:
        spec = self._own(spec)
        outcome = await self._run(
            _about("stop", spec.id),
            _ops.stop,
            spec.id,
            self._host,
            spec.grace_period,
            self._hub,
            self.settings.shutdown_repeat,
        )
        if outcome is None:
            return StopOutcome(clean=True, detail="already stopped")
        log = _log.info if outcome.clean else _log.warning
        log("node %s: stopped (%s)", spec.id, outcome.detail)
        return outcome

    async def upgrade(self, old: NodeSpec, new: NodeSpec) -> None:
        old, new = self._own(old), self._own(new)
        what = _about("redefine", new.id, f"on image {new.image!r}")
        await self._run(what, self._redefine, new)
        _log.info("node %s: upgraded from %s to %s", new.id, old.image, new.image)

    async def snapshot(self, spec: NodeSpec, destination: Path) -> Path:
        spec = self._own(spec)
        what = _about("find the data disk of", spec.id)
        disk = await self._run(what, _stopped_data_disk, spec.id, self._host)
        path = await self._blocking(_disks.snapshot_disk, spec.id, disk, destination)
        _log.info("node %s: snapshot of %s written to %s", spec.id, disk, path)
        return path

    async def delete(self, node_id: str) -> None:
        what = _about("undefine", node_id)
        tag = await self._run(what, _ops.undefine, node_id, self._host)
        removed = await self._blocking(
            _disks.remove_node_dir, self.context.data_dir, node_id
        )
        if tag is not None or removed:
            _log.info("node %s: deleted domain and data disk", node_id)

    async def inspect(self, node_id: str) -> RuntimeNode | None:
        what = _about("inspect", node_id)
        return await self._run(what, _inspect, node_id, self._host)

    async def list_nodes(self) -> list[RuntimeNode]:
        what = f"list the domains of host {self._host}"
        return await self._run(what, _list, self._host)

    async def aclose(self) -> None:
        self._hub.close()
        await self._conn.aclose()

    # helpers

    async def _run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        return await self._conn.run(what, function, *args)

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        call = functools.partial(function, *args)
        return await anyio.to_thread.run_sync(call, limiter=self._conn.limiter)

    def _disk_size(self, spec: NodeSpec) -> int:
        return int(spec.options.get("data_disk_mib", self.settings.data_disk_mib))

    def _define(
        self, conn: libvirt.virConnect, spec: NodeSpec, disk: str, uuid: str = ""
    ) -> None:
        tag = _domain.NodeTag(
            spec.id, spec.host_id, spec.name, spec.url, spec.image, disk
        )
        plan = self._plan(conn, spec)
        _ops.define(conn, _domain.domain_xml(spec, plan, tag, uuid))

    def _redefine(self, conn: libvirt.virConnect, spec: NodeSpec) -> None:
        domain, tag = _ops.require(conn, spec.id, self._host)
        if _ops.describe_state(domain)[0]:
            raise RuntimeFailure(
                f"cannot upgrade node {spec.id}: domain {domain.name()} is running; "
                "stop the node first"
            )
        self._define(conn, spec, tag.data_disk, domain.UUIDString())

    def _plan(self, conn: libvirt.virConnect, spec: NodeSpec) -> _domain.DomainPlan:
        options, settings = spec.options, self.settings
        return _domain.DomainPlan(
            domain_type=settings.domain_type or _default_type(conn),
            memory_mib=int(options.get("memory_mib", settings.memory_mib)),
            vcpus=int(options.get("vcpus", settings.vcpus)),
            kernel=str(options.get("kernel", "")),
            cmdline=str(options.get("cmdline", _DEFAULT_CMDLINE)),
            console_log=_disks.node_dir(self.context.data_dir, spec.id) / "console.log",
        )

    def _own(self, spec: NodeSpec) -> NodeSpec:
        # Tags carry the spec's host id: it must be the one this runtime serves.
        if spec.host_id != self._host:
            raise RuntimeFailure(
                f"the spec of node {spec.id} names host {spec.host_id!r}, but this "
                f"libvirt runtime serves host {self._host!r}"
            )
        return spec


def _about(verb: str, node_id: str, rest: str = "") -> str:
    tail = f" {rest}" if rest else ""
    return f"{verb} domain {_domain.domain_name(node_id)}{tail} for node {node_id}"


def _version(conn: libvirt.virConnect) -> int:
    return int(conn.getLibVersion())


def _default_type(conn: libvirt.virConnect) -> str:
    return "test" if conn.getType() == "Test" else "qemu"


def _check_files(spec: NodeSpec) -> None:
    kernel = spec.options.get("kernel")
    if not kernel:
        raise ImageUnavailable(
            f"image {spec.image!r} for node {spec.id} has no kernel: the catalogue "
            "entry of the libvirt runtime needs a `kernel` path next to `image`"
        )
    for what, path in (("image", spec.image), ("kernel", str(kernel))):
        if not os.access(path, os.R_OK):
            raise ImageUnavailable(
                f"{what} {path!r} for node {spec.id} is not a readable file on this "
                "host; build it (plugins/libvirt_runtime/images/build-guest.sh) "
                "or fix the catalogue entry"
            )


def _stopped_data_disk(conn: libvirt.virConnect, node_id: str, host_id: str) -> Path:
    domain, _tag = _ops.require(conn, node_id, host_id)
    if _ops.describe_state(domain)[0]:
        raise RuntimeFailure(
            f"cannot snapshot node {node_id}: domain {domain.name()} is running; "
            "stop the node first"
        )
    disk = _domain.find_data_disk(domain.XMLDesc(0))
    if disk.get("type") != "file" or disk.get("format") not in ("qcow2", "raw"):
        raise RuntimeFailure(
            f"cannot snapshot node {node_id}: the data disk of domain "
            f"{domain.name()} at {_domain.DATA_TARGET} is {disk or 'missing'}; "
            "only a qcow2 or raw file disk can be snapshotted"
        )
    return Path(disk["file"])


def _inspect(
    conn: libvirt.virConnect, node_id: str, host_id: str
) -> RuntimeNode | None:
    found = _ops.find(conn, node_id, host_id)
    return None if found is None else _describe(*found)


def _list(conn: libvirt.virConnect, host_id: str) -> list[RuntimeNode]:
    return [_describe(domain, tag) for domain, tag in _ops.owned(conn, host_id)]


def _describe(domain: libvirt.virDomain, tag: _domain.NodeTag) -> RuntimeNode:
    running, detail = _ops.describe_state(domain)
    return RuntimeNode(
        id=tag.node_id,
        name=tag.name,
        state=NodeState.RUNNING if running else NodeState.STOPPED,
        image=tag.image,
        url=tag.url,
        detail=detail,
    )


async def _node_ids(events: AsyncIterator[DomainEvent]) -> AsyncIterator[str]:
    async for event in events:
        yield event.node_id
