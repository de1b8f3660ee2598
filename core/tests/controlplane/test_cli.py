"""The operator CLI, run as a subprocess against an in-process control plane."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from blockjoy.api.v1 import common_pb2, host_pb2, node_pb2
from nodevisor.controlplane.testing import FakeAgent, RunningControlPlane

pytestmark = pytest.mark.anyio

OpenAgent = Callable[[str | None], Awaitable[FakeAgent]]
NODEVISOR = str(Path(sys.executable).with_name("nodevisor"))


def cli_env(cp: RunningControlPlane) -> dict[str, str]:
    return dict(
        os.environ,
        NODEVISOR_CP_URL=cp.address,
        NODEVISOR_CP_DATA_DIR=str(cp.data_dir),
        COLUMNS="200",
    )


async def run_cli(cp: RunningControlPlane, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [NODEVISOR, "control-plane", *args], env=cli_env(cp), check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_otp_create_prints_a_usable_otp_alone(cp: RunningControlPlane) -> None:
    code, out, _ = await run_cli(cp, "otp", "create", "--ttl", "60")

    assert code == 0
    otp = out.removesuffix("\n")
    assert otp and "\n" not in otp
    await cp.provision(otp=otp)


async def test_hosts_lists_the_host_and_its_status(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision(name="cli-host")
    agent = await open_agent(token)
    await agent.send(host=host_pb2.HostInfo(name="cli-host", ip="10.0.0.7"))
    await cp.wait_online(host_id)

    code, out, _ = await run_cli(cp, "hosts")

    assert code == 0
    [row] = [line for line in out.splitlines() if host_id in line]
    assert "cli-host" in row and "online" in row


async def test_hosts_says_below_the_table_why_each_plugin_failed(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision(name="cli-host")
    agent = await open_agent(token)
    plugins = [
        host_pb2.PluginStatus(name="docker", distribution="nodevisor-docker"),
        host_pb2.PluginStatus(
            name="libvirt",
            distribution="nodevisor-libvirt",
            error="cannot connect to qemu:///system",
        ),
    ]
    await agent.send(host=host_pb2.HostInfo(name="cli-host", plugins=plugins))
    await agent.aclose()  # the update is recorded

    code, out, _ = await run_cli(cp, "hosts")

    assert code == 0
    lines = out.splitlines()
    [reason] = [line for line in lines if line.startswith("failed on")]
    assert reason == (
        f"failed on cli-host ({host_id}): plugin 'libvirt' (nodevisor-libvirt):"
        " cannot connect to qemu:///system"
    )
    [row] = [line for line in lines if host_id in line and line != reason]
    assert lines.index(reason) > lines.index(row)
    assert "libvirt" in row and "docker" not in row


async def test_a_listing_for_an_unknown_host_fails_with_1_naming_it(
    cp: RunningControlPlane,
) -> None:
    unknown = str(uuid.uuid4())
    for listing in ("nodes", "commands"):
        code, _, err = await run_cli(cp, listing, "--host", unknown)
        assert code == 1, (listing, err)
        assert f"no host with id '{unknown}'" in err


async def test_serve_on_a_data_dir_in_use_fails_in_one_line(
    cp: RunningControlPlane,
) -> None:
    with anyio.fail_after(20):
        code, _, err = await run_cli(
            cp, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(cp.data_dir)
        )

    assert code == 1, err
    assert f"another control plane (pid {os.getpid()})" in err
    assert "Traceback" not in err
    assert await cp.admin.list_hosts() == []


async def test_send_prints_every_update_and_exits_with_the_result(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    agent = await open_agent(token)
    node_id = str(uuid.uuid4())
    args = ["send", "--host", host_id, "--timeout", "20", "stop", "--node", node_id]

    async with await anyio.open_process(
        [NODEVISOR, "control-plane", *args], env=cli_env(cp)
    ) as process:
        command = await agent.next_command(20)
        await agent.answer(command)
        status = node_pb2.NodeInfo.ContainerStatus.Value("Stopping")
        info = node_pb2.NodeInfo(
            id=common_pb2.Uuid(value=node_id), container_status=status
        )
        await agent.send(node=info)
        await agent.answer(command, exit_code=4, response="node is not running")
        code = await process.wait()
        assert process.stdout is not None
        out = b"".join([chunk async for chunk in process.stdout])

    lines = out.decode().splitlines()
    assert command.node.WhichOneof("command") == "stop"
    assert lines[1:] == [
        "ack",
        f"node {node_id} Stopping",
        "result exit_code=4 response=node is not running",
    ]
    assert code == 4


async def test_no_wait_queues_and_tables_show_history(
    cp: RunningControlPlane, open_agent: OpenAgent
) -> None:
    host_id, token = await cp.provision()
    node_id = str(uuid.uuid4())
    args = ["send", "--host", host_id, "--no-wait", "start", "--node", node_id]

    code, out, _ = await run_cli(cp, *args)
    agent = await open_agent(token)
    await agent.send(node=node_pb2.NodeInfo(id=common_pb2.Uuid(value=node_id)))
    await agent.answer(await agent.next_command(), exit_code=0)
    await agent.aclose()

    assert code == 0
    command_id = out.split()[-1]
    _, commands, _ = await run_cli(cp, "commands", "--host", host_id)
    [row] = [line for line in commands.splitlines() if command_id in line]
    assert "node start" in row and "FINISHED" in row
    _, nodes, _ = await run_cli(cp, "nodes")
    assert node_id in nodes


def _invoke(*args: str):
    from click.testing import CliRunner

    from nodevisor.cli import main

    return CliRunner().invoke(main, list(args), env={"NODEVISOR_CP_DATA_DIR": ""})


def test_send_subcommand_help_needs_no_host() -> None:
    result = _invoke("control-plane", "send", "create", "--help")
    assert result.exit_code == 0 and "--image" in result.output


def test_send_without_a_host_names_the_missing_option() -> None:
    result = _invoke("control-plane", "send", "start", "--node", str(uuid.uuid4()))
    assert result.exit_code == 2 and "Missing option '--host'" in result.output


@pytest.mark.parametrize(
    ("ttl", "shown"),
    [
        ("nan", "nan"),
        ("inf", "inf"),
        ("1e300", "1e+300"),
        ("2592001", "2.592e+06"),
        ("0", "0"),
        ("-5", "-5"),
        # under a millisecond: gRPC would carry it as 0
        ("1e-9", "1e-09"),
    ],
)
def test_an_otp_ttl_out_of_range_is_refused(
    tmp_path: Path, ttl: str, shown: str
) -> None:
    result = _invoke(
        "control-plane", "otp", "create", "--ttl", ttl, "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--ttl': must be at least 0.001 and at most "
        f"2592000 seconds (1 ms to 30 days), got {shown}"
    )


@pytest.mark.parametrize("ttl", ["0.001", "2592000"])
def test_an_otp_ttl_at_the_limits_is_taken(tmp_path: Path, ttl: str) -> None:
    from nodevisor.controlplane._tokens import ADMIN_TOKEN_FILE

    (tmp_path / ADMIN_TOKEN_FILE).write_text("token")
    options = ["--api", "127.0.0.1:1", "--data-dir", str(tmp_path)]

    result = _invoke("control-plane", "otp", "create", "--ttl", ttl, *options)

    assert result.exit_code == 69, result.output  # past the checks, to the server


@pytest.mark.parametrize("listing", ["nodes", "commands"])
def test_a_host_filter_that_is_not_a_uuid_is_a_usage_error(
    tmp_path: Path, listing: str
) -> None:
    result = _invoke(
        "control-plane", listing, "--host", "cli-host", "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 2, result.output
    assert "'--host'" in result.output and "'cli-host'" in result.output


@pytest.mark.parametrize(
    "timeout", ["0", "-5", "2592001", "nan", "inf", "1e-9", "0.0009"]
)
def test_a_send_timeout_out_of_range_is_refused(tmp_path: Path, timeout: str) -> None:
    result = _invoke(
        "control-plane",
        "send",
        "--host",
        str(uuid.uuid4()),
        "--data-dir",
        str(tmp_path),
        "--timeout",
        timeout,
        "start",
        "--node",
        str(uuid.uuid4()),
    )
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--timeout': must be at least 0.001 and at "
        f"most 2592000 seconds (1 ms to 30 days), got {float(timeout):g}"
    )


UNREACHABLE = ("--api", "127.0.0.1:1")


@pytest.mark.parametrize(
    "args",
    [
        ["hosts"],
        ["nodes"],
        ["nodes", "--host", str(uuid.uuid4())],
        ["commands"],
        ["otp", "create"],
        # thirty days, the longest --timeout taken
        ["send", "--host", str(uuid.uuid4()), "--timeout", "2592000"],
    ],
    ids=["hosts", "nodes", "nodes-of-a-host", "commands", "otp-create", "send"],
)
def test_every_client_command_exits_69_when_unreachable(
    tmp_path: Path, args: list[str]
) -> None:
    from nodevisor.controlplane._tokens import ADMIN_TOKEN_FILE

    (tmp_path / ADMIN_TOKEN_FILE).write_text("token")
    options = [*UNREACHABLE, "--data-dir", str(tmp_path)]
    if args[0] == "send":
        args = [*args, *options, "start", "--node", str(uuid.uuid4())]
    else:
        args = [*args, *options]

    result = _invoke("control-plane", *args)

    assert result.exit_code == 69, result.output
    assert "UNAVAILABLE" in result.output


def test_send_to_an_unreachable_control_plane_exits_69(tmp_path: Path) -> None:
    from nodevisor.controlplane._tokens import ADMIN_TOKEN_FILE

    (tmp_path / ADMIN_TOKEN_FILE).write_text("token")
    node = str(uuid.uuid4())
    result = _invoke(
        "control-plane",
        "send",
        "--host",
        str(uuid.uuid4()),
        "--api",
        "127.0.0.1:1",
        "--data-dir",
        str(tmp_path),
        "--timeout",
        "5",
        "start",
        "--node",
        node,
    )
    assert result.exit_code == 69, result.output
    assert "UNAVAILABLE" in result.output


CLIENT_COMMANDS = pytest.mark.parametrize(
    "args",
    [
        ["hosts"],
        ["nodes"],
        ["commands"],
        ["otp", "create"],
        ["send", "--host", str(uuid.uuid4()), "--timeout", "5"],
    ],
    ids=["hosts", "nodes", "commands", "otp-create", "send"],
)


def _client_args(args: list[str], *options: str) -> list[str]:
    if args[0] == "send":
        return [*args, *options, "start", "--node", str(uuid.uuid4())]
    return [*args, *options]


@CLIENT_COMMANDS
@pytest.mark.parametrize(
    ("api", "says"),
    [
        ("garbage", "'garbage' is not an address: expected host:port"),
        (
            "http://127.0.0.1:50551",
            "'http://127.0.0.1:50551' is a URL; write the control plane's "
            "address as host:port",
        ),
        ("127.0.0.1:99999", "'127.0.0.1:99999' has port 99999; a port is 1-65535"),
    ],
    ids=["not-an-address", "url", "port-out-of-range"],
)
def test_every_client_command_refuses_an_api_that_is_no_address(
    tmp_path: Path, args: list[str], api: str, says: str
) -> None:
    """Refused up front, as the agent refuses it, not dialled as a DNS name."""
    from nodevisor.controlplane._tokens import ADMIN_TOKEN_FILE

    (tmp_path / ADMIN_TOKEN_FILE).write_text("token")

    result = _invoke(
        "control-plane", *_client_args(args, "--api", api, "--data-dir", str(tmp_path))
    )

    assert result.exit_code == 2, result.output
    [error] = [line for line in result.output.splitlines() if "Error" in line]
    assert error.startswith("Error: Invalid value for '--api'") and says in error


def test_an_api_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nodevisor.cli import main

    env = {"NODEVISOR_CP_URL": "garbage", "NODEVISOR_CP_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["control-plane", "hosts"], env=env)

    assert result.exit_code == 2, result.output
    assert "'garbage' is not an address: expected host:port" in result.output


@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("127.0.0.1:99999", "'127.0.0.1:99999' has port 99999; a port is 0-65535"),
        ("[::1]:65536", "'[::1]:65536' has port 65536; a port is 0-65535"),
        ("nonsense", "'nonsense' is not host:port"),
        ("127.0.0.1", "'127.0.0.1' is not host:port"),
        (":50051", "':50051' is not host:port"),
        ("127.0.0.1:123456", "'127.0.0.1:123456' is not host:port"),
        ("http://127.0.0.1:50051", "'http://127.0.0.1:50051' is not host:port"),
        ("unix:/tmp/cp.sock", "'unix:/tmp/cp.sock' is not host:port"),
    ],
)
def test_serve_refuses_a_listen_address_before_creating_anything(
    tmp_path: Path, listen: str, says: str
) -> None:
    data_dir = tmp_path / "cp"
    args = ["serve", "--listen", listen, "--data-dir", str(data_dir)]
    # A subprocess, so that an address taken by mistake serves (and times out)
    # there rather than in the test.
    result = subprocess.run(
        [NODEVISOR, "control-plane", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: Invalid value for '--listen'") and says in error
    assert "host:port" in error
    assert not data_dir.exists()
