"""Fixtures for the control plane tests: a real server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from nodevisor.controlplane.testing import (
    FakeAgent,
    RunningControlPlane,
    running_control_plane,
)


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    async with running_control_plane(tmp_path / "cp") as running:
        yield running


@pytest.fixture
async def open_agent(
    cp: RunningControlPlane,
) -> AsyncIterator[Callable[[str | None], Awaitable[FakeAgent]]]:
    """``await open_agent(token)`` opens a fake agent's stream, closed at the end."""
    agents: list[FakeAgent] = []

    async def open_one(token: str | None) -> FakeAgent:
        agents.append(FakeAgent(cp.address, token))
        return agents[-1]

    yield open_one
    for agent in agents:
        await agent.aclose()
