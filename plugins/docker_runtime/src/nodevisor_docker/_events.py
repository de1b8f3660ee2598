"""Container events: how the agent hears at once of a node that died.

dockerd streams the lifecycle events of containers over one long HTTP
response, which docker-py reads with blocking socket reads. Each feed reads
it in a daemon thread of its own: the thread blocks for the feed's whole
life, so it would hold one of anyio's pooled workers for good, and an engine
that hangs in the middle of a request cannot keep the agent from exiting.
The thread hands the node id of every event that matters to the event loop
through a memory object stream, as libvirt's events are handed over (the
agent runs on asyncio, as grpc.aio needs).

A feed ends when its iterator is closed or its task cancelled, and when the
runtime is closed: shutting the stream's socket from another thread
unblocks the read, and the thread is joined.

When the engine goes away (dockerd restarted) the stream ends. The thread
opens it again, waiting longer after each failure up to a cap, and asks for
the events since the last one it saw, which an engine that kept running
replays. A restarted engine has forgotten them, so once the engine answers
again the feed also names every node of the host, for the agent to check.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from . import _labels
from ._engine import connect
from ._sdk import docker, requests
from ._settings import DockerSettings

if TYPE_CHECKING:
    from docker.types.daemon import CancellableStream

__all__ = ["EVENTS", "ContainerEvents"]

_log = logging.getLogger(__name__)

#: The container events after which a node may not be what the agent
#: recorded. "die" covers every way a container's process ends: it exited or
#: crashed, was killed (``docker kill``), was killed by the kernel for want
#: of memory, was stopped (``docker stop``), or the engine shut down. "start"
#: is a container started behind the agent's back, "destroy" one removed
#: (``docker rm -f``). Left out: "kill" only says a signal was sent, and the
#: container may still run when the agent looks; "stop" and "oom" come with
#: the "die" that matters (an "oom" alone means a child process was killed
#: and the node runs on); a paused container counts as running.
EVENTS = ("die", "start", "destroy")

#: Node ids the thread may hand over before the agent takes them.
_BUFFER = 256
#: Seconds before the first try to reach a lost engine; the wait doubles
#: after each failure, up to ``_MAX_DELAY``.
_FIRST_DELAY = 0.5
_MAX_DELAY = 5.0
#: A stream open this long was healthy: the next wait starts short again.
_HEALTHY = 10.0
#: Seconds a closing feed waits for its thread.
_JOIN = 5.0


class ContainerEvents:
    """The event feeds of one runtime's host, ended together at its close."""

    def __init__(self, settings: DockerSettings, host_id: str) -> None:
        self._settings = settings
        self._host = host_id
        self._readers: set[_Reader] = set()

    def follow(self) -> AsyncIterator[str]:
        """The node id of each event from now on, until the iterator closes."""
        return self._follow(time.time_ns())

    async def aclose(self) -> None:
        """End every feed; a consumer still iterating sees its feed end."""
        with anyio.CancelScope(shield=True):
            for reader in list(self._readers):
                await reader.aclose()

    async def _follow(self, since: int) -> AsyncIterator[str]:
        send, receive = anyio.create_memory_object_stream[str](_BUFFER)
        reader = _Reader(self._settings, self._host, since, send)
        self._readers.add(reader)
        reader.start()
        try:
            async with receive:
                async for node_id in receive:
                    yield node_id
        finally:
            self._readers.discard(reader)
            with anyio.CancelScope(shield=True):
                await reader.aclose()


class _Closed(Exception):
    """The feed was closed: the thread ends."""


