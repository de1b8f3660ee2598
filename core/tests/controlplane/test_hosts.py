"""Provisioning and host info over the v1 ``Hosts`` service."""

from __future__ import annotations

import anyio
import grpc
import pytest

from blockjoy.api.v1 import host_pb2, host_pb2_grpc
from nodevisor.controlplane import InvalidRequest, Unauthenticated
from nodevisor.controlplane.testing import RunningControlPlane

pytestmark = pytest.mark.anyio


async def provision(
    cp: RunningControlPlane, otp: str
) -> host_pb2.ProvisionHostResponse:
    request = host_pb2.ProvisionHostRequest(otp=otp, info=host_pb2.HostInfo(name="h1"))
    async with grpc.aio.insecure_channel(cp.address) as channel:
        return await host_pb2_grpc.HostsStub(channel).Provision(request)


async def info_update(
    cp: RunningControlPlane, token: str | None, name: str
) -> host_pb2.HostInfoUpdateResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    request = host_pb2.HostInfoUpdateRequest(info=host_pb2.HostInfo(name=name))
    async with grpc.aio.insecure_channel(cp.address) as channel:
        stub = host_pb2_grpc.HostsStub(channel)
        return await stub.InfoUpdate(request, metadata=metadata)


async def test_provision_creates_the_host(cp: RunningControlPlane) -> None:
    response = await provision(cp, await cp.admin.create_otp())

    [host] = await cp.admin.list_hosts()
    assert host.id == response.host_id.value
    assert host.info.name == "h1"
    assert host.info.id.value == host.id
    assert response.token and not host.online


async def test_token_is_stored_only_as_a_hash(cp: RunningControlPlane) -> None:
    response = await provision(cp, await cp.admin.create_otp())

    stored = (cp.data_dir / "controlplane.sqlite3").read_bytes()
    assert response.token.encode() not in stored


async def test_reused_otp_is_rejected(cp: RunningControlPlane) -> None:
    otp = await cp.admin.create_otp()
    await provision(cp, otp)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await provision(cp, otp)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "one-time password was already used"


async def test_expired_otp_is_rejected(cp: RunningControlPlane) -> None:
    otp = await cp.admin.create_otp(ttl=0.05)
    await anyio.sleep(0.1)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await provision(cp, otp)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "one-time password expired at" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0"), (-1, "-1"), (1e-9, "1e-09"), (0.0009, "0.0009")]
)
async def test_an_otp_ttl_under_a_millisecond_is_refused_naming_it(
    cp: RunningControlPlane, seconds: float, shown: str
) -> None:
    """As the CLI refuses it; the value is the one given, not one rounded."""
    with pytest.raises(InvalidRequest) as caught:
        await cp.admin.create_otp(ttl=seconds)

    assert str(caught.value).endswith(
        f"the otp ttl must be at least 0.001s (1 ms), got {shown}s"
    )


async def test_unknown_otp_is_rejected(cp: RunningControlPlane) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await provision(cp, "not-an-otp")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not known" in (caught.value.details() or "")


async def test_info_update_replaces_the_host_info(cp: RunningControlPlane) -> None:
    host_id, token = await cp.provision()

    await info_update(cp, token, "renamed")

    [host] = await cp.admin.list_hosts()
    assert (host.id, host.info.name) == (host_id, "renamed")
    assert host.HasField("last_seen")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "missing 'authorization: Bearer <token>' metadata"),
        ("wrong", "the bearer token belongs to no host"),
    ],
)
async def test_info_update_needs_the_host_token(
    cp: RunningControlPlane, token: str | None, message: str
) -> None:
    await cp.provision()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await info_update(cp, token, "renamed")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (caught.value.details() or "").startswith(message)


async def test_admin_calls_need_the_admin_token(cp: RunningControlPlane) -> None:
    from nodevisor.controlplane import AdminClient

    async with AdminClient(cp.address, "wrong") as admin:
        with pytest.raises(Unauthenticated, match="the admin token is wrong"):
            await admin.list_hosts()
    assert (cp.data_dir / "admin-token").stat().st_mode & 0o777 == 0o600


async def test_a_wrong_admin_token_is_told_where_to_look_but_not_the_path(
    cp: RunningControlPlane,
) -> None:
    """The refusal names the token's file, for the operator; where the data
    dir is on the server is not for whoever sent the wrong token."""
    from nodevisor.controlplane import AdminClient

    async with AdminClient(cp.address, "wrong") as admin:
        with pytest.raises(Unauthenticated) as caught:
            await admin.create_otp()

    message = str(caught.value)
    assert "the admin token is wrong" in message and "'admin-token'" in message
    assert str(cp.data_dir) not in message
    assert str(cp.data_dir.parent) not in message
