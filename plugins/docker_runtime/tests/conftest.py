"""Fixtures for testing DockerRuntime against the real engine.

Every test gets its own host id; whatever carries it is removed afterwards,
even when the test fails. The Litecoin images are built once per session.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import docker
import pytest

from nodevisor import Catalogue, NodeSpec, RuntimeContext
from nodevisor_docker import DockerRuntime

REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "plugins/docker_runtime/images/build-litecoin.sh"
CATALOGUE = REPO / "core/src/nodevisor/catalogue"
HOST_LABEL = "io.nodevisor.host-id"
RPC = (
    "-regtest",
    "-datadir=/data",
    "-rpcuser=nodevisor",
    "-rpcpassword=nodevisor-regtest",
)


@pytest.fixture(scope="session")
def litecoin_images(docker_client: docker.DockerClient) -> None:
    """Build the two Litecoin images, or fail saying why."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{BUILD_SCRIPT} failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


@pytest.fixture
def hosts(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Host ids for this test; their containers and volumes go afterwards."""
    ids: list[str] = []
    yield ids
    for host_id in ids:
        _remove_host(docker_client, host_id)


def _remove_host(client: docker.DockerClient, host_id: str) -> None:
    selector = {"label": f"{HOST_LABEL}={host_id}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)


@pytest.fixture
def new_host(hosts: list[str]) -> Callable[[], str]:
    """Make a unique host id that is cleaned up after the test."""

    def make() -> str:
        hosts.append(f"test-host-{uuid.uuid4().hex[:10]}")
        return hosts[-1]

    return make


@pytest.fixture
def host_id(new_host: Callable[[], str]) -> str:
    return new_host()


@pytest.fixture
async def open_runtime(
    anyio_backend: str, tmp_path: Path
) -> AsyncIterator[Callable[..., DockerRuntime]]:
    """Build runtimes for a host; every one is closed after the test."""
    built: list[DockerRuntime] = []

    def make(host_id: str, **settings: Any) -> DockerRuntime:
        data_dir = tmp_path / f"runtime-{len(built)}"
        built.append(DockerRuntime(RuntimeContext(host_id, data_dir, settings)))
        return built[-1]

    yield make
    for runtime in built:
        await runtime.aclose()


@pytest.fixture
def runtime(
    litecoin_images: None, open_runtime: Callable[..., DockerRuntime], host_id: str
) -> DockerRuntime:
    return open_runtime(host_id)


@pytest.fixture
def make_spec(host_id: str) -> Callable[..., NodeSpec]:
    """A NodeSpec for a new node, from the built-in catalogue."""
    catalogue = Catalogue.load([CATALOGUE])

    def make(version: str = "0.21.2-1", **changes: Any) -> NodeSpec:
        release = catalogue.resolve(f"litecoin-regtest/{version}", "docker")
        node_id = changes.pop("id", None) or str(uuid.uuid4())
        spec = NodeSpec(
            id=node_id,
            name=f"test-{node_id[:8]}",
            host_id=host_id,
            protocol=release.protocol,
            version=release.version,
            image=release.image,
            command=release.command,
            ports=release.ports,
            data_path=release.data_path,
            stop_signal=release.stop_signal,
            grace_period=release.grace_period,
            environment=release.environment,
            options=release.options,
        )
        return replace(spec, **changes)

    return make


class NodeShell:
    """Runs commands inside node containers, off the event loop."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    async def run(self, node_id: str, *command: str) -> tuple[int, str]:
        """Run a command in the node's container; return exit code and output."""

        def call() -> tuple[int, str]:
            container = self.client.containers.get(f"nodevisor-{node_id}")
            code, output = container.exec_run(list(command))
            return code, output.decode(errors="replace")

        return await anyio.to_thread.run_sync(call)

    async def block_count(self, node_id: str) -> int:
        """Ask the node's litecoind for its block count, waiting for RPC."""
        with anyio.fail_after(60):
            while True:
                code, output = await self.run(
                    node_id, "litecoin-cli", *RPC, "getblockcount"
                )
                if code == 0:
                    return int(output)
                await anyio.sleep(0.5)


@pytest.fixture
def shell(docker_client: docker.DockerClient) -> NodeShell:
    return NodeShell(docker_client)
