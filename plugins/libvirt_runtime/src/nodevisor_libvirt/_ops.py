"""The runtime's steps as blocking libvirt calls.

Each function takes the connection first and runs whole in one worker thread
(see ``_connection``). Each is idempotent, as the contract asks, and touches
only domains whose metadata tag names this host and node.
"""

from __future__ import annotations

import threading
import time

import libvirt

from nodevisor import RuntimeFailure, StopOutcome

from ._domain import METADATA_NS, NodeTag, domain_name, read_tag
from ._errors import is_no_domain
from ._events import EventHub

__all__ = [
    "Found",
    "define",
    "describe_state",
    "find",
    "owned",
    "require",
    "start",
    "stop",
    "tag_of",
    "undefine",
]

# Active states: the domain's processes exist.
_INACTIVE = frozenset({libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED})
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "stopped",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed to start",
}

Found = tuple[libvirt.virDomain, NodeTag]


def tag_of(domain: libvirt.virDomain) -> NodeTag | None:
    """The domain's nodevisor tag, or ``None`` if it has none."""
    try:
        metadata = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError:
        return None
    return read_tag(metadata)


def find(conn: libvirt.virConnect, node_id: str, host_id: str) -> Found | None:
    """The node's domain and tag on this host, or ``None``."""
    try:
        domain = conn.lookupByName(domain_name(node_id))
    except libvirt.libvirtError as exc:
        if is_no_domain(exc):
            return None
        raise
    tag = tag_of(domain)
    if tag is None or (tag.node_id, tag.host_id) != (node_id, host_id):
        return None
    return domain, tag


def owned(conn: libvirt.virConnect, host_id: str) -> list[Found]:
    """Every domain tagged with this host."""
    found = []
    for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT):
        tag = tag_of(domain)
        if tag is not None and tag.host_id == host_id:
            found.append((domain, tag))
    return found


def describe_state(domain: libvirt.virDomain) -> tuple[bool, str]:
    """Whether the domain runs, and a phrase for how it last stopped."""
    state, reason = domain.state()
    if state not in _INACTIVE:
        return True, ""
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return False, "crashed"
    return False, _SHUTOFF_REASONS.get(reason, f"stopped (reason {reason})")


def define(conn: libvirt.virConnect, xml: str) -> None:
    """Define (or redefine, keeping its uuid) a persistent domain."""
    conn.defineXML(xml)


def start(conn: libvirt.virConnect, node_id: str, host_id: str) -> bool:
    """Start the node's domain; return whether it was stopped."""
    domain, _tag = require(conn, node_id, host_id)
    if describe_state(domain)[0]:
        return False
    domain.create()
    return True


def require(conn: libvirt.virConnect, node_id: str, host_id: str) -> Found:
    """The node's domain and tag; ``RuntimeFailure`` naming the node if absent."""
    found = find(conn, node_id, host_id)
    if found is None:
        raise RuntimeFailure(
            f"node {node_id} has no domain {domain_name(node_id)} on host {host_id}; "
            "create it first"
        )
    return found


def stop(
    conn: libvirt.virConnect,
    node_id: str,
    host_id: str,
    grace: float,
    hub: EventHub,
    repeat: float,
) -> StopOutcome | None:
    """ACPI shutdown, wait ``grace`` seconds, then destroy.

    Return ``None`` if the domain was stopped already.
    """
    domain, _tag = require(conn, node_id, host_id)
    if not describe_state(domain)[0]:
        return None
    if _shut_down(domain, grace, hub.changed, repeat):
        return StopOutcome(clean=True, detail="shut down by the ACPI power button")
    _destroy(domain)
    return StopOutcome(
        clean=False,
        detail=(
            f"did not shut down within {grace:g}s of the ACPI power button; destroyed"
        ),
    )


def _shut_down(
    domain: libvirt.virDomain,
    grace: float,
    changed: threading.Condition,
    repeat: float,
) -> bool:
    # A press sent before the guest listens is lost, so it is repeated; the
    # wait wakes on every lifecycle event the hub receives.
    deadline = time.monotonic() + grace
    while (left := deadline - time.monotonic()) > 0:
        if not _press(domain):
            return True
        with changed:
            changed.wait(min(repeat, left))
        if not describe_state(domain)[0]:
            return True
    return not describe_state(domain)[0]


def _press(domain: libvirt.virDomain) -> bool:
    """Press the power button; return whether the domain was still running."""
    try:
        _shutdown_by_button(domain)
    except libvirt.libvirtError as exc:
        if not describe_state(domain)[0]:
            return False
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise
    return True


def _shutdown_by_button(domain: libvirt.virDomain) -> None:
    try:
        domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except libvirt.libvirtError as exc:
        # Drivers without a power button (libvirt's test driver) refuse the
        # flag; their plain shutdown is the nearest thing.
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        domain.shutdown()


def _destroy(domain: libvirt.virDomain) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError:
        if describe_state(domain)[0]:
            raise


def undefine(conn: libvirt.virConnect, node_id: str, host_id: str) -> NodeTag | None:
    """Destroy and undefine the node's domain; return its tag if it existed."""
    found = find(conn, node_id, host_id)
    if found is None:
        return None
    domain, tag = found
    try:
        if describe_state(domain)[0]:
            _destroy(domain)
        domain.undefine()
    except libvirt.libvirtError as exc:
        if not is_no_domain(exc):
            raise
    return tag
