"""Fixtures for end-to-end tests: a real control plane, agent process and engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from nodevisor.controlplane.testing import running_control_plane

ROOT = Path(__file__).resolve().parent.parent
BUILD_IMAGES = ROOT / "plugins" / "docker_runtime" / "images" / "build-litecoin.sh"
HOST_LABEL = "io.nodevisor.host-id"


def nodevisor(*args: str) -> list[str]:
    return [sys.executable, "-m", "nodevisor", *args]


@pytest.fixture(scope="session")
def litecoin_images(docker_client) -> None:
    """The two Litecoin regtest images, built locally if missing."""
    result = subprocess.run([BUILD_IMAGES], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the Litecoin images failed:\n{result.stderr}")


@pytest.fixture
async def control_plane(tmp_path):
    async with running_control_plane(tmp_path / "control-plane") as cp:
        yield cp


class AgentProcess:
    """``nodevisor agent run`` in a child process, provisioned for a new host."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                nodevisor("-vv", "agent", "run", "--config", str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def docker_host(tmp_path, control_plane, docker_client, litecoin_images):
    """A provisioned host whose agent runs the Docker runtime; cleaned up after."""
    async with _docker_agent(tmp_path, control_plane, docker_client) as host:
        yield host


@pytest.fixture
async def reconciling_docker_host(
    tmp_path, control_plane, docker_client, litecoin_images
):
    """As ``docker_host``, with a reconciler pass every second."""
    extra = "reconcile_interval = 1\nreconcile_attempts = 100\n"
    async with _docker_agent(tmp_path, control_plane, docker_client, extra) as host:
        yield host


@pytest.fixture
async def docker_babel_host(tmp_path, control_plane, docker_client, litecoin_images):
    """As ``docker_host``, asking nodes' protocol status every second; the
    babel folders of its nodes are removed after."""
    extra = "protocol_interval = 1\n"
    async with _docker_agent(tmp_path, control_plane, docker_client, extra) as host:
        try:
            yield host
        finally:
            shutil.rmtree(BABEL_FOLDERS / host[0], ignore_errors=True)


BABEL_FOLDERS = Path("/run/nodevisor-docker")


@contextlib.asynccontextmanager
async def _docker_agent(tmp_path, control_plane, docker_client, extra: str = ""):
    data_dir = tmp_path / "agent"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'api_url = "{control_plane.address}"\n'
        f'data_dir = "{data_dir}"\n'
        'runtime = "docker"\n' + extra
    )
    otp = await control_plane.admin.create_otp()
    provisioned = await anyio.run_process(
        nodevisor("agent", "provision", "--config", str(config), "--otp", otp),
        check=False,
    )
    assert provisioned.returncode == 0, provisioned.stderr.decode()
    host_id = provisioned.stdout.decode().split()[-1]
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        yield host_id, agent
    finally:
        agent.stop()
        _remove_leftovers(docker_client, host_id)


ANVIL = ROOT / "tools" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin"


@pytest.fixture
async def babel_host(tmp_path, control_plane):
    """A provisioned host whose agent runs the babel runtime: no container engine.

    Its ``anvil-1.7.1`` image is the anvil that tools/package.json installs.
    """
    data_dir = tmp_path / "agent"
    images = tmp_path / "images"
    (images / "anvil-1.7.1").mkdir(parents=True)
    (images / "anvil-1.7.1" / "bin").symlink_to(ANVIL)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'api_url = "{control_plane.address}"\n'
        f'data_dir = "{data_dir}"\n'
        'runtime = "babel"\n'
        "protocol_interval = 1\n"
        f'[runtimes.babel]\nimages = "{images}"\n'
    )
    host_id = await _provision(control_plane, config)
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        yield host_id, agent
    finally:
        agent.stop()
        _kill_babel_nodes(data_dir / "runtimes" / "babel" / host_id)


async def _provision(control_plane, config: Path) -> str:
    otp = await control_plane.admin.create_otp()
    provisioned = await anyio.run_process(
        nodevisor("agent", "provision", "--config", str(config), "--otp", otp),
        check=False,
    )
    assert provisioned.returncode == 0, provisioned.stderr.decode()
    return provisioned.stdout.decode().split()[-1]


def _kill_babel_nodes(root: Path) -> None:
    """End every babel and node process a test left behind."""
    for pid_file in [*root.glob("*/node.pid"), *root.glob("*/babel.pid")]:
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _remove_leftovers(client, host_id: str) -> None:
    selector = {"label": f"{HOST_LABEL}={host_id}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)
