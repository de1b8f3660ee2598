"""Event-loop and thread plumbing for the agent and the control plane.

Python 3.11 makes a system call (``getpid``) every time code asks for the
running event loop: ``asyncio.get_running_loop()``, ``create_future`` on a
loop looked up that way, ``asyncio.current_task()``, and anyio's checks of
which library runs it. Under load a command asked hundreds of times, about a
tenth of each process's event loop. ``running_loop`` asks once per thread
and loop; ``Worker`` runs blocking calls in one thread of its own, in turn,
without anyio's per-call bookkeeping. ``take_short_turns`` makes threads
hand the interpreter over sooner, for processes whose store commits in a
thread of its own.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["SWITCH_INTERVAL", "Worker", "running_loop", "take_short_turns"]

T = TypeVar("T")

_local = threading.local()


def running_loop() -> asyncio.AbstractEventLoop:
    """The event loop running in this thread, as ``asyncio.get_running_loop``.

    A loop seen before in this thread that is still running is the one: a
    thread runs one loop at a time, and a loop runs in one thread.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or not loop.is_running():
        loop = _local.loop = asyncio.get_running_loop()
    return loop


class Worker:
    """One thread that runs blocking calls, in the order they are given.

    A call whose caller is cancelled still runs to its end in the thread;
    only its result is dropped.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:  # the thread starts with the first call
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        return await running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Let the thread end once it has run what it was given.

        Until it does, the process would wait for it at exit (it is not a
        daemon thread), and the agent counts it as a call left running. A
        call after ``close`` starts a new thread.
        """
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


#: Seconds a thread that wants the interpreter (the GIL) waits for the
#: thread that holds it to let go; Python's default is 5 ms.
SWITCH_INTERVAL = 0.0005


def take_short_turns() -> None:
    """Make threads take turns every ``SWITCH_INTERVAL`` seconds.

    For the agent and the control plane, which each commit in a worker
    thread while the event loop stays busy: a commit takes the interpreter
    back after every SQLite statement, and with the default turn of 5 ms a
    busy event loop stretched each commit, and so each command, by
    milliseconds (README, "Performance"). A process-wide setting: the
    command lines call it for the process they run, not the library.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
