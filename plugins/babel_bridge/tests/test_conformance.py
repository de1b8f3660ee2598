"""The nodevisor conformance kit, run against the babel runtime."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import anyio.to_thread
import pytest

from nodevisor import NodeSpec, Runtime
from nodevisor.conformance import ConformanceSuite, Harness
from nodevisor_babel import BabelRuntime

IMAGES = ("sleeper-1", "sleeper-2")


class BabelHarness(Harness):
    async def remove_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        """Kill babel and the node, and remove the node's folder, by hand."""
        folder = self.data_dir / spec.host_id / spec.id
        await anyio.to_thread.run_sync(_remove, folder)

    async def stop_out_of_band(self, runtime: Runtime, spec: NodeSpec) -> None:
        """Kill babel and the node, as a crash or the OOM killer would."""
        folder = self.data_dir / spec.host_id / spec.id
        await anyio.to_thread.run_sync(_kill, folder)


def _kill(folder: Path) -> None:
    for name in ("node.pid", "babel.pid"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            os.killpg(int((folder / name).read_text()), signal.SIGKILL)


def _remove(folder: Path) -> None:
    _kill(folder)
    shutil.rmtree(folder)


class TestBabelRuntime(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        for image in IMAGES:
            (tmp_path / "images" / image / "bin").mkdir(parents=True)
        return BabelHarness(
            runtime_class=BabelRuntime,
            data_dir=tmp_path / "runtime",
            settings={"images": str(tmp_path / "images")},
            images=IMAGES,
            node={
                "command": ["sleep", "600"],
                "data_path": ".",
                "stop_signal": "SIGTERM",
                "grace_period": 5,
            },
            # sleep ignores SIGWINCH from its first instant
            stubborn_node={"stop_signal": "SIGWINCH", "grace_period": 1.5},
        )
