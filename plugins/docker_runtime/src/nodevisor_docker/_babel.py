"""babel inside a node's container, and the folder it shares with the host.

A catalogue entry whose docker table says ``babel = true`` names an image
whose entrypoint is babel (revision 3 of the Litecoin images): babel
supervises the node's process inside the container and answers for it on a
Unix socket. Per node, ``<babel_dir>/<host_id>/<node_id>/`` on the host is
bind-mounted at ``/run/babel`` and holds:

- ``babel.json``: the spec babel runs from, written by the runtime before
  each create, start and upgrade (the folder may be on a tmpfs);
- ``babel.sock``: babel's socket, which the agent reaches from the host;
- ``node.pid`` and ``logs/`` (``babel.log`` and ``node.log``, the node's
  output).

The folder belongs to the image's user, so that babel, which runs as that
user, can create its socket there; the agent, as root, can connect anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodevisor import NodeSpec, RuntimeFailure
from nodevisor_babel import BabelSpec

__all__ = ["COMMAND", "MOUNT", "SOCKET", "STOP_MARGIN", "runs_babel", "write_folder"]

#: Where the node's folder appears inside its container.
MOUNT = "/run/babel"
SOCKET = "babel.sock"
SPEC = "babel.json"
#: The container's command: babel, with its spec and socket in the folder.
COMMAND = (
    "python3", "-m", "nodevisor_babel",
    "--spec", f"{MOUNT}/{SPEC}",
    "--socket", f"{MOUNT}/{SOCKET}",
    "--logs", f"{MOUNT}/logs",
)  # fmt: skip
#: Seconds babel may take beyond the node's grace period to stop it and exit.
STOP_MARGIN = 30


def runs_babel(spec: NodeSpec) -> bool:
    """Whether the node's catalogue entry runs babel as the entrypoint."""
    return spec.options.get("babel") is True


def write_folder(folder: Path, spec: NodeSpec, image_user: str) -> None:
    """Make the node's folder, owned by ``image_user``, with its babel spec."""
    uid, gid = _ids(image_user, spec)
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.mkdir(exist_ok=True)
    BabelSpec(
        node_id=spec.id,
        protocol=spec.protocol,
        command=spec.command,
        environment=dict(spec.environment),
        workdir=Path(spec.data_path),
        stop_signal=spec.stop_signal,
        grace_period=spec.grace_period,
        interface=spec.interface,
    ).write(folder / SPEC)
    os.chown(folder, uid, gid)


def _ids(image_user: str, spec: NodeSpec) -> tuple[int, int]:
    """The numeric ``uid`` and ``gid`` of an image's ``USER`` (root if empty)."""
    uid, _, gid = (image_user or "0").partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise RuntimeFailure(
            f"image {spec.image!r} of node {spec.id} runs as user {image_user!r}; "
            "an image that runs babel must give a numeric USER (uid:gid), so that "
            "the runtime can hand it the folder babel's socket is in"
        ) from None
