"""The runtime's steps as blocking docker-py calls.

Each function takes the client first and runs whole in one worker thread
(see ``_engine``). Each is idempotent, as the contract asks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nodevisor import ImageUnavailable, NodeSpec, RuntimeFailure, StopOutcome

from . import _babel, _describe, _labels
from ._sdk import docker

if TYPE_CHECKING:
    from docker.models.containers import Container
    from docker.models.volumes import Volume

__all__ = [
    "create",
    "delete",
    "ensure_image",
    "find",
    "owned_containers",
    "ping",
    "prepare_babel",
    "require",
    "snapshot",
    "start",
    "stop",
    "upgrade",
]

_log = logging.getLogger(__name__)


def ping(client: docker.DockerClient) -> None:
    client.ping()


def ensure_image(client: docker.DockerClient, spec: NodeSpec, pull: bool) -> bool:
    """Make ``spec.image`` present; return whether it had to be pulled."""
    try:
        client.images.get(spec.image)
        return False
    except docker.errors.ImageNotFound:
        pass
    if not pull:
        raise ImageUnavailable(_unavailable(spec, "pulling is turned off"))
    try:
        client.images.pull(spec.image)
    except docker.errors.APIError as exc:
        raise ImageUnavailable(_unavailable(spec, _reason(exc))) from exc
    return True


def _unavailable(spec: NodeSpec, reason: str) -> str:
    build = spec.options.get("build")
    how = f"run {build}" if build else "build it with docker build or docker load it"
    return (
        f"image {spec.image!r} for node {spec.id} is not on this host and cannot be "
        f"pulled ({reason}); {how}, then retry"
    )


def _reason(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def find(
    client: docker.DockerClient, node_id: str, host_id: str, name: str = ""
) -> Container | None:
    """The node's container on this host, or ``None``."""
    container = _lookup(client, name or _labels.container_name(node_id))
    if container is None or not _labels.owned_by(container.labels, host_id, node_id):
        return None
    return container


def _lookup(client: docker.DockerClient, name: str) -> Container | None:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def require(client: docker.DockerClient, node_id: str, host_id: str) -> Container:
    """The node's container on this host; ``RuntimeFailure`` naming it if absent."""
    container = find(client, node_id, host_id)
    if container is None:
        raise RuntimeFailure(
            f"node {node_id} has no container {_labels.container_name(node_id)} "
            f"on host {host_id}; create it first"
        )
    return container


def owned_containers(client: docker.DockerClient, host_id: str) -> list[Container]:
    """Every node container of this host (not those an upgrade is preparing)."""
    found = client.containers.list(
        all=True,
        filters={"label": [f"{_labels.HOST_ID}={host_id}", _labels.NODE_ID]},
        ignore_removed=True,
    )
    return [
        c
        for c in found
        if c.name == _labels.container_name(c.labels.get(_labels.NODE_ID, ""))
    ]


def prepare_babel(client: docker.DockerClient, spec: NodeSpec, folder: Path) -> None:
    """Write the folder babel shares with the host, owned by the image's user."""
    user = client.images.get(spec.image).attrs["Config"].get("User") or ""
    _babel.write_folder(folder, spec, user)


def create(
    client: docker.DockerClient, spec: NodeSpec, babel: Path | None = None
) -> bool:
    """Create the node's container, stopped; return whether it was created.

    With ``babel``, the node's folder on the host, babel is the container's
    command and the folder is mounted for it.
    """
    name = _labels.container_name(spec.id)
    existing = _lookup(client, name)
    if existing is not None:
        _check_owner(existing.labels, spec, f"container {name}")
        return False
    _create_container(client, spec, name, babel)
    return True


def _check_owner(labels: dict[str, str] | None, spec: NodeSpec, what: str) -> None:
    if not _labels.owned_by(labels, spec.host_id, spec.id):
        raise RuntimeFailure(
            f"{what} exists but does not belong to node {spec.id} on host "
            f"{spec.host_id} (its labels: {labels or {}}); remove it or use "
            "another node id"
        )


def _create_container(
    client: docker.DockerClient, spec: NodeSpec, name: str, babel: Path | None
) -> Container:
    # The low-level call, because only it sets the container's stop timeout:
    # an operator's `docker stop` then waits the grace period too.
    volume = _ensure_volume(client, spec)
    binds = {volume.name: {"bind": spec.data_path, "mode": "rw"}}
    command, stop_signal = list(spec.command) or None, spec.stop_signal
    if babel is not None:
        # babel stops the node with the spec's signal when it gets SIGTERM.
        binds[str(babel)] = {"bind": _babel.MOUNT, "mode": "rw"}
        command, stop_signal = list(_babel.COMMAND), "SIGTERM"
    host_config = client.api.create_host_config(
        binds=binds,
        # The agent is the only supervisor: the engine never restarts a node.
        restart_policy={"Name": "no"},
        # A small init as PID 1 forwards the stop signal. Without it, a signal
        # that arrives before the node's process installs its handler is
        # dropped (PID 1 ignores unhandled signals) and the stop waits out
        # the whole grace period.
        init=True,
    )
    created = client.api.create_container(
        image=spec.image,
        command=command,
        name=name,
        labels=_labels.node_labels(spec),
        environment=dict(spec.environment),
        stop_signal=stop_signal,
        stop_timeout=_grace(spec),
        host_config=host_config,
    )
    return client.containers.get(created["Id"])


