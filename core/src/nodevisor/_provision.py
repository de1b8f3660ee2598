"""Registering this host with the control plane."""

from __future__ import annotations

import logging
import uuid

import anyio
import grpc

from blockjoy.api.v1 import common_pb2, host_pb2, host_pb2_grpc

from ._config import AgentConfig
from ._credentials import Credentials
from ._errors import CredentialsError
from ._hostinfo import host_info

__all__ = ["provision"]

log = logging.getLogger(__name__)


async def provision(
    config: AgentConfig, otp: str, api_url: str, *, force: bool = False
) -> Credentials:
    """Exchange ``otp`` for a host id and token, and save them (mode 0600).

    A host that is provisioned already is refused unless ``force``: a new
    identity orphans the nodes its runtimes labelled with the old one.
    """
    if not force:
        _refuse_if_provisioned(config)
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
    credentials = Credentials(response.host_id.value, response.token, api_url)
    path = await anyio.to_thread.run_sync(credentials.save, config.data_dir)
    log.info("provisioned as host %s; credentials in %s", credentials.host_id, path)
    return credentials


def _refuse_if_provisioned(config: AgentConfig) -> None:
    try:
        current = Credentials.load(config.data_dir)
    except CredentialsError:
        return
    raise CredentialsError(
        f"this host is provisioned already, as host {current.host_id} "
        f"(credentials in {str(config.data_dir)!r}); provisioning again gives it "
        "a new identity, and the nodes created under the old one would be "
        "orphaned: delete them first, or pass --force"
    )
