"""Protocol-aware nodes on the babel runtime, through the real control plane
and an agent process, with real chains: Litecoin regtest and anvil."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor.controlplane._commands import generic_command

pytestmark = pytest.mark.anyio

LITECOIN = "litecoin-regtest/0.21.2-1"
ANVIL = "ethereum-anvil/1.7.1"
SyncStatus = node_pb2.NodeInfo.SyncStatus


def command(node_id: str, **variant) -> command_flow_pb2.Command:
    return command_flow_pb2.Command(
        node=node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)
    )


def generic(node_id: str, name: str, **params) -> command_flow_pb2.Command:
    """A NodeGenericCommand: the name as `command`, each value packed plainly."""
    return generic_command(node_id, name, params)


async def send(cp, host_id, cmd, seconds=120):
    """The command's exit code and response, and the NodeInfos sent meanwhile."""
    infos, code, response = [], None, ""
    async for update in cp.admin.send_command(host_id, cmd, seconds):
        kind = update.WhichOneof("update")
        if kind == "command_info" and update.command_info.HasField("exit_code"):
            code, response = update.command_info.exit_code, update.command_info.response
        elif kind == "node_info":
            infos.append(update.node_info)
    return code, response, infos


async def online(cp, host_id, agent):
    with anyio.fail_after(30):
        while not any(
            h.id == host_id and h.online for h in await cp.admin.list_hosts()
        ):
            assert agent.process.poll() is None, agent.output()
            await anyio.sleep(0.1)


async def started(cp, host_id, url: str) -> str:
    node_id = str(uuid.uuid4())
    image = common_pb2.ContainerImage(url=url)
    create = node_pb2.NodeCreate(name=f"n-{node_id[:8]}", image=image)
    code, response, _ = await send(cp, host_id, command(node_id, create=create))
    assert code == 0, response
    code, response, _ = await send(
        cp, host_id, command(node_id, start=node_pb2.NodeStart())
    )
    assert code == 0, response
    return node_id


async def reported_height(cp, host_id, node_id, height: int, agent) -> None:
    """Wait until the NodeInfo the control plane got says ``height``."""
    with anyio.fail_after(90):
        while True:
            listed = await cp.admin.list_nodes(host_id)
            info = {node.info.id.value: node.info for node in listed}.get(node_id)
            if info and info.HasField("block_height") and info.block_height == height:
                return
            assert agent.process.poll() is None, agent.output()
            await anyio.sleep(0.2)


async def delete(cp, host_id, node_id) -> None:
    code, response, _ = await send(
        cp, host_id, command(node_id, delete=node_pb2.NodeDelete())
    )
    assert code == 0, response


def node_log(tmp_path: Path, host_id: str, node_id: str) -> str:
    folder = tmp_path / "agent" / "runtimes" / "babel" / host_id / node_id
    return (folder / "logs" / "node.log").read_text(errors="replace")


async def test_litecoin_on_babel_reports_height_after_mine(
    control_plane, babel_host, tmp_path
):
    host_id, agent = babel_host
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

    # an int parameter may come as decimal text, too
    code, response, _ = await send(cp, host_id, generic(node_id, "mine", n="2"))
    assert code == 0, response
    await reported_height(cp, host_id, node_id, 7, agent)
    await delete(cp, host_id, node_id)


async def test_undeclared_and_misfit_commands_are_refused_and_nothing_runs(
    control_plane, babel_host, tmp_path
):
    host_id, agent = babel_host
    cp = control_plane
    await online(cp, host_id, agent)
    node_id = await started(cp, host_id, LITECOIN)
    await reported_height(cp, host_id, node_id, 0, agent)

    code, response, _ = await send(cp, host_id, generic(node_id, "invalidateblock"))
    assert code == 5, response  # NOT_SUPPORTED
    assert "declares no generic command 'invalidateblock'" in response

    for params, message in [
        ({"n": "5; touch /tmp/pwned"}, "must be int, got '5; touch /tmp/pwned'"),
        ({"n": "$(reboot)"}, "must be int"),
        ({"n": 0}, "at least 1"),
        ({"n": 5000}, "at most 431"),
        ({"n": 1.0}, "must be int"),
        ({"n": 1, "descriptor": "raw(51)"}, "has no parameter 'descriptor'"),
        ({}, "needs parameter 'n'"),
    ]:
        code, response, _ = await send(cp, host_id, generic(node_id, "mine", **params))
        assert code == 8, response  # INVALID_ARGUMENT
        assert message in response

    code, response, infos = await send(
        cp, host_id, command(node_id, info_get=node_pb2.NodeInfoGet())
    )
    assert infos[-1].block_height == 0  # nothing was mined
    assert "command" not in node_log(tmp_path, host_id, node_id)
    await delete(cp, host_id, node_id)


async def test_anvil_on_babel_reports_height_after_mine(
    control_plane, babel_host, tmp_path
):
    host_id, agent = babel_host
    cp = control_plane
    await online(cp, host_id, agent)
    node_id = await started(cp, host_id, ANVIL)
    await reported_height(cp, host_id, node_id, 0, agent)

    code, response, _ = await send(cp, host_id, generic(node_id, "mine", n=12))
    assert code == 0, response
    await reported_height(cp, host_id, node_id, 12, agent)

    # a restart keeps the chain: anvil writes its state on SIGINT
    code, response, _ = await send(
        cp, host_id, command(node_id, restart=node_pb2.NodeRestart())
    )
    assert code == 0, response
    for _ in range(120):  # until anvil listens again; before, mine says it failed
        code, response, _ = await send(cp, host_id, generic(node_id, "mine", n=1))
        if code == 0:
            break
        await anyio.sleep(0.5)
    assert code == 0, response
    await reported_height(cp, host_id, node_id, 13, agent)
    await delete(cp, host_id, node_id)
