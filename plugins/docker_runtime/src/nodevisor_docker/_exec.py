"""Commands run inside a node's container: ``docker exec`` with a deadline.

The engine has no deadline for an exec, and a cancel scope cannot stop a
worker thread blocked reading the exec's output. So a watchdog closes the
output stream when the deadline passes; the reader then returns, and the
command is reported as timed out. The command itself may still be running
in the container: the engine offers no way to end it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from nodevisor import ExecResult, NodeSpec, RuntimeFailure

from . import _describe, _ops
from ._engine import Engine
from ._sdk import docker

if TYPE_CHECKING:
    from docker.types import CancellableStream

__all__ = ["run_exec"]

_EXIT_CODE_WAIT = 5.0


async def run_exec(
    engine: Engine, spec: NodeSpec, argv: Sequence[str], limit: float
) -> ExecResult:
    """Run ``argv`` in the node's container; fail after ``limit`` seconds."""
    what = f"run {list(argv)!r} in the container of node {spec.id}"
    exec_id, stream = await engine.run(what, _open, spec, list(argv))
    timed_out = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(_close_at_deadline, stream, limit, timed_out)
        try:
            stdout, stderr = await engine.run(what, _collect, stream)
        except (RuntimeFailure, OSError, ValueError):
            if not timed_out.is_set():
                raise
        group.cancel_scope.cancel()
    if timed_out.is_set():
        raise RuntimeFailure(
            f"{list(argv)!r} in node {spec.id} did not end within {limit:g}s; "
            "it may still be running in the container"
        )
    code, pid = await engine.run(what, _exit_code, exec_id)
    if pid == 0:
        # The engine reports a program it could not start as exit code 126
        # or 127 with its own message as output; no process ever ran.
        raise RuntimeFailure(
            f"cannot start {list(argv)!r} in node {spec.id}: "
            f"{(stdout + stderr).strip()} (exit code {code})"
        )
    return ExecResult(exit_code=code, stdout=stdout, stderr=stderr)


async def _close_at_deadline(
    stream: CancellableStream, limit: float, timed_out: anyio.Event
) -> None:
    await anyio.sleep(limit)
    timed_out.set()
    await anyio.to_thread.run_sync(stream.close)


def _open(
    client: docker.DockerClient, spec: NodeSpec, argv: list[str]
) -> tuple[str, CancellableStream]:
    container = _ops.require(client, spec.id, spec.host_id)
    if not _describe.is_running(container):
        raise RuntimeFailure(
            f"cannot run {argv!r} in node {spec.id}: container {container.name} "
            "is not running; start the node first"
        )
    created = client.api.exec_create(container.id, argv, stdout=True, stderr=True)
    stream = client.api.exec_start(created["Id"], stream=True, demux=True)
    return created["Id"], stream


def _collect(
    _client: docker.DockerClient, stream: CancellableStream
) -> tuple[str, str]:
    stdout, stderr = bytearray(), bytearray()
    try:
        for out, err in stream:
            stdout += out or b""
            stderr += err or b""
    finally:
        stream.close()
    return _text(stdout), _text(stderr)


def _exit_code(client: docker.DockerClient, exec_id: str) -> tuple[int, int]:
    """The exec's exit code, and its process id (0 if it never started)."""
    # The output can end a moment before the engine records the exit code.
    deadline = time.monotonic() + _EXIT_CODE_WAIT
    while True:
        state = client.api.exec_inspect(exec_id)
        if not state["Running"] and state["ExitCode"] is not None:
            return int(state["ExitCode"]), int(state.get("Pid") or 0)
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"exec {exec_id[:12]} reported no exit code")
        time.sleep(0.05)


def _text(data: bytearray) -> str:
    return bytes(data).decode(errors="replace")
