"""The event-loop and thread plumbing of ``nodevisor._loop``."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodevisor._loop import SWITCH_INTERVAL, Worker, running_loop
from nodevisor.cli import main


def test_running_loop_is_the_loop_running_now_whichever_it_is() -> None:
    async def which() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return running_loop(), asyncio.get_running_loop()

    first, second = asyncio.run(which()), asyncio.run(which())

    assert first[0] is first[1] and second[0] is second[1]
    assert first[0] is not second[0]  # a loop that ended is not kept
    with pytest.raises(RuntimeError):
        running_loop()  # as asyncio.get_running_loop outside a loop


def test_a_worker_runs_calls_in_order_in_one_thread_and_finishes_cancelled_ones() -> (
    None
):
    worker = Worker("test")
    ran: list[tuple[int, str]] = []
    release = threading.Event()

    def call(n: int) -> int:
        if n == 0:
            release.wait(5)
        ran.append((n, threading.current_thread().name))
        return n

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(worker.run(call, 0))
        await asyncio.sleep(0.05)
        first.cancel()  # its caller gives up; the call still runs
        later = asyncio.ensure_future(
            asyncio.gather(*(worker.run(call, n) for n in (1, 2)))
        )
        release.set()
        return await later

    try:
        assert asyncio.run(scenario()) == [1, 2]
    finally:
        worker.close()
    assert [n for n, _ in ran] == [0, 1, 2]
    assert len({name for _, name in ran}) == 1 and ran[0][1].startswith("test")
    thread = next(t for t in threading.enumerate() if t.name == ran[0][1])
    thread.join(5)
    assert not thread.is_alive()  # closed: its thread ended, nothing waits on it

    assert asyncio.run(worker.run(call, 3)) == 3  # a call after close still runs
    worker.close()


@pytest.mark.parametrize(
    ("argv", "runner"),
    [
        (["agent", "run"], "nodevisor._cli_agent._run"),
        (["control-plane", "serve"], "nodevisor.controlplane._cli._run"),
    ],
)
def test_the_agent_and_the_control_plane_take_short_thread_turns(
    argv: list[str], runner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'api_url = "127.0.0.1:1"\ndata_dir = "{tmp_path / "data"}"\n')
    extra = ["--config", str(config)] if argv[0] == "agent" else []
    extra += ["--data-dir", str(tmp_path / "cp")] if argv[0] != "agent" else []
    monkeypatch.setattr(runner, lambda *args, **kwargs: None)
    monkeypatch.setattr("nodevisor._cli_agent.leave_stuck_threads", lambda: None)
    before = sys.getswitchinterval()
    try:
        result = CliRunner().invoke(main, [*argv, *extra])
        assert result.exit_code == 0, result.output
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)
