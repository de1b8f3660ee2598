"""babel's side of a node: its processes, their output, their end.

The supervisor starts the spec's command in a process group of its own,
copies what it prints into a rotating log, stops it with the spec's signal
and grace period then SIGKILL, and starts it again, after a growing delay,
when it ends on its own while it should run.

The node's processes live no longer than babel: the kernel SIGKILLs the
node's process when babel ends, even by SIGKILL, and before the supervisor
starts the node it kills what is left of the group ``node.pid`` records (see
``_procs``), so that a new process never finds the node's data locked and
its ports taken by an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import logging.handlers
import os
import signal
import time
from pathlib import Path

from nodevisor import RuntimeFailure

from . import _procs
from ._spec import BabelSpec

__all__ = ["State", "Supervisor"]

log = logging.getLogger(__name__)
_MAX_DELAY = 60.0


class State(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"


class Supervisor:
    """One node's processes. Every change happens under ``_lock``."""

    def __init__(self, spec_file: Path, logs: Path) -> None:
        self.spec_file = spec_file
        self.spec = BabelSpec.read(spec_file)
        self.detail = ""
        self._wanted = State.STOPPED
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        logs.mkdir(parents=True, exist_ok=True)
        self._output = _rotating(logs / "node.log", self.spec)
        #: The running process's id, for an operator (or a test) to find it.
        self._pid_file = spec_file.parent / "node.pid"

    def __repr__(self) -> str:
        return f"<Supervisor node={self.spec.node_id} state={self.state.value}>"

    @property
    def state(self) -> State:
        running = self._process is not None and self._process.returncode is None
        return State.RUNNING if running else State.STOPPED

    async def start(self) -> None:
        async with self._lock:
            self._wanted = State.RUNNING
            if self.state is State.STOPPED:
                await self._spawn()

    async def stop(self) -> tuple[bool, str]:
        async with self._lock:
            self._wanted = State.STOPPED
            return await self._end()

    async def restart(self) -> None:
        async with self._lock:
            await self._end()
            self._wanted = State.RUNNING
            await self._spawn()

    async def upgrade(self) -> None:
        async with self._lock:
            ran = self._wanted is State.RUNNING
            await self._end()
            self.spec = BabelSpec.read(self.spec_file)
            log.info("node %s: spec read again for the upgrade", self.spec.node_id)
            if ran:
                await self._spawn()

    async def _spawn(self) -> None:
        """Start the node's process, after what is left of an earlier one.

        Called in the event loop's thread, babel's main thread, which lasts
        as long as babel: the kernel kills the process when the thread that
        started it ends (``_procs.die_with_parent``).
        """
        spec = self.spec
        await self._end_leftovers("left from before")
        environment = {**os.environ, **spec.environment}
        environment["PATH"] = os.pathsep.join([*spec.path, environment["PATH"]])
        environment[_procs.NODE_VARIABLE] = spec.node_id  # to know it by later
        argv = _procs.die_with_parent(
            spec.command, path=environment["PATH"], cwd=spec.workdir
        )
        self._process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=spec.workdir,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a group of its own, to signal it whole
        )
        self.detail = ""
        self._pid_file.write_text(str(self._process.pid))
        self._output.info(
            "babel: started %s as pid %d", spec.command, self._process.pid
        )
        log.info("node %s: started pid %d", spec.node_id, self._process.pid)
        self._watch = asyncio.create_task(self._follow(self._process))

    async def _end(self) -> tuple[bool, str]:
        process = self._process
        if process is None or process.returncode is not None:
            return True, self.detail
        spec = self.spec
        _signal_group(process.pid, spec.signal)
        try:
            await asyncio.wait_for(process.wait(), spec.grace_period)
            clean = True
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()
            clean = False
        self.detail = "killed by SIGKILL" if not clean else _ended(process.returncode)
        # The process's children may outlive it, holding the node's ports.
        await self._end_leftovers("left after its process ended")
        self._pid_file.unlink(missing_ok=True)
        self._output.info("babel: stopped: %s", self.detail)
        log.info("node %s: stopped: %s", spec.node_id, self.detail)
        if self._watch is not None:
            await self._watch
        return clean, self.detail

    async def _follow(self, process: asyncio.subprocess.Process) -> None:
        """Copy the output; restart the process if it ends on its own."""
        assert process.stdout is not None
        started = time.monotonic()
        async for line in process.stdout:
            self._output.info("%s", line.decode(errors="replace").rstrip("\n"))
        await process.wait()
        if self._wanted is not State.RUNNING or self._process is not process:
            return
        self.detail = _ended(process.returncode)
        self._output.info("babel: the process %s on its own", self.detail)
        quick = time.monotonic() - started < 10
        delay = min(self.spec.restart_delay * (2 if quick else 1), _MAX_DELAY)
        self._restart = asyncio.create_task(self._restart_later(delay, process))

    async def _restart_later(
        self, delay: float, ended: asyncio.subprocess.Process
    ) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            if self._wanted is State.RUNNING and self._process is ended:
                log.warning("node %s: starting it again", self.spec.node_id)
                try:
                    await self._spawn()
                except RuntimeFailure as exc:  # no one to tell but the logs
                    self.detail = str(exc)
                    self._output.info("babel: cannot start it again: %s", exc)
                    log.error(
                        "node %s: cannot start it again: %s", self.spec.node_id, exc
                    )

    async def _end_leftovers(self, which: str) -> None:
        """SIGKILL what lives of the node's process group in ``node.pid``.

        That is the children of a process that ended, or the processes of a
        babel that was killed before babel took its node's process with it.
        Raises RuntimeFailure if they outlive SIGKILL.
        """
        spec = self.spec
        try:
            killed = await asyncio.to_thread(
                _procs.kill_node_group, self._pid_file, spec.node_id, spec.workdir
            )
        except RuntimeFailure as exc:
            raise RuntimeFailure(f"node {spec.node_id}: {exc}") from exc
        if killed:
            self._output.info(
                "babel: killed the node's processes %s: %s", which, killed
            )
            log.warning(
                "node %s: killed its processes %s: %s", spec.node_id, which, killed
            )

    def log_line(self, message: str, *args: object) -> None:
        """A line in the node's log, for what babel did on request."""
        self._output.info(message, *args)


def _rotating(path: Path, spec: BabelSpec) -> logging.Logger:
    output = logging.getLogger(f"nodevisor_babel.node.{spec.node_id}")
    output.propagate = False
    output.setLevel(logging.INFO)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=spec.log_max_bytes, backupCount=spec.log_backups
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    output.addHandler(handler)
    return output


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
        os.killpg(pid, signum)


def _ended(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        return f"ended by {signal.Signals(-code).name}"
    return f"exited with code {code}"