class _Reader:
    """One feed's thread: reads the engine's events, and reconnects."""

    def __init__(
        self,
        settings: DockerSettings,
        host_id: str,
        since: int,
        send: MemoryObjectSendStream[str],
    ) -> None:
        self._settings = settings
        self._host = host_id
        self._since = since
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: CancellableStream | None = None
        self._client: docker.DockerClient | None = None
        #: The engine was lost and has not answered since.
        self._lost = False
        self._thread = threading.Thread(
            target=self._run, name=f"nodevisor-docker-events-{host_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    async def aclose(self) -> None:
        """Stop the thread and wait for it; call it shielded."""
        await anyio.to_thread.run_sync(self._stop)
        await anyio.to_thread.run_sync(self._thread.join, _JOIN)
        if self._thread.is_alive():
            _log.warning(
                "the Docker event thread of host %s did not end within %gs; "
                "it ends with the process (is the engine at %s hanging?)",
                self._host,
                _JOIN,
                self._settings.address,
            )
        self._send.close()

    def _stop(self) -> None:
        with self._lock:
            self._stopping.set()
        self._drop_stream()

    # The thread.

    def _run(self) -> None:
        try:
            self._follow()
        except _Closed:
            pass
        except Exception:  # a bug; the reconciler's periodic passes carry on
            _log.exception(
                "the Docker event feed of host %s failed and ends", self._host
            )
        finally:
            self._drop_stream()
            if self._client is not None:
                self._client.close()
            self._call_soon(self._send.close)

    def _follow(self) -> None:
        delay = _FIRST_DELAY
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                self._read(self._open())
                reason: object = "it ended the event stream"
            except _engine_errors() as exc:
                reason = exc
            finally:
                self._drop_stream()
            if self._stopping.is_set():
                return
            self._engine_lost(reason)
            if time.monotonic() - began > _HEALTHY:
                delay = _FIRST_DELAY
            self._stopping.wait(delay)
            delay = min(_MAX_DELAY, delay * 2)

    def _open(self) -> CancellableStream:
        if self._client is None:
            self._client = connect(self._settings, 1)
        client = self._client
        stream = client.events(
            decode=True, since=_timestamp(self._since), filters=self._filters()
        )
        with self._lock:
            if self._stopping.is_set():
                stream.close()
                raise _Closed
            self._stream = stream
        if self._lost:
            self._engine_back(client)
        else:
            _log.debug("following the container events of host %s", self._host)
        return stream

    def _filters(self) -> dict[str, Any]:
        return {
            "type": "container",
            "event": list(EVENTS),
            "label": [f"{_labels.HOST_ID}={self._host}", _labels.NODE_ID],
        }

    def _read(self, stream: Iterable[Mapping[str, Any]]) -> None:
        for event in stream:
            if event.get("timeNano"):
                self._since = int(event["timeNano"]) + 1
            attributes = event.get("Actor", {}).get("Attributes", {})
            node_id = attributes.get(_labels.NODE_ID, "")
            if attributes.get(_labels.HOST_ID) != self._host or not node_id:
                continue
            _log.debug(
                "node %s: container %s: %s",
                node_id,
                attributes.get("name", "?"),
                event.get("Action"),
            )
            self._hand_over(node_id)

    def _engine_back(self, client: docker.DockerClient) -> None:
        # The stream is open before the nodes are listed: a node that changes
        # in between is named twice rather than not at all.
        _log.info(
            "the Docker engine at %s answers again; following the container "
            "events of host %s, and checking each of its nodes",
            self._settings.address,
            self._host,
        )
        for node_id in _node_ids(client, self._host):
            self._hand_over(node_id)
        self._lost = False

    def _engine_lost(self, reason: object) -> None:
        if self._lost:
            _log.debug("the Docker engine still does not answer: %s", reason)
            return
        self._lost = True
        _log.warning(
            "lost the container events of the Docker engine at %s (%s); is "
            "dockerd running? Trying again; until then the agent notices a "
            "node that stopped at its periodic pass",
            self._settings.address,
            reason,
        )

    def _hand_over(self, node_id: str) -> None:
        def send() -> None:
            try:
                self._send.send_nowait(node_id)
            except anyio.WouldBlock:
                _log.warning(
                    "node %s: container event dropped: %d others wait for the "
                    "agent; its periodic pass will check the node",
                    node_id,
                    _BUFFER,
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

        if not self._call_soon(send):
            raise _Closed

    def _call_soon(self, function: Callable[[], None]) -> bool:
        try:
            self._loop.call_soon_threadsafe(function)
        except RuntimeError:  # the loop is closed: nobody is listening
            return False
        return True

    def _drop_stream(self) -> None:
        # Called from either side: the lock hands the stream to one of them.
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                _log.debug("closing the event stream failed", exc_info=True)


def _node_ids(client: docker.DockerClient, host_id: str) -> list[str]:
    """The node id of every container of the host, in one engine request."""
    found = client.api.containers(
        all=True,
        filters={"label": [f"{_labels.HOST_ID}={host_id}", _labels.NODE_ID]},
    )
    return sorted({c["Labels"][_labels.NODE_ID] for c in found})


def _timestamp(nanoseconds: int) -> str:
    """A time in the form the engine's ``since`` takes."""
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return f"{seconds}.{rest:09d}"


def _engine_errors() -> tuple[type[Exception], ...]:
    # What docker-py raises when the engine cannot be reached or read; a
    # function, so that importing this module does not load docker-py.
    return (
        docker.errors.DockerException,
        requests.RequestException,
        docker.errors.StreamParseError,
        OSError,
    )
