"""nodevisor-libvirt: the runtime that runs each node as a libvirt domain.

The agent finds it through the ``nodevisor`` entry-point group, like any
outside plugin. Select it with ``runtime = "libvirt"`` in the agent's config;
the ``[runtimes.libvirt]`` table sets ``uri`` (``qemu:///system`` by
default), ``domain_type``, ``memory_mib``, ``vcpus``, ``data_disk_mib`` and
more (see ``LibvirtSettings``).
"""

from __future__ import annotations

import nodevisor

from ._events import DomainEvent, EventKind
from ._runtime import LibvirtRuntime
from ._settings import LibvirtSettings

__all__ = [
    "DomainEvent",
    "EventKind",
    "LibvirtRuntime",
    "LibvirtSettings",
    "nodevisor_runtimes",
]


@nodevisor.hookimpl
def nodevisor_runtimes() -> list[type[nodevisor.Runtime]]:
    """The runtimes this plugin provides."""
    return [LibvirtRuntime]