def _ensure_volume(client: docker.DockerClient, spec: NodeSpec) -> Volume:
    name = _labels.volume_name(spec.id)
    try:
        volume = client.volumes.get(name)
    except docker.errors.NotFound:
        labels = {_labels.NODE_ID: spec.id, _labels.HOST_ID: spec.host_id}
        return client.volumes.create(name, labels=labels)
    _check_owner(volume.attrs.get("Labels"), spec, f"volume {name}")
    return volume


def start(
    client: docker.DockerClient, spec: NodeSpec, babel: Path | None = None
) -> bool:
    """Start the node's container; return whether it was stopped before.

    An engine that stopped before it had cleaned up after a container (a
    dockerd restart can leave that behind) refuses to start that container
    again, for good. The container is then replaced by a new one from the
    same spec, on the same volume, and that one is started.
    """
    container = require(client, spec.id, spec.host_id)
    if _describe.is_running(container):
        return False
    try:
        container.start()
    except docker.errors.APIError as exc:
        if not _left_behind(exc, container):
            raise
        _log.warning(
            "node %s: the engine still holds state of container %s from before "
            "it restarted (%s); replacing the container",
            spec.id,
            container.short_id,
            exc.explanation,
        )
        _recreate(client, spec, container, babel).start()
    return True


def _left_behind(exc: docker.errors.APIError, container: Container) -> bool:
    """Whether ``exc`` says the engine has a task of this container already.

    The engine says so in two ways: the task's bundle folder, named by the
    container's id, exists ("file exists"); or containerd still runs a task
    under the container's id ("id already in use"), the way a containerd
    that outlived the restart of dockerd answers.
    """
    text = str(exc.explanation or "")
    if "id already in use" in text:
        return True
    return container.id in text and ("already exists" in text or "file exists" in text)


def stop(client: docker.DockerClient, spec: NodeSpec) -> StopOutcome | None:
    """Stop the container; ``None`` if it was stopped already.

    The engine sends the container's stop signal, waits the grace period and
    then kills. docker-py adds the grace period to the request's timeout.
    """
    container = require(client, spec.id, spec.host_id)
    if not _describe.is_running(container):
        return None
    grace = _grace(spec)
    container.stop(timeout=grace)
    container.reload()
    state = container.attrs["State"]
    if _describe.was_killed(state):
        detail = f"killed by SIGKILL after a grace period of {grace} s"
        return StopOutcome(clean=False, detail=detail)
    return StopOutcome(clean=True, detail=_describe.exit_detail(state))


def _grace(spec: NodeSpec) -> int:
    """Seconds the engine waits after the stop signal before it kills."""
    margin = _babel.STOP_MARGIN if _babel.runs_babel(spec) else 0
    return math.ceil(spec.grace_period) + margin


def upgrade(
    client: docker.DockerClient,
    old: NodeSpec,
    new: NodeSpec,
    babel: Path | None = None,
) -> None:
    """Recreate the stopped node's container on ``new.image``, same volume."""
    current = find(client, old.id, old.host_id)
    if current is not None and _describe.is_running(current):
        raise RuntimeFailure(
            f"cannot upgrade node {old.id}: container {current.name} is running; "
            "stop the node first"
        )
    _recreate(client, new, current, babel)


def _recreate(
    client: docker.DockerClient,
    spec: NodeSpec,
    current: Container | None,
    babel: Path | None,
) -> Container:
    """Replace the node's stopped container by a new one made from ``spec``.

    The new container is made under a temporary name first, so a failure
    leaves the old one as it was.
    """
    _remove_pending(client, spec.id, spec.host_id)
    pending = _create_container(client, spec, _labels.pending_name(spec.id), babel)
    if current is not None:
        current.remove()
    pending.rename(_labels.container_name(spec.id))
    return pending


def _remove_pending(client: docker.DockerClient, node_id: str, host_id: str) -> None:
    stale = find(client, node_id, host_id, _labels.pending_name(node_id))
    if stale is not None:
        stale.remove(force=True)


def delete(client: docker.DockerClient, node_id: str, host_id: str) -> bool:
    """Remove the node's containers and volume; return whether any existed."""
    containers = [
        find(client, node_id, host_id),
        find(client, node_id, host_id, _labels.pending_name(node_id)),
    ]
    found = [c for c in containers if c is not None]
    for container in found:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    return _remove_volume(client, node_id, host_id) or bool(found)


def _remove_volume(client: docker.DockerClient, node_id: str, host_id: str) -> bool:
    try:
        volume = client.volumes.get(_labels.volume_name(node_id))
    except docker.errors.NotFound:
        return False
    if not _labels.owned_by(volume.attrs.get("Labels"), host_id, node_id):
        return False
    with contextlib.suppress(docker.errors.NotFound):
        volume.remove(force=True)
    return True


def snapshot(client: docker.DockerClient, spec: NodeSpec, destination: Path) -> Path:
    """Write the stopped node's data path to a tar file under ``destination``."""
    container = require(client, spec.id, spec.host_id)
    if _describe.is_running(container):
        raise RuntimeFailure(
            f"cannot snapshot node {spec.id}: container {container.name} is "
            "running; stop the node first"
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = destination / f"{spec.id}-{stamp}.tar"
    _write_archive(container, spec, target)
    return target


def _write_archive(container: Container, spec: NodeSpec, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    chunks, _stat = container.get_archive(spec.data_path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise RuntimeFailure(
            f"failed to write the snapshot of node {spec.id} to {str(target)!r}: {exc}"
        ) from exc
    if target.stat().st_size == 0:
        target.unlink()
        raise RuntimeFailure(
            f"the snapshot of node {spec.id} from {spec.data_path!r} came out empty"
        )
