"""One process at a time on a data directory: an agent, or a control plane."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ._errors import AgentLocked, NodevisorError

__all__ = ["exclusive"]


@contextlib.contextmanager
def exclusive(
    data_dir: Path,
    holder: str = "agent",
    error: type[NodevisorError] = AgentLocked,
) -> Iterator[None]:
    """Hold ``<data_dir>/<holder>.lock`` so that one ``holder`` uses the state.

    A second one is refused with ``error``, which names the pid holding the
    lock. Spaces in ``holder`` become dashes in the lock file's name.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{holder.replace(' ', '-')}.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "unknown"
            raise error(
                f"another {holder} (pid {pid}) is running on {str(data_dir)!r}; "
                "stop it first"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield
