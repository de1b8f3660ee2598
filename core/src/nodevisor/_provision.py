"""Registering this host with the control plane."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import anyio
import grpc

from blockjoy.api.v1 import common_pb2, host_pb2, host_pb2_grpc

from ._catalogue import Catalogue
from ._config import AgentConfig
from ._credentials import Credentials
from ._errors import CredentialsError
from ._hostinfo import host_info
from ._lock import exclusive
from ._store import STORE_FILE, Store

__all__ = ["provision"]

log = logging.getLogger(__name__)


async def provision(
    config: AgentConfig, otp: str, api_url: str, *, force: bool = False
) -> Credentials:
    """Exchange ``otp`` for a host id and token, and save them (mode 0600).

    A host that is provisioned already is refused unless ``force``. A new
    identity starts with an empty store: the old one's store is set aside as
    ``state.<old host id>.db``, and the nodes its runtimes labelled with the
    old identity stay where they are, no longer managed. No agent may run on
    the data directory meanwhile. A catalogue the agent would refuse is
    refused here first.
    """
    # A catalogue the agent would refuse at start, refused before the
    # one-time password is spent on a host that cannot run.
    await anyio.to_thread.run_sync(Catalogue.load, config.catalogue_dirs)
    with exclusive(config.data_dir):
        previous = _provisioned(config)
        if previous is not None and not force:
            raise CredentialsError(
                f"this host is provisioned already, as host {previous.host_id} "
                f"(credentials in {str(config.data_dir)!r}); provisioning again "
                "gives it a new identity, and the nodes created under the old "
                "one would be orphaned: delete them first, or pass --force"
            )
        credentials = await _register(config, otp, api_url)
        if previous is not None:
            await anyio.to_thread.run_sync(_set_aside, config.data_dir, previous)
        path = await anyio.to_thread.run_sync(credentials.save, config.data_dir)
    log.info("provisioned as host %s; credentials in %s", credentials.host_id, path)
    return credentials


async def _register(config: AgentConfig, otp: str, api_url: str) -> Credentials:
    info = await anyio.to_thread.run_sync(
        lambda: host_info(
            host_id="",
            api_url=api_url,
            data_dir=config.data_dir,
            name=config.name,
            location=config.location,
        )
    )
    info.ClearField("id")
    request = host_pb2.ProvisionHostRequest(
        request_id=common_pb2.Uuid(value=str(uuid.uuid4())), otp=otp, info=info
    )
    async with grpc.aio.insecure_channel(api_url) as channel:
        try:
            response = await host_pb2_grpc.HostsStub(channel).Provision(
                request, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise CredentialsError(
                f"provisioning at {api_url} failed: {exc.code().name}: {exc.details()}"
            ) from exc
    return Credentials(response.host_id.value, response.token, api_url)


def _provisioned(config: AgentConfig) -> Credentials | None:
    try:
        return Credentials.load(config.data_dir)
    except CredentialsError:
        return None


def _set_aside(data_dir: Path, previous: Credentials) -> None:
    """Keep the old identity's store under its host id, out of the new one's way.

    Its nodes, commands and unsent updates belong to the old host: the new
    one must neither manage those nodes nor send those updates.
    """
    current = data_dir / STORE_FILE
    if not current.exists():
        return
    store = Store(current)
    try:
        live = store.nodes()
    finally:
        store.close()
    kept = data_dir / f"state.{previous.host_id}.db"
    for suffix in ("", "-wal", "-shm"):
        source = current.with_name(current.name + suffix)
        if source.exists():
            source.rename(kept.with_name(kept.name + suffix))
    if live:
        names = ", ".join(node.name for node in live)
        log.warning(
            "the %d nodes of host %s (%s) stay in their runtimes, no longer "
            "managed by this agent; their records are kept in %s",
            len(live),
            previous.host_id,
            names,
            kept,
        )
