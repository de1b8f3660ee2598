"""babel inside each Docker node's container, through the real control plane,
an agent process and the engine: Litecoin regtest's revision 3 image."""

from __future__ import annotations

import pytest

from blockjoy.api.v1 import node_pb2

from .test_babel import (
    SyncStatus,
    command,
    delete,
    generic,
    online,
    reported_height,
    send,
    started,
)

pytestmark = pytest.mark.anyio

LITECOIN = "litecoin-regtest/0.21.2-3"
PLAIN = "litecoin-regtest/0.21.2-1"


async def test_litecoin_on_docker_babel_reports_height_after_mine(
    control_plane, docker_babel_host, docker_client
):
    host_id, agent = docker_babel_host
    cp = control_plane
    await online(cp, host_id, agent)
    node_id = await started(cp, host_id, LITECOIN)
    await reported_height(cp, host_id, node_id, 0, agent)

    code, response, _ = await send(cp, host_id, generic(node_id, "mine", n=5))
    assert code == 0, response
    await reported_height(cp, host_id, node_id, 5, agent)

    code, response, infos = await send(
        cp, host_id, command(node_id, info_get=node_pb2.NodeInfoGet())
    )
    assert code == 0, response
    assert infos and infos[-1].block_height == 5
    assert infos[-1].sync_status == SyncStatus.Synced

    # babel supervises litecoind inside the container, which runs babel
    container = docker_client.containers.get(f"nodevisor-{node_id}")
    assert container.attrs["Config"]["Cmd"][:3] == ["python3", "-m", "nodevisor_babel"]
    processes = container.top()["Processes"]
    assert any("litecoind" in " ".join(row) for row in processes)

    # a stop goes through babel, which stops litecoind cleanly
    code, response, _ = await send(
        cp, host_id, command(node_id, stop=node_pb2.NodeStop())
    )
    assert code == 0, response
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0
    await delete(cp, host_id, node_id)


async def test_commands_on_docker_babel_are_refused_as_on_the_host(
    control_plane, docker_babel_host
):
    host_id, agent = docker_babel_host
    cp = control_plane
    await online(cp, host_id, agent)
    node_id = await started(cp, host_id, LITECOIN)
    await reported_height(cp, host_id, node_id, 0, agent)

    code, response, _ = await send(cp, host_id, generic(node_id, "invalidateblock"))
    assert code == 5, response  # NOT_SUPPORTED
    assert "declares no generic command 'invalidateblock'" in response

    for params, message in [
        ({"n": "5; touch /tmp/pwned"}, "must be int, got '5; touch /tmp/pwned'"),
        ({"n": 0}, "at least 1"),
        ({"n": 5000}, "at most 431"),
        ({}, "needs parameter 'n'"),
    ]:
        code, response, _ = await send(cp, host_id, generic(node_id, "mine", **params))
        assert code == 8, response  # INVALID_ARGUMENT
        assert message in response

    code, response, infos = await send(
        cp, host_id, command(node_id, info_get=node_pb2.NodeInfoGet())
    )
    assert infos[-1].block_height == 0  # nothing was mined
    await delete(cp, host_id, node_id)


async def test_a_plain_docker_node_refuses_generic_commands(
    control_plane, docker_babel_host
):
    host_id, agent = docker_babel_host
    cp = control_plane
    await online(cp, host_id, agent)
    node_id = await started(cp, host_id, PLAIN)

    code, response, _ = await send(cp, host_id, generic(node_id, "mine", n=1))
    assert code == 5, response  # NOT_SUPPORTED
    assert "without babel" in response
    await delete(cp, host_id, node_id)
