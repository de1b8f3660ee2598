"""A Litecoin regtest node's whole life, through the real control plane, an
agent process and the Docker engine: every ack, status and result in order."""

from __future__ import annotations

import uuid

import anyio
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

Status = node_pb2.NodeInfo.ContainerStatus
V1, V2 = "litecoin-regtest/0.21.2-1", "litecoin-regtest/0.21.2-2"
CLI = [
    "litecoin-cli",
    "-regtest",
    "-rpcuser=nodevisor",
    "-rpcpassword=nodevisor-regtest",
]
ANYONE = "raw(51)#8lvh9jxk"  # an output anyone can spend: mining needs no wallet

ACK = ("ack",)
OK = ("result", 0)


def command(node_id: str, **variant) -> command_flow_pb2.Command:
    return command_flow_pb2.Command(
        node=node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)
    )


def create(node_id: str, name: str, url: str = V1) -> command_flow_pb2.Command:
    image = common_pb2.ContainerImage(url=url)
    return command(
        node_id,
        create=node_pb2.NodeCreate(
            name=name, blockchain="litecoin-regtest", image=image
        ),
    )


def upgrade(node_id: str, url: str) -> command_flow_pb2.Command:
    return command(
        node_id, upgrade=node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url=url))
    )


async def send(cp, host_id, cmd, seconds=180):
    """Every update about ``cmd`` as short tuples, and the final response."""
    seen, response = [], ""
    async for update in cp.admin.send_command(host_id, cmd, seconds):
        kind = update.WhichOneof("update")
        if kind == "command_info" and update.command_info.HasField("exit_code"):
            seen.append(("result", update.command_info.exit_code))
            response = update.command_info.response
        elif kind == "command_info":
            seen.append(ACK)
        elif kind == "node_info":
            seen.append(("node", Status.Name(update.node_info.container_status)))
    return seen, response


def statuses(*names: str) -> list[tuple[str, str]]:
    return [("node", name) for name in names]


async def wait_online(cp, host_id, agent):
    with anyio.fail_after(30):
        while not any(
            h.id == host_id and h.online for h in await cp.admin.list_hosts()
        ):
            assert agent.process.poll() is None, agent.output()
            await anyio.sleep(0.1)


async def chain(docker_client, node_id: str, *args: str) -> str:
    container = docker_client.containers.get(f"nodevisor-{node_id}")
    with anyio.fail_after(60):
        while True:
            code, output = await anyio.to_thread.run_sync(
                lambda: container.exec_run([*CLI, *args])
            )
            if code == 0:
                return output.decode().strip()
            await anyio.sleep(0.5)  # litecoind is still starting


async def test_a_litecoin_node_from_create_to_delete(
    control_plane, docker_host, docker_client
):
    host_id, agent = docker_host
    await wait_online(control_plane, host_id, agent)
    node_id, name = str(uuid.uuid4()), f"ltc-{uuid.uuid4().hex[:8]}"
    cp = control_plane

    assert (await send(cp, host_id, create(node_id, name)))[0] == [
        ACK,
        *statuses("Installing", "Creating", "Stopped"),
        OK,
    ]
    # create of an existing id does nothing; a taken name is a conflict
    assert (await send(cp, host_id, create(node_id, name)))[0] == [ACK, OK]
    seen, response = await send(cp, host_id, create(str(uuid.uuid4()), name))
    assert seen == [ACK, ("result", 9)] and f"{name!r} is taken" in response

    assert (await send(cp, host_id, command(node_id, start=node_pb2.NodeStart())))[
        0
    ] == [
        ACK,
        *statuses("Starting", "Running"),
        OK,
    ]
    # start of a running node is a no-op
    assert (await send(cp, host_id, command(node_id, start=node_pb2.NodeStart())))[
        0
    ] == [
        ACK,
        OK,
    ]

    # a real chain: mine blocks and leave a marker in the chain data
    await chain(docker_client, node_id, "generatetodescriptor", "5", ANYONE)
    assert await chain(docker_client, node_id, "getblockcount") == "5"
    container = docker_client.containers.get(f"nodevisor-{node_id}")
    code, _ = container.exec_run(["sh", "-c", "echo before-upgrade > /data/marker"])
    assert code == 0

    assert (await send(cp, host_id, command(node_id, restart=node_pb2.NodeRestart())))[
        0
    ] == [
        ACK,
        *statuses("Stopping", "Stopped", "Starting", "Running"),
        OK,
    ]

    seen, response = await send(cp, host_id, upgrade(node_id, V2))
    assert seen == [ACK, *statuses("Upgrading", "Upgraded", "Running"), OK], response
    container = docker_client.containers.get(f"nodevisor-{node_id}")
    assert container.image.tags == ["nodevisor/litecoin-regtest:0.21.2-2"]
    assert await chain(docker_client, node_id, "getblockcount") == "5"
    code, output = container.exec_run(["busybox", "cat", "/data/marker"])
    assert (code, output.decode().strip()) == (0, "before-upgrade")

    # an upgrade to an image the catalogue lacks fails before touching the node
    seen, response = await send(cp, host_id, upgrade(node_id, "litecoin-regtest/9.9"))
    assert seen == [ACK, ("result", 8)] and "no version '9.9'" in response
    container.reload()
    assert container.status == "running"

    assert (await send(cp, host_id, command(node_id, stop=node_pb2.NodeStop())))[0] == [
        ACK,
        *statuses("Stopping", "Stopped"),
        OK,
    ]
    assert (await send(cp, host_id, command(node_id, stop=node_pb2.NodeStop())))[0] == [
        ACK,
        OK,
    ]
    assert (await send(cp, host_id, command(node_id, delete=node_pb2.NodeDelete())))[
        0
    ] == [
        ACK,
        *statuses("Deleting", "Deleted"),
        OK,
    ]

    owned = {"label": f"io.nodevisor.node-id={node_id}"}
    assert docker_client.containers.list(all=True, filters=owned) == []
    assert docker_client.volumes.list(filters=owned) == []


async def test_bad_commands_get_specific_results(control_plane, docker_host):
    host_id, agent = docker_host
    await wait_online(control_plane, host_id, agent)
    cp, node_id = control_plane, str(uuid.uuid4())
    cases = [
        (command(node_id, start=node_pb2.NodeStart()), 3, "no node with id"),
        (create(node_id, "x", url="nochain/1"), 8, "'nochain' is not in the catalogue"),
        (create(node_id, ""), 8, "node name is empty"),
        (create(node_id, "n" * 64), 8, "at most 63"),
        (create(node_id, "../../etc"), 8, "may hold only ASCII letters"),
        (command(node_id), 2, "carries no command"),
    ]
    for cmd, code, message in cases:
        seen, response = await send(cp, host_id, cmd, seconds=30)
        assert seen == [ACK, ("result", code)], response
        assert message in response
    # a Command with no variant has no id: the agent answers it under an
    # empty id, without an ack
    seen, response = await send(cp, host_id, command_flow_pb2.Command(), seconds=30)
    assert seen == [("result", 2)]
    assert "neither a node nor a host command" in response
    assert await cp.admin.list_nodes(host_id) == []
    assert agent.process.poll() is None
