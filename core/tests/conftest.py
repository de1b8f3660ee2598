"""Fixtures for the core's own tests: the agent's parts on the memory runtime."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from nodevisor import Catalogue, RuntimeContext
from nodevisor._nodes import NodeManager, StoreRunner
from nodevisor._store import NodeRecord, Store
from nodevisor.testing import MemoryRuntime

SPEC = """
protocol = "testchain"
[node]
command = ["testchaind"]
stop_signal = "SIGINT"
grace_period = 0.2
[versions."1".runtimes.memory]
image = "testchain:1"
[versions."2".runtimes.memory]
image = "testchain:2"
[versions."3".runtimes.memory]
image = "testchain:3"
[versions."3".runtimes.docker]
image = "testchain:3"
"""


@pytest.fixture
def catalogue_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "catalogue"
    folder.mkdir()
    (folder / "testchain.toml").write_text(SPEC)
    return folder


class Reports(list[NodeRecord]):
    """Every node record the manager reported, in order."""

    def statuses(self, node_id: str) -> list[str]:
        return [r.status.name for r in self if r.id == node_id]


@pytest.fixture
def memory(tmp_path: Path) -> MemoryRuntime:
    context = RuntimeContext(host_id="host-1", data_dir=tmp_path / "memory")
    return MemoryRuntime(context)


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    yield store
    store.close()


@pytest.fixture
def manager(tmp_path, catalogue_dir, memory, reports, store) -> NodeManager:
    return NodeManager(
        db=StoreRunner(store),
        catalogue=Catalogue.load([catalogue_dir]),
        runtimes={"memory": memory},
        unavailable={},
        default_runtime="memory",
        host_id="host-1",
        snapshot_dir=tmp_path / "snapshots",
        report=reports.append,
    )


@pytest.fixture
def new_id() -> str:
    return str(uuid.uuid4())
