"""How a node looks as a libvirt domain: its XML, name and metadata.

Every domain carries a ``<nodevisor:node>`` element in its ``<metadata>``
with the node id, host id, name, protocol url, image and data disk, so a
fresh runtime adopts the domains an earlier one defined, and each runtime
touches only the domains of its own host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodevisor import NodeSpec

__all__ = [
    "DATA_TARGET",
    "METADATA_KEY",
    "METADATA_NS",
    "DomainPlan",
    "NodeTag",
    "domain_name",
    "domain_xml",
    "find_data_disk",
    "read_tag",
]

METADATA_NS = "https://nodevisor.dev/xmlns/libvirt-node/1"
METADATA_KEY = "nodevisor"
#: The guest device of the data disk.
DATA_TARGET = "vda"


def domain_name(node_id: str) -> str:
    """The name of the domain that runs the node."""
    return f"nodevisor-{node_id}"


@dataclass(frozen=True)
class NodeTag:
    """What the runtime records about a node in its domain's metadata."""

    node_id: str
    host_id: str
    name: str
    url: str
    image: str
    data_disk: str

    def xml(self) -> str:
        element = ET.Element("node", _attributes(self))
        return ET.tostring(element, encoding="unicode")


def _attributes(tag: NodeTag) -> dict[str, str]:
    return {
        "id": tag.node_id,
        "host": tag.host_id,
        "name": tag.name,
        "url": tag.url,
        "image": tag.image,
        "data-disk": tag.data_disk,
    }


def read_tag(metadata: str) -> NodeTag | None:
    """The tag in a domain's metadata element, or ``None`` if it is not ours."""
    try:
        element = ET.fromstring(metadata)
    except ET.ParseError:
        return None
    get = element.attrib.get
    if not get("id") or not get("host"):
        return None
    return NodeTag(
        node_id=get("id", ""),
        host_id=get("host", ""),
        name=get("name", ""),
        url=get("url", ""),
        image=get("image", ""),
        data_disk=get("data-disk", ""),
    )


@dataclass(frozen=True)
class DomainPlan:
    """The shape of a node's domain, from its spec and the runtime's settings."""

    domain_type: str
    memory_mib: int
    vcpus: int
    kernel: str
    cmdline: str
    console_log: Path


def domain_xml(spec: NodeSpec, plan: DomainPlan, tag: NodeTag, uuid: str = "") -> str:
    """The persistent definition of the node's domain (``uuid`` to redefine)."""
    root = ET.Element("domain", type=plan.domain_type)
    ET.SubElement(root, "name").text = domain_name(spec.id)
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "title").text = f"nodevisor node {spec.name}"
    metadata = ET.SubElement(root, "metadata")
    node = ET.SubElement(metadata, f"{{{METADATA_NS}}}node", _attributes(tag))
    node.tail = None
    ET.SubElement(root, "memory", unit="MiB").text = str(plan.memory_mib)
    ET.SubElement(root, "vcpu").text = str(plan.vcpus)
    _os(root, spec, plan)
    ET.SubElement(ET.SubElement(root, "features"), "acpi")
    # The agent is the only supervisor: a domain that ends stays stopped.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(root, event).text = "destroy"
    _devices(root, tag, plan)
    ET.register_namespace(METADATA_KEY, METADATA_NS)
    return ET.tostring(root, encoding="unicode")


def _os(root: ET.Element, spec: NodeSpec, plan: DomainPlan) -> None:
    os_element = ET.SubElement(root, "os")
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_element, "kernel").text = plan.kernel
    ET.SubElement(os_element, "initrd").text = spec.image
    ET.SubElement(os_element, "cmdline").text = plan.cmdline


def _devices(root: ET.Element, tag: NodeTag, plan: DomainPlan) -> None:
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=tag.data_disk)
    ET.SubElement(disk, "target", dev=DATA_TARGET, bus="virtio")
    if plan.domain_type == "test":
        return
    console = str(plan.console_log)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=console)
    ET.SubElement(serial, "target", port="0")


def find_data_disk(xml: str) -> dict[str, Any]:
    """The data disk of a domain's XML: its type, format and source.

    Empty when the domain has no disk at the data disk's target.
    """
    root = ET.fromstring(xml)
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") != DATA_TARGET:
            continue
        driver, source = disk.find("driver"), disk.find("source")
        return {
            "type": disk.get("type", ""),
            "format": "" if driver is None else driver.get("type", ""),
            "file": "" if source is None else source.get("file", ""),
        }
    return {}
