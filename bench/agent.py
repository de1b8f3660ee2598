"""Run the real agent, and say on stdout when it is ready.

``python bench/agent.py CONFIG [LOG_LEVEL]`` does what ``nodevisor agent run``
does (``Agent(config).run()`` until SIGTERM, then drain) and prints one JSON
line per milestone, with wall-clock times the benchmark can compare with
the moment it started this process:

- ``imported``: the interpreter is up and nodevisor is imported;
- ``reconciled``: the reconciler finished its first pass over every node
  (``Reconciler.started``), the agent's start-up reconciliation.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import anyio

from nodevisor._agent import Agent
from nodevisor._config import load_config
from nodevisor._logging import configure
from nodevisor._loop import take_short_turns

IMPORTED = time.time()


def _say(event: str, at: float) -> None:
    print(json.dumps({"event": event, "at": at}), flush=True)


async def _milestones(agent: Agent) -> None:
    _say("imported", IMPORTED)
    await agent.started.wait()
    assert agent.reconciler is not None
    await agent.reconciler.started.wait()
    _say("reconciled", time.time())


async def main(config: Path) -> None:
    agent = Agent(load_config(config))
    stop = anyio.Event()  # set on SIGTERM: the agent drains, then returns
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    milestones = asyncio.create_task(_milestones(agent))
    await agent.run(stop)
    milestones.cancel()


if __name__ == "__main__":
    level = sys.argv[2] if len(sys.argv) > 2 else "WARNING"
    configure(level)  # as `nodevisor` sets up its log
    take_short_turns()  # as `nodevisor agent run` does
    asyncio.run(main(Path(sys.argv[1])))
