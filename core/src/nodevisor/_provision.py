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


async def provision(config: AgentConfig, otp: str, api_url: str) -> Credentials:
    """Exchange ``otp`` for a host id and token, and save them (mode 0600)."""
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
                f"the control plane at {api_url} refused to provision this host: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
    credentials = Credentials(response.host_id.value, response.token, api_url)
    path = await anyio.to_thread.run_sync(credentials.save, config.data_dir)
    log.info("provisioned as host %s; credentials in %s", credentials.host_id, path)
    return credentials
