"""Facts about this host, read from the machine."""

from __future__ import annotations

import platform
import socket
from pathlib import Path

import psutil

from blockjoy.api.v1 import common_pb2, host_pb2

from . import __version__

__all__ = ["host_info", "local_address"]


def host_info(
    *,
    host_id: str,
    api_url: str,
    data_dir: Path,
    name: str | None = None,
    location: str | None = None,
) -> host_pb2.HostInfo:
    """Build ``HostInfo`` from what psutil and the OS report."""
    os_name, os_version = _os_release()
    info = host_pb2.HostInfo(
        id=common_pb2.Uuid(value=host_id),
        name=name or socket.gethostname(),
        version=__version__,
        cpu_count=psutil.cpu_count() or 0,
        mem_size=psutil.virtual_memory().total,
        disk_size=psutil.disk_usage(str(_existing(data_dir))).total,
        os=os_name,
        os_version=os_version,
        ip=local_address(api_url),
    )
    if location:
        info.location = location
    return info


def local_address(api_url: str) -> str:
    """The address this host uses to reach the control plane.

    Connecting a UDP socket picks the outgoing interface without sending a
    packet.
    """
    host, _, port = api_url.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, int(port or 443)))
            return str(probe.getsockname()[0])
    except (OSError, ValueError):
        return socket.gethostbyname(socket.gethostname())


def _os_release() -> tuple[str, str]:
    try:
        release = platform.freedesktop_os_release()
        return release.get("NAME", platform.system()), release.get("VERSION_ID", "")
    except OSError:
        return platform.system(), platform.release()


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
