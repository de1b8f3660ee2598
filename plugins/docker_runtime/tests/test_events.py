"""The runtime's event feed, against the real engine: a container that dies
behind the agent's back is named at once, and the feed outlives the engine."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio.abc import SocketStream, TaskGroup

pytestmark = pytest.mark.anyio

SLEEPER = ("busybox", "sleep", "600")
ENGINE = "/var/run/docker.sock"


async def started(runtime, spec) -> None:
    await runtime.create(spec)
    await runtime.start(spec)


async def kill(docker_client, node_id: str) -> None:
    container = docker_client.containers.get(f"nodevisor-{node_id}")
    await anyio.to_thread.run_sync(container.kill)


async def next_id(feed: AsyncIterator[str], seconds: float = 10.0) -> str:
    with anyio.fail_after(seconds):
        return await anext(feed)


def feed_threads(host_id: str) -> list[threading.Thread]:
    name = f"nodevisor-docker-events-{host_id}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


async def test_a_container_killed_out_of_band_is_named(
    runtime, make_spec, docker_client
) -> None:
    spec = make_spec(command=SLEEPER)
    await started(runtime, spec)
    feed = runtime.changes()

    await kill(docker_client, spec.id)
    named = await next_id(feed)
    await feed.aclose()

    assert named == spec.id


async def test_the_containers_of_another_host_are_not_named(
    runtime, open_runtime, new_host, make_spec, docker_client
) -> None:
    other_host = new_host()
    theirs = make_spec(host_id=other_host, command=SLEEPER)
    ours = make_spec(command=SLEEPER)
    await started(open_runtime(other_host), theirs)
    await started(runtime, ours)
    feed = runtime.changes()

    # Events arrive in order: had theirs been named, it would come first.
    await kill(docker_client, theirs.id)
    await kill(docker_client, ours.id)
    named = await next_id(feed)
    await feed.aclose()

    assert named == ours.id


async def test_the_feed_ends_when_closed_cancelled_or_its_runtime_closes(
    runtime, host_id
) -> None:
    closed = runtime.changes()
    with anyio.move_on_after(1):
        await anext(closed)
    threads_after_cancel = feed_threads(host_id)
    with anyio.fail_after(5):
        await closed.aclose()

    ended = anyio.Event()

    async def consume() -> None:
        async for _ in runtime.changes():
            pass
        ended.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consume)
        await anyio.sleep(0.5)
        consuming = feed_threads(host_id)
        with anyio.fail_after(10):
            await runtime.aclose()
            await ended.wait()

    assert threads_after_cancel == []
    assert len(consuming) == 1
    assert feed_threads(host_id) == []


async def test_the_feed_outlives_losing_the_engine(
    open_runtime, host_id, make_spec, docker_client, litecoin_images, caplog
) -> None:
    """The engine's socket is cut and refused for 3 s: the feed says so once,
    does not spin, and once the engine answers names the node that died in
    the meantime."""
    caplog.set_level(logging.INFO, logger="nodevisor_docker")
    async with SocketForwarder(ENGINE) as engine:
        runtime = open_runtime(host_id, base_url=f"unix://{engine.path}")
        spec = make_spec(command=SLEEPER)
        await started(runtime, spec)
        feed = runtime.changes()
        named = anyio.Event()

        async def consume() -> None:
            async for node_id in feed:
                if node_id == spec.id:
                    named.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume)
            with anyio.fail_after(10):
                await engine.watched.wait()
            engine.cut()
            await kill(docker_client, spec.id)
            await anyio.sleep(3)
            refused = engine.refused
            engine.resume()
            with anyio.fail_after(10):
                await named.wait()
            tasks.cancel_scope.cancel()

    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "nodevisor_docker._events"
    ]
    assert 1 <= refused <= 5, f"{refused} tries in 3 s"
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert "lost the container events" in lines[0][1]
    assert "answers again" in lines[1][1]


class SocketForwarder:
    """A Unix socket that forwards each connection to another one, until cut.

    ``watched`` is set once the engine answered a request for its events.
    ``cut()`` closes every open connection; until ``resume()`` new ones are
    accepted and closed at once, and counted in ``refused``.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.path = Path(tempfile.mkdtemp(prefix="nv-")) / "engine.sock"
        self.refused = 0
        self.watched = anyio.Event()
        self._cut = False
        self._open: set[anyio.CancelScope] = set()
        self._tasks: TaskGroup | None = None

    async def __aenter__(self) -> SocketForwarder:
        listener = await anyio.create_unix_listener(self.path)
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(None, None, None)
        self.path.unlink(missing_ok=True)
        self.path.parent.rmdir()

    def cut(self) -> None:
        self._cut = True
        for scope in list(self._open):
            scope.cancel()

    def resume(self) -> None:
        self._cut = False

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if self._cut:
                self.refused += 1
                return
            with anyio.CancelScope() as scope:
                self._open.add(scope)
                try:
                    async with await anyio.connect_unix(self.target) as engine:
                        await self._forward(client, engine)
                finally:
                    self._open.discard(scope)

    async def _forward(self, client: SocketStream, engine: SocketStream) -> None:
        events = False

        # Whichever side ends first ends the connection.
        async def pipe(source: SocketStream, sink: SocketStream) -> None:
            nonlocal events
            try:
                async for chunk in source:
                    events = events or b"/events?" in chunk
                    await sink.send(chunk)
                    if events and source is engine:
                        self.watched.set()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            pipes.cancel_scope.cancel()

        async with anyio.create_task_group() as pipes:
            pipes.start_soon(pipe, client, engine)
            pipes.start_soon(pipe, engine, client)
