"""Bringing every node to the status the agent expects of it.

At start-up and then periodically the reconciler asks each runtime what it
owns, compares that with the store, and for each node out of step asks
``NodeManager.converge`` for one step: start what should run, stop what
should not, finish or roll back an operation a crash interrupted, record
what changed behind the agent's back. Steps run in the node's dispatcher
lane, and only when the lane is idle: a node in the middle of a command is
left alone. A node whose steps keep failing is retried with a growing
delay, then given up on with the reason, until a command changes what is
expected of it. Nodes the runtimes own that the store does not know (the
store was lost) are adopted as they are; nothing found is ever destroyed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from ._dispatch import Dispatcher
from ._errors import RuntimeUnavailable
from ._nodes import NodeManager
from ._runtime import NodeState, Runtime, RuntimeNode
from ._states import NodeStatus
from ._store import NodeRecord

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)


@dataclass
class _Tries:
    expected: NodeStatus
    failures: int = 0
    #: Every failed try, counted for the delay before the next one.
    retries: int = 0
    #: The last try failed because the engine could not be reached.
    engine_down: bool = False
    not_before: float = 0.0
    given_up: bool = False
    #: When the node was found stopped although it should run.
    falls: list[float] = field(default_factory=list)


class Reconciler:
    #: Seconds within which ``attempts`` falls make a node given up on.
    FALL_WINDOW = 600.0
    #: The longest wait between two tries for one node, in seconds.
    MAX_DELAY = 60.0
    #: Seconds between two looks at a busy node that an event named.
    BUSY_POLL = 0.2

    def __init__(
        self,
        nodes: NodeManager,
        dispatcher: Dispatcher,
        *,
        interval: float = 15.0,
        attempts: int = 5,
        first_delay: float = 2.0,
    ) -> None:
        self.nodes = nodes
        self.dispatcher = dispatcher
        self.interval = interval
        self.attempts = attempts
        self.first_delay = first_delay
        self._tries: dict[str, _Tries] = {}
        #: Set after the first pass has been scheduled.
        self.started = anyio.Event()

    async def run(self) -> None:
        await self.nodes.mark_unmanaged()
        await self.reconcile(adopt=True)
        self.started.set()
        while True:
            await anyio.sleep(self.interval)
            await self.reconcile()

    async def follow(self, runtime: Runtime) -> None:
        """Check each node the runtime's event feed names, as it names it.

        A node named while it is busy (a command or a step of its own runs
        in its lane) or while it waits out the delay after a failed try is
        checked as soon as it is free, not left for the next periodic pass.
        A feed that fails or ends is asked for again with ``changes()``,
        after a delay that grows with each failure in a row, up to
        ``MAX_DELAY``; a feed that ran that long before it failed starts
        the count again. ``changes()`` returning ``None`` means no feed.
        """
        waiting: set[str] = set()
        failures = 0
        async with anyio.create_task_group() as later:
            while True:
                started = time.monotonic()
                ended = await self._follow_once(runtime, later, waiting)
                if ended is None:
                    return
                # A feed that ran a while before it stopped counts anew.
                ran = time.monotonic() - started
                failures = 1 if ran >= self.MAX_DELAY else failures + 1
                delay = self._delay(failures)
                log.warning(
                    "the event feed of runtime %r %s; asking for it again in %gs",
                    runtime.name,
                    ended,
                    delay,
                )
                await anyio.sleep(delay)

    async def _follow_once(
        self, runtime: Runtime, later: TaskGroup, waiting: set[str]
    ) -> str | None:
        """Act on what one feed names; say how it ended, ``None`` if no feed."""
        try:
            feed = runtime.changes()
            if feed is None:
                return None
            log.info("following the events of runtime %r", runtime.name)
            async for node_id in feed:
                self._named(node_id, later, waiting)
        except Exception as exc:  # the engine's feed broke; it is asked again
            return f"failed: {exc!r}"
        return "ended"

    def _named(self, node_id: str, later: TaskGroup, waiting: set[str]) -> None:
        if node_id in waiting or self.nudge(node_id):
            return
        tries = self._tries.get(node_id)
        if tries is None or not tries.given_up:
            waiting.add(node_id)
            later.start_soon(self._nudge_when_free, node_id, waiting)

    async def _nudge_when_free(self, node_id: str, waiting: set[str]) -> None:
        try:
            while not self.dispatcher.closed:
                left = self._delay_left(node_id)
                if left is not None:
                    await anyio.sleep(left)
                elif self.dispatcher.in_lane(node_id):
                    await anyio.sleep(self.BUSY_POLL)
                else:
                    break
        finally:
            waiting.discard(node_id)
        self.nudge(node_id)

    def _delay_left(self, node_id: str) -> float | None:
        """Seconds until the node may be tried again, if it must wait."""
        tries = self._tries.get(node_id)
        if tries is None or tries.given_up:
            return None
        left = tries.not_before - time.monotonic()
        return left if left > 0 else None

    def nudge(self, node_id: str) -> bool:
        """Check one node now (unless busy, backing off or given up on)."""
        tries = self._tries.get(node_id)
        if tries is not None and (
            tries.given_up or time.monotonic() < tries.not_before
        ):
            return False
        return self._schedule(node_id)

    async def reconcile(self, *, adopt: bool = False) -> int:
        """One pass over every node; how many steps were scheduled."""
        records = await self.nodes.nodes()
        scheduled = 0
        for name, runtime in self.nodes.runtimes.items():
            try:
                found = {n.id: n for n in await runtime.list_nodes()}
            except Exception as exc:  # the engine may be down; try next pass
                log.warning("runtime %r cannot list its nodes: %s", name, exc)
                continue
            self._engine_answered(name, records)
            if adopt:
                await self._adopt(name, found)
                records = await self.nodes.nodes()
            for node in records:
                if node.runtime == name and self._wanted(node, found.get(node.id)):
                    scheduled += self._schedule(node.id)
        return scheduled

    def _engine_answered(self, runtime: str, records: list[NodeRecord]) -> None:
        # The runtime listed its nodes: nodes that waited for its engine
        # are tried again now rather than after their delay.
        for node in records:
            tries = self._tries.get(node.id)
            if node.runtime == runtime and tries is not None and tries.engine_down:
                tries.engine_down = False
                tries.not_before = 0.0

    async def _adopt(self, runtime: str, found: dict[str, RuntimeNode]) -> None:
        known = await self.nodes.known_ids()
        for node_id in found.keys() - known:
            log.warning(
                "node %s of runtime %r is not in the store; adopting it",
                node_id,
                runtime,
            )
            await self.nodes.adopt(self.nodes.runtimes[runtime], found[node_id])

    def _wanted(self, node: NodeRecord, actual: RuntimeNode | None) -> bool:
        if not self.nodes.out_of_step(node, actual):
            self._tries.pop(node.id, None)
            return False
        tries = self._tries.get(node.id)
        if tries is None or tries.expected is not node.expected:
            tries = self._tries[node.id] = _Tries(node.expected)
        return not tries.given_up and time.monotonic() >= tries.not_before

    def _schedule(self, node_id: str) -> bool:
        return self.dispatcher.run_in_lane(node_id, lambda: self._step(node_id))

    #: Steps one check may take in a row: an interrupted upgrade rolled
    #: back, say, and then the start its node is expected to get.
    STEPS = 3

    async def _step(self, node_id: str) -> None:
        for _ in range(self.STEPS):
            node = await self.nodes.get(node_id)
            if node is None:
                return
            try:
                actual = await self.nodes.runtime(node.runtime).inspect(node_id)
                if not self.nodes.out_of_step(node, actual):
                    return
                if await self._fell(node, actual):
                    return
                done = await self.nodes.converge(node, actual)
            except Exception as exc:  # counted, retried later, reported at the limit
                await self._failed(node, exc)
                return
            if done:
                log.info("node %s (%s): %s", node.id, node.name, done)

    async def _fell(self, node: NodeRecord, actual: RuntimeNode | None) -> bool:
        """For a node that stopped by itself: whether to leave it for now.

        Each restart of such a node succeeds, so it would never count as a
        failure. The first fall is answered with a restart at once; each
        later one within ``FALL_WINDOW`` seconds is recorded and reported,
        and the restart waits a delay that doubles each time; at
        ``attempts`` falls the node is given up on, left stopped.
        """
        fell = node.status is NodeStatus.Running and (
            actual is None or actual.state is not NodeState.RUNNING
        )
        if not fell:
            return False
        tries = self._tries.setdefault(node.id, _Tries(node.expected))
        now = time.monotonic()
        tries.falls = [t for t in tries.falls if now - t < self.FALL_WINDOW]
        tries.falls.append(now)
        falls = len(tries.falls)
        if falls >= self.attempts:
            await self._give_up_falling(node, tries)
            return True
        if falls == 1:
            return False
        delay = min(self.MAX_DELAY, self.first_delay * 2 ** (falls - 2))
        tries.not_before = now + delay
        await self.nodes.record_actual(node, actual)
        log.warning(
            "node %s (%s): stopped by itself %d times within %g minutes; "
            "next start in %.0fs",
            node.id,
            node.name,
            falls,
            self.FALL_WINDOW / 60,
            delay,
        )
        return True

    async def _give_up_falling(self, node: NodeRecord, tries: _Tries) -> None:
        tries.given_up = True
        reason = (
            f"the node stopped by itself {len(tries.falls)} times within "
            f"{self.FALL_WINDOW / 60:g} minutes; it is left stopped until a "
            "command starts it"
        )
        log.error("node %s (%s): %s", node.id, node.name, reason)
        await self.nodes.give_up(node.id, reason, status=NodeStatus.Stopped)

    def _delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row."""
        return min(self.MAX_DELAY, self.first_delay * 2 ** (failures - 1))

    async def _failed(self, node: NodeRecord, exc: Exception) -> None:
        tries = self._tries.setdefault(node.id, _Tries(node.expected))
        tries.retries += 1
        # An engine that cannot be reached is not the node's fault: the node
        # waits for it, however long, and is not given up on.
        tries.engine_down = isinstance(exc, RuntimeUnavailable)
        if not tries.engine_down:
            tries.failures += 1
        if tries.failures >= self.attempts:
            tries.given_up = True
            reason = (
                f"gave up bringing the node to {node.expected.name} after "
                f"{tries.failures} attempts; last error: {exc}"
            )
            log.error("node %s (%s): %s", node.id, node.name, reason)
            await self.nodes.give_up(node.id, reason)
            return
        delay = self._delay(tries.retries)
        tries.not_before = time.monotonic() + delay
        log.warning(
            "node %s (%s): converging failed (%s); next try in %.0fs",
            node.id,
            node.name,
            exc,
            delay,
        )
