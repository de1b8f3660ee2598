"""A node's files on the host: its directory, data disk and snapshots.

Each node has ``<data_dir>/nodes/<node id>/`` holding ``data.qcow2`` (the
chain data, created empty by ``create`` and removed only by ``delete``) and
``console.log`` (the guest's serial console). The functions block: the
runtime calls them in worker threads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from nodevisor import RuntimeFailure

__all__ = [
    "create_data_disk",
    "node_dir",
    "remove_node_dir",
    "snapshot_disk",
]

_QEMU_IMG_TIMEOUT = 600.0


def node_dir(data_dir: Path, node_id: str) -> Path:
    """The directory that holds the node's files."""
    return data_dir / "nodes" / node_id


def create_data_disk(path: Path, size_mib: int, node_id: str) -> bool:
    """Create the node's empty data disk; return whether it had to be made."""
    if path.exists():
        return False
    # The qemu user opens the disk: every directory on the way must let it in.
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    _qemu_img(node_id, "create", "-q", "-f", "qcow2", str(partial), f"{size_mib}M")
    partial.replace(path)
    return True


def remove_node_dir(data_dir: Path, node_id: str) -> bool:
    """Remove the node's directory; return whether it existed."""
    folder = node_dir(data_dir, node_id)
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def snapshot_disk(node_id: str, disk: Path, destination: Path) -> Path:
    """Copy the stopped node's data disk to a qcow2 file under ``destination``.

    The copy is checked with ``qemu-img check`` before it is returned.
    """
    if not disk.is_file():
        raise RuntimeFailure(
            f"cannot snapshot node {node_id}: its data disk {str(disk)!r} is missing"
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = destination / f"{node_id}-{stamp}.qcow2"
    partial = target.with_name(target.name + ".partial")
    destination.mkdir(parents=True, exist_ok=True)
    try:
        _qemu_img(node_id, "convert", "-O", "qcow2", str(disk), str(partial))
        _verify(node_id, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _verify(node_id: str, copy: Path) -> None:
    info = json.loads(_qemu_img(node_id, "info", "--output=json", str(copy)))
    if info.get("format") != "qcow2":
        raise RuntimeFailure(
            f"the snapshot of node {node_id} at {str(copy)!r} is not a qcow2 image: "
            f"qemu-img says {info.get('format')!r}"
        )
    _qemu_img(node_id, "check", "-q", str(copy))


def _qemu_img(node_id: str, *args: str) -> str:
    argv = ["qemu-img", *args]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=_QEMU_IMG_TIMEOUT, check=True
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(
            f"node {node_id}: qemu-img is not installed (apt-get install qemu-utils)"
        ) from exc
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        raise RuntimeFailure(
            f"node {node_id}: {' '.join(argv)!r} failed: {stderr.strip() or exc}"
        ) from exc
    return result.stdout
