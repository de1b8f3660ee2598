"""Deadlines on the calls the kit makes, even on calls stuck in a thread.

A cancel scope cannot stop a call blocked in a worker thread: anyio shields
the wait, so ``fail_after`` around it fires only once the thread returns,
which for a stop that never kills, or an exec that ignores its timeout, is
never. The kit therefore awaits each call in an asyncio task of its own:

- a call cancelled from outside (a check interrupting a create) is cancelled
  through anyio, as the agent would cancel it, and the kit waits for it to
  unwind;
- a call that outlives its deadline is cancelled outright and left behind,
  and the check fails at once, naming the call, so that its cleanup runs.

A worker thread left behind ends when its blocking call returns (deleting
the node in cleanup usually sees to that); the interpreter waits for it at
exit. The kit runs on asyncio, as the agent does.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import Generic, TypeVar

import anyio

__all__ = ["Call", "Overran", "bounded"]

T = TypeVar("T")


class Overran(AssertionError):
    """A call took longer than the kit gives it; the kit stopped waiting."""


class Call(Generic[T]):
    """One awaitable, running in a task of its own that can be abandoned."""

    def __init__(self, awaitable: Awaitable[T], what: str) -> None:
        self.what = what
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._task = _running_loop(awaitable, what).create_task(self._run(awaitable))
        self._task.add_done_callback(lambda _: self._done.set())

    async def _run(self, awaitable: Awaitable[T]) -> T | None:
        with self._scope:
            return await awaitable
        return None  # interrupted: the caller was cancelled and raises that

    async def result(self, seconds: float, why: str) -> T:
        """The call's result, or ``Overran`` once ``seconds`` have passed.

        ``why`` says where the limit comes from, for the failure message.
        """
        try:
            with anyio.move_on_after(seconds):
                await self._done.wait()
        except BaseException:  # cancelled from outside: interrupt the call too
            await self.interrupt(seconds)
            raise
        if not self._task.done():
            self._task.cancel()
            raise Overran(
                f"{self.what} did not return within {seconds:g}s ({why}); the kit "
                "stopped waiting for it and cleaned up"
            )
        return self._task.result()  # type: ignore[return-value]

    async def interrupt(self, seconds: float) -> bool:
        """Cancel the call as the agent would; whether it ended in ``seconds``.

        A call that does not end in time is abandoned.
        """
        self._scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(seconds):
            await self._done.wait()
        if not self._task.done():
            self._task.cancel()
            return False
        if not self._task.cancelled():
            self._task.exception()  # the caller raises its own cancellation
        return True


async def bounded(awaitable: Awaitable[T], seconds: float, what: str, why: str) -> T:
    """``await awaitable``, raising ``Overran`` if it takes over ``seconds``."""
    return await Call(awaitable, what).result(seconds, why)


def _running_loop(awaitable: Awaitable[object], what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never to run: no warning that it was not awaited
        raise RuntimeError(
            f"the conformance kit runs on asyncio, as the agent does, but {what} "
            "was awaited on another event loop: do not override the suite's "
            "anyio_backend fixture"
        ) from None
