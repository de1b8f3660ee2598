"""Settings shared by every test in the workspace."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # grpc.aio runs on asyncio only.
    return "asyncio"


def docker_required() -> bool:
    """In CI (or with NODEVISOR_REQUIRE_DOCKER=1) Docker tests must not skip."""
    return (
        os.environ.get("NODEVISOR_REQUIRE_DOCKER") == "1"
        or os.environ.get("CI") == "true"
    )


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client for the local engine.

    Skips the test when no engine answers, except in CI or with
    NODEVISOR_REQUIRE_DOCKER=1, where that is a failure.
    """
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        message = f"no Docker engine answers ({exc}); start dockerd or run scripts/test"
        if docker_required():
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()
