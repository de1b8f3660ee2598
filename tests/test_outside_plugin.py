"""The plugin guide's example, built and installed as an outsider would.

Every file marked in docs/plugins.md is extracted into a folder, installed
with nodevisor from this workspace into a fresh virtualenv, and then used
from that virtualenv only: ``nodevisor agent plugins``, an agent process
that runs nodes on it for a real control plane, and the example's own
conformance tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import anyio
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
MARKER = re.compile(r"<!-- file: (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)
Status = node_pb2.NodeInfo.ContainerStatus


def extract(guide: Path, folder: Path) -> list[str]:
    """Write every file marked in ``guide`` under ``folder``; their paths."""
    paths = []
    for match in MARKER.finditer(guide.read_text()):
        path = folder / match["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(match["body"])
        paths.append(match["path"])
    return paths


def clean_environment() -> dict[str, str]:
    """This process's environment without nodevisor or virtualenv settings."""
    drop = ("NODEVISOR_", "VIRTUAL_ENV", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | {"COLUMNS": "200"}


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, Path]:
    """The extracted example and a virtualenv holding it and nodevisor."""
    root = tmp_path_factory.mktemp("outside")
    folder, venv = root / "example", root / "venv"
    assert "pyproject.toml" in extract(GUIDE, folder)
    made = run("uv", "venv", "--quiet", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = run(
        "uv", "pip", "install", "--python", python, ROOT / "core", f"{folder}[test]"
    )
    assert installed.returncode == 0, installed.stderr
    return folder, venv


def test_agent_plugins_lists_the_runtime(example):
    _, venv = example
    result = run(venv / "bin" / "nodevisor", "agent", "plugins")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if " process " in line]
    assert rows, result.stdout
    assert "nodevisor_example_process" in rows[0]


def test_the_example_passes_the_conformance_kit(example):
    folder, venv = example
    result = run(
        venv / "bin" / "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests",
        cwd=folder,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def write_config(root: Path, folder: Path, api: str) -> Path:
    images = root / "images"
    for image in ("sleeper-1", "sleeper-2"):
        (images / image / "bin").mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(
        f'api_url = "{api}"\n'
        f'data_dir = "{root / "agent"}"\n'
        'runtime = "process"\n'
        f'catalogue = ["{folder / "protocols"}"]\n'
        "[runtimes.process]\n"
        f'images = "{images}"\n'
    )
    return config


def command(node_id: str, **variant) -> command_flow_pb2.Command:
    node = node_pb2.NodeCommand(id=common_pb2.Uuid(value=node_id), **variant)
    return command_flow_pb2.Command(node=node)


async def statuses(cp, host_id: str, cmd) -> list[str]:
    """The statuses reported for ``cmd``, then its exit code."""
    seen = []
    async for update in cp.admin.send_command(host_id, cmd, 20):
        if update.WhichOneof("update") == "node_info":
            seen.append(Status.Name(update.node_info.container_status))
        elif update.command_info.HasField("exit_code"):
            seen.append(str(update.command_info.exit_code))
    return seen


@pytest.mark.anyio
async def test_an_agent_runs_a_node_on_the_example(example, control_plane, tmp_path):
    folder, venv = example
    nodevisor = venv / "bin" / "nodevisor"
    config = write_config(tmp_path, folder, control_plane.address)
    otp = await control_plane.admin.create_otp()
    provisioned = await anyio.to_thread.run_sync(
        lambda: run(nodevisor, "agent", "provision", "--otp", otp, "--config", config)
    )
    assert provisioned.returncode == 0, provisioned.stderr
    [host] = await control_plane.admin.list_hosts()
    log = tmp_path / "agent.log"
    with log.open("wb") as output:
        agent = await anyio.open_process(
            [nodevisor, "-v", "agent", "run", "--config", config],
            env=clean_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        await control_plane.wait_online(host.id, seconds=20)
        await drive_a_node(control_plane, host.id, tmp_path)
    finally:
        agent.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await agent.wait()
        print(log.read_text(errors="replace"))  # shown when the test fails


async def drive_a_node(cp, host_id: str, root: Path) -> None:
    node_id = str(uuid.uuid4())
    image = common_pb2.ContainerImage(url="sleeper/1")
    create = node_pb2.NodeCreate(name="sleepy", image=image)
    folder = root / "agent" / "runtimes" / "process" / host_id / node_id

    assert await statuses(cp, host_id, command(node_id, create=create)) == [
        "Installing",
        "Creating",
        "Stopped",
        "0",
    ]
    assert (folder / "data").is_dir()
    start = command(node_id, start=node_pb2.NodeStart())
    assert await statuses(cp, host_id, start) == ["Starting", "Running", "0"]
    pid = int((folder / "pid").read_text().split()[0])
    stop = command(node_id, stop=node_pb2.NodeStop())
    assert await statuses(cp, host_id, stop) == ["Stopping", "Stopped", "0"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    delete = command(node_id, delete=node_pb2.NodeDelete())
    assert await statuses(cp, host_id, delete) == ["Deleting", "Deleted", "0"]
    assert not folder.exists()
