"""The ``[runtimes.libvirt]`` table of the agent's config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodevisor import ConfigError

__all__ = ["LibvirtSettings"]


@dataclass(frozen=True)
class LibvirtSettings:
    """How the runtime reaches libvirtd and shapes its domains."""

    #: The libvirt connection URI.
    uri: str = "qemu:///system"
    #: The domain type; empty means ``test`` on the test driver, else ``qemu``
    #: (plain emulation, which needs no KVM). Set ``kvm`` where KVM works.
    domain_type: str = ""
    #: How many libvirt calls may run at once, each in a worker thread.
    max_threads: int = 4
    #: Memory and virtual CPUs of a domain whose catalogue entry sets none.
    memory_mib: int = 256
    vcpus: int = 1
    #: Virtual size of a new node's data disk (qcow2, allocated as written).
    data_disk_mib: int = 1024
    #: Seconds between ACPI power-button presses while a stop waits, so a
    #: press sent before the guest listened is not lost.
    shutdown_repeat: float = 2.0
    #: Seconds to wait before reopening a dropped connection to libvirtd.
    reconnect_delay: float = 1.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> LibvirtSettings:
        """Read the config table; raise ``ConfigError`` naming a bad key."""
        unknown = sorted(set(table) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"[runtimes.libvirt] has unknown keys {unknown}; "
                f"known: {sorted(cls.__dataclass_fields__)}"
            )
        settings = cls(**table)
        for key, expected in _EXPECTED.items():
            if not _valid(getattr(settings, key), expected):
                raise ConfigError(
                    f"[runtimes.libvirt] {key} = {getattr(settings, key)!r} is not "
                    f"valid: expected a {expected}"
                )
        return settings


_EXPECTED = {
    "uri": "libvirt URI such as 'qemu:///system'",
    "domain_type": "domain type such as 'qemu' or 'kvm'",
    "max_threads": "positive integer",
    "memory_mib": "positive integer",
    "vcpus": "positive integer",
    "data_disk_mib": "positive integer",
    "shutdown_repeat": "positive number of seconds",
    "reconnect_delay": "positive number of seconds",
}


def _valid(value: object, expected: str) -> bool:
    if expected.startswith("positive"):
        kinds = int if "integer" in expected else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and value > 0
    return isinstance(value, str)
