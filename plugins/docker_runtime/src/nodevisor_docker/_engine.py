"""docker-py behind worker threads, with its errors translated.

Every docker-py call blocks, so each runs in a worker thread under a
capacity limiter the runtime owns. Errors from docker-py (and from requests,
under it) become ``RuntimeFailure`` here, at the boundary, with the cause
chained.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from nodevisor import RuntimeFailure, RuntimeUnavailable

from ._sdk import docker, requests
from ._settings import DockerSettings

__all__ = ["Engine", "connect"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


class Engine:
    """A lazily connected docker-py client and the threads that call it."""

    def __init__(self, settings: DockerSettings) -> None:
        self._settings = settings
        self._limiter = anyio.CapacityLimiter(settings.max_threads)
        self._lock = anyio.Lock()
        self._client: docker.DockerClient | None = None

    async def run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(client, *args)`` in a worker thread.

        ``what`` completes "failed to ..." in the error and the log lines.
        """
        _log.debug("%s: started", what)
        with _translated(what, self._settings.address):
            client = await self._connected()
            call = functools.partial(function, client, *args)
            result = await anyio.to_thread.run_sync(call, limiter=self._limiter)
        _log.debug("%s: complete", what)
        return result

    async def aclose(self) -> None:
        """Close the client; the next call would open a new one."""
        client, self._client = self._client, None
        if client is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(client.close, limiter=self._limiter)

    async def _connected(self) -> docker.DockerClient:
        async with self._lock:
            if self._client is None:
                connecting = functools.partial(
                    connect, self._settings, self._settings.max_threads
                )
                self._client = await anyio.to_thread.run_sync(
                    connecting, limiter=self._limiter
                )
        return self._client


def connect(settings: DockerSettings, connections: int) -> docker.DockerClient:
    """A new client of the engine that keeps up to ``connections`` open.

    Connecting asks the engine for its API version: it blocks.
    """
    options = {"timeout": settings.timeout, "max_pool_size": connections}
    if settings.base_url:
        return docker.DockerClient(base_url=settings.base_url, **options)
    return docker.from_env(**options)


@contextmanager
def _translated(what: str, address: str) -> Iterator[None]:
    try:
        yield
    except RuntimeFailure:
        _log.debug("%s: failed", what, exc_info=True)
        raise
    except (docker.errors.DockerException, requests.RequestException) as exc:
        _log.debug("%s: failed", what, exc_info=True)
        if _unreachable(exc):
            raise RuntimeUnavailable(
                f"failed to {what}: cannot reach the Docker engine at {address}: "
                f"is dockerd running? ({exc})"
            ) from exc
        raise RuntimeFailure(f"failed to {what}: {_explain(exc)}") from exc


def _unreachable(exc: Exception) -> bool:
    return isinstance(exc, requests.ConnectionError) or isinstance(
        exc.__cause__, requests.ConnectionError
    )


def _explain(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return f"{exc.explanation} (HTTP {exc.status_code})"
    return str(exc)
