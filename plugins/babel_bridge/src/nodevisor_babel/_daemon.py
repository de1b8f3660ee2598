"""babel: a gRPC server on a Unix socket, in front of one node's supervisor.

    python -m nodevisor_babel --spec babel.json --socket babel.sock --logs logs/

It runs until ``Shutdown`` (or SIGTERM), independent of the agent that
started it: an agent restart leaves the node running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc

import nodevisor

from . import _calls
from ._supervisor import State, Supervisor
from .v1 import babel_pb2, babel_pb2_grpc

__all__ = ["main", "serve"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_STATES = {
    State.RUNNING: babel_pb2.PROCESS_STATE_RUNNING,
    State.STOPPED: babel_pb2.PROCESS_STATE_STOPPED,
}


class Babel(babel_pb2_grpc.BabelServiceServicer):
    def __init__(self, supervisor: Supervisor, done: asyncio.Event) -> None:
        self.supervisor = supervisor
        self._done = done

    async def Start(self, request: Any, context: Any) -> babel_pb2.StartResponse:
        await _carried_out(self.supervisor.start(), context)
        return babel_pb2.StartResponse()

    async def Stop(self, request: Any, context: Any) -> babel_pb2.StopResponse:
        clean, detail = await _carried_out(self.supervisor.stop(), context)
        return babel_pb2.StopResponse(clean=clean, detail=detail)

    async def Restart(self, request: Any, context: Any) -> babel_pb2.RestartResponse:
        await _carried_out(self.supervisor.restart(), context)
        return babel_pb2.RestartResponse()

    async def Upgrade(self, request: Any, context: Any) -> babel_pb2.UpgradeResponse:
        await _carried_out(self.supervisor.upgrade(), context)
        return babel_pb2.UpgradeResponse()

    async def Status(self, request: Any, context: Any) -> babel_pb2.StatusResponse:
        state = self.supervisor.state
        answer = babel_pb2.StatusResponse(
            state=_STATES[state], detail=self.supervisor.detail
        )
        if request.protocol and state is State.RUNNING:
            values, errors = await _calls.ask(self.supervisor.spec)
            _fill(answer, values)
            answer.errors.extend(errors)
        return answer

    async def RunCommand(
        self, request: Any, context: Any
    ) -> babel_pb2.RunCommandResponse:
        spec = self.supervisor.spec
        name = request.name
        try:
            declared = spec.interface.command(spec.protocol, name)
            values = declared.check(name, _plain(request.params))
        except nodevisor.NotSupported as exc:
            self.supervisor.log_line("babel: refused command %r: %s", name, exc)
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except nodevisor.InvalidArgument as exc:
            self.supervisor.log_line("babel: refused command %r: %s", name, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.supervisor.state is not State.RUNNING:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the node's processes do not run"
            )
        self.supervisor.log_line("babel: running command %r with %s", name, values)
        try:
            answer = await _calls.call(spec, declared, declared.substitute(values))
        except (_calls.CallFailed, TimeoutError) as exc:
            self.supervisor.log_line("babel: command %r failed: %s", name, exc)
            await context.abort(grpc.StatusCode.ABORTED, f"{name}: {exc}")
        return babel_pb2.RunCommandResponse(output=_calls.render(answer))

    async def Shutdown(self, request: Any, context: Any) -> babel_pb2.ShutdownResponse:
        await _carried_out(self.supervisor.stop(), context)
        self._done.set()
        return babel_pb2.ShutdownResponse()


async def _carried_out(call: Awaitable[T], context: Any) -> T:
    """What ``call`` returns; its RuntimeFailure fails the RPC, with its message
    (the node's processes outlived SIGKILL, say)."""
    try:
        return await call
    except nodevisor.RuntimeFailure as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        raise  # abort raises; this is for the type checker


def _fill(answer: babel_pb2.StatusResponse, values: dict[str, Any]) -> None:
    if "height" in values:
        answer.block_height = values["height"]
    if "peers" in values:
        answer.peers = values["peers"]
    for name in ("sync_status", "app_status", "onchain_name"):
        if name in values:
            setattr(answer, name, values[name])


def _plain(params: Any) -> dict[str, Any]:
    return {
        name: getattr(value, value.WhichOneof("kind") or "string_value")
        for name, value in params.items()
    }


async def serve(spec_file: Path, socket: Path, logs: Path) -> None:
    done = asyncio.Event()
    supervisor = Supervisor(spec_file, logs)
    server = grpc.aio.server()
    babel_pb2_grpc.add_BabelServiceServicer_to_server(Babel(supervisor, done), server)
    socket.unlink(missing_ok=True)  # noqa: ASYNC240 (before serving: nothing waits)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    log.info("babel for node %s serving on %s", supervisor.spec.node_id, socket)
    try:
        await done.wait()
        await supervisor.stop()
    finally:
        await server.stop(grace=1)
        with contextlib.suppress(OSError):
            socket.unlink()  # noqa: ASYNC240 (on the way out)
        log.info("babel for node %s ended", supervisor.spec.node_id)


def main() -> None:
    parser = argparse.ArgumentParser(prog="nodevisor-babel", description=__doc__)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        args.logs / "babel.log", maxBytes=5_000_000, backupCount=2
    )
    logging.basicConfig(
        level=logging.INFO,
        handlers=[handler],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args.spec, args.socket, args.logs))
