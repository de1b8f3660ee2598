"""A node's processes and its babel, as Linux's ``/proc`` shows them.

A node's processes live no longer than its babel. babel has the kernel
SIGKILL the node's process when babel ends (``die_with_parent``). What is
left all the same (that process's own children, or the node of a babel that
ran before this rule) stays in the node's process group, which ``node.pid``
records: ``node_group`` finds it and ``kill_group`` ends it, before the node
starts again, when it is deleted, and when the runtime finds its babel gone.

A recorded pid may belong to another process by now (after a reboot, say),
so a group counts as the node's only while one of its live processes works
in the node's data directory or carries the node's id in its environment
(``NODE_VARIABLE``, which babel sets), and a process counts as a node's babel
only while its command line names the node's spec. Zombies count as ended:
they hold no ports, files or locks.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nodevisor import RuntimeFailure

__all__ = [
    "KILL_TIMEOUT",
    "NODE_VARIABLE",
    "babel_alive",
    "describe",
    "die_with_parent",
    "ended_within",
    "kill_group",
    "kill_node_group",
    "kill_process",
    "node_group",
    "reap",
]

#: Set by babel, in the environment of the node's processes, to the node's id.
NODE_VARIABLE = "NODEVISOR_BABEL_NODE"
#: Seconds that processes sent SIGKILL get to end.
KILL_TIMEOUT = 10.0
_PROC = Path("/proc")
_DEATHSIG = Path(__file__).with_name("_deathsig.py")


def die_with_parent(argv: Sequence[str], *, path: str, cwd: Path) -> list[str]:
    """The command line that runs ``argv`` with the parent-death signal set
    to SIGKILL, so that the kernel kills it when its parent ends.

    It runs ``_deathsig.py``, which sets the signal and execs the program in
    its place. The kernel sends the signal when the *thread* that started the
    process ends, so start it in a thread that lasts as long as its process:
    babel's event loop's, its main thread. The program is looked up here, in
    ``path`` (or from ``cwd`` if it names a folder), so that a missing one
    fails the start as it would without the wrapper.
    """
    program = argv[0]
    found = (
        str(cwd / program) if os.sep in program else shutil.which(program, path=path)
    )
    if found is None or not os.access(found, os.X_OK):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not sys.platform.startswith("linux"):
        return list(argv)
    wrapper = [sys.executable, "-I", "-S", str(_DEATHSIG), str(os.getpid())]
    return [*wrapper, found, *argv]


def node_group(pid_file: Path, node_id: str, workdir: Path) -> tuple[int, list[int]]:
    """The process group ``pid_file`` records and its live processes, if it
    is node ``node_id``'s; ``(0, [])`` if it is not, or nothing of it lives."""
    try:
        pgid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return 0, []
    members = _group(pgid)
    if not any(_works_for(pid, node_id, workdir) for pid in members):
        return 0, []
    return pgid, members


def kill_group(pgid: int, members: Sequence[int]) -> None:
    """SIGKILL process group ``pgid`` and wait until it has ended.

    Raises RuntimeFailure if some of it outlives SIGKILL by ``KILL_TIMEOUT``.
    """
    with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_TIMEOUT
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        raise RuntimeFailure(
            f"processes {describe(left)} of group {pgid} outlived SIGKILL "
            f"by {KILL_TIMEOUT:g}s"
        )


def kill_process(pid: int) -> None:
    """SIGKILL process ``pid`` and wait until it has ended.

    Raises RuntimeFailure if it outlives SIGKILL by ``KILL_TIMEOUT``.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not ended_within(pid, KILL_TIMEOUT):
        raise RuntimeFailure(
            f"process {describe([pid])} outlived SIGKILL by {KILL_TIMEOUT:g}s"
        )


def reap(pid: int, seconds: float = 2.0) -> None:
    """Collect the exit of ``pid`` if it is a child of this process and ended.

    A killed babel left unreaped stays a zombie until the agent next starts
    a process. Its threads end after it shows as a zombie, and until they
    have, it cannot be reaped: hence a few tries.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not this process's child, or reaped
            return
        if reaped or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def ended_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has ended, or ends within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (alive := _alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive


def kill_node_group(pid_file: Path, node_id: str, workdir: Path) -> str:
    """SIGKILL the group ``pid_file`` records if it is the node's and lives.

    Returns what was killed (``describe``), or "" when nothing was.
    """
    pgid, members = node_group(pid_file, node_id, workdir)
    if not members:
        return ""
    killed = describe(members)
    kill_group(pgid, members)
    return killed


def babel_alive(pid_file: Path, spec_file: Path) -> int:
    """The pid of the babel ``pid_file`` records if it lives and runs from
    ``spec_file``; 0 otherwise."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return 0
    argv = _argv(pid)
    named = any(
        option == "--spec" and value == str(spec_file)
        for option, value in itertools.pairwise(argv)
    )
    return pid if named and "nodevisor_babel" in argv and _alive(pid) else 0


def describe(pids: Sequence[int]) -> str:
    """``pid (command line)`` for each process, for a log line."""
    return ", ".join(f"{pid} ({' '.join(_argv(pid)) or '?'})" for pid in pids)


def _stat(pid: int) -> tuple[str, int] | None:
    """The process's state letter and process group, or None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
    fields = stat.rpartition(")")[2].split()
    try:
        return fields[0], int(fields[2])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in "ZXx"


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []  # the usual answer, without reading all of /proc
    except PermissionError:
        pass  # someone else's, or partly: look closer
    members = []
    for entry in os.listdir(_PROC):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            state, group = stat
            if group == pgid and state not in "ZXx":
                members.append(int(entry))
    return members


def _works_for(pid: int, node_id: str, workdir: Path) -> bool:
    """Whether the process works in ``workdir`` or carries the node's id."""
    folder = _PROC / str(pid)
    with contextlib.suppress(OSError):
        cwd = Path(os.readlink(folder / "cwd"))
        if cwd.is_relative_to(workdir.resolve()):
            return True
    with contextlib.suppress(OSError):
        marker = f"{NODE_VARIABLE}={node_id}".encode()
        if marker in (folder / "environ").read_bytes().split(b"\0"):
            return True
    return False


def _argv(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
