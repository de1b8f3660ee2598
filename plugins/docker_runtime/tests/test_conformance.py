"""DockerRuntime passes the conformance kit, on the real engine.

Nodes run the Litecoin images with busybox's sleep as their command, which
keeps every check fast; the images' busybox also serves the data checks.
Every check must leave no container and no volume of its hosts behind (the
kit's host ids start with "conformance-"; other tests share the engine).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import docker
import docker.errors
import pytest

from nodevisor import NodeSpec, Runtime
from nodevisor.conformance import ConformanceSuite, Harness
from nodevisor_docker import DockerRuntime

pytestmark = pytest.mark.docker

IMAGES = ("nodevisor/litecoin-regtest:0.21.2-1", "nodevisor/litecoin-regtest:0.21.2-2")
HOST_LABEL = "io.nodevisor.host-id"
# A socket no engine listens on.
UNREACHABLE = "unix:///nonexistent/nodevisor-conformance/docker.sock"
# busybox's init (docker-init) forwards SIGTERM; the shell ignores it and
# waits on a sleep it started with SIGTERM ignored as well.
STUBBORN = ["sh", "-c", "trap '' TERM; busybox sleep 600 & wait"]


class DockerHarness(Harness):
    """Reads with the images' busybox; kills and removes containers with
    docker-py."""

    async def read_data(
        self, runtime: Runtime, spec: NodeSpec, name: str
    ) -> str | None:
        path = posixpath.join(spec.data_path, name)
        result = await runtime.exec(spec, ["busybox", "cat", path], 30)
        return result.stdout if result.exit_code == 0 else None

    async def remove_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        def remove() -> None:
            client = docker.from_env()
            try:
                client.containers.get(f"nodevisor-{spec.id}").remove(force=True)
            finally:
                client.close()

        await anyio.to_thread.run_sync(remove)

    async def stop_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        def kill() -> None:
            client = docker.from_env()
            try:
                client.containers.get(f"nodevisor-{spec.id}").kill()
            finally:
                client.close()

        await anyio.to_thread.run_sync(kill)


def _owned(client: docker.DockerClient) -> set[str]:
    selector = {"label": HOST_LABEL}
    containers = client.containers.list(all=True, filters=selector)
    volumes = client.volumes.list(filters=selector)
    found = [("container", c.name, c.labels) for c in containers]
    found += [("volume", v.name, v.attrs.get("Labels") or {}) for v in volumes]
    return {
        f"{kind} {name}"
        for kind, name, labels in found
        if labels.get(HOST_LABEL, "").startswith("conformance-")
    }


@pytest.fixture(autouse=True)
def leaves_nothing_behind(docker_client: docker.DockerClient) -> Iterator[None]:
    before = _owned(docker_client)
    yield
    left = _owned(docker_client) - before
    assert not left, f"the check left {sorted(left)} behind"


class TestDockerRuntime(ConformanceSuite):
    @pytest.fixture
    def harness(self, litecoin_images: None, tmp_path: Path) -> Harness:
        return DockerHarness(
            runtime_class=DockerRuntime,
            data_dir=tmp_path / "runtime",
            settings={},
            images=IMAGES,
            node={
                "command": ["busybox", "sleep", "600"],
                "data_path": "/data",
                "stop_signal": "SIGTERM",
                "grace_period": 5,
            },
            stubborn_node={"command": STUBBORN, "grace_period": 2},
            unreachable_settings={"base_url": UNREACHABLE},
        )
