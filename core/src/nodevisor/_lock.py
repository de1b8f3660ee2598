"""One agent at a time on a data directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ._errors import AgentLocked

__all__ = ["exclusive"]


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Hold ``<data_dir>/agent.lock`` so that one agent at a time uses the state."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "agent.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise AgentLocked(
                f"another agent (pid {holder}) is running on {str(data_dir)!r}; "
                "stop it first"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield
