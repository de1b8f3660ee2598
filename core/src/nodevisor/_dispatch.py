"""Routing commands to per-node lanes and reporting their results.

Commands for one node run one after another, in the order they arrived;
commands for different nodes run at the same time. Each command is recorded
in the store and acknowledged as soon as it arrives, also when it has to
wait behind another command for its node; its result is recorded before it
is sent, so a command id seen before is never executed twice: it is answered
again from the store, or, while it still waits or runs, acknowledged again.

A command that waited is marked started in the store before it runs. One
that never started when the agent stopped did nothing: the agent forgets it
at start-up, and it runs when the control plane sends it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from blockjoy.api.v1 import command_flow_pb2, host_pb2, node_pb2

from ._errors import (
    CommandError,
    ExitCode,
    InvalidArgument,
    InvalidCommand,
    NotSupported,
    RuntimeFailure,
    RuntimeUnavailable,
    shown,
)
from ._messages import command_ack, command_result, host_update
from ._nodes import NodeManager
from ._protocol import ProtocolWatch, unpack_generic
from ._store import CommandRecord, StoreRunner

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

Emit = Callable[[command_flow_pb2.InfoUpdate], None]
HOST_LANE = "host"


@dataclass
class _Taken:
    """A command recorded and acknowledged, waiting in its lane or running."""

    command: command_flow_pb2.Command
    id: str
    kind: str
    node_id: str | None
    #: Resolves once the record is committed: to the earlier record of the
    #: command if the store knew it already, else to ``None``.
    recorded: asyncio.Future[CommandRecord | None]
    #: Recorded as started: its lane was idle when it arrived.
    started: bool


_Item = _Taken | Callable[[], Awaitable[None]]

_HOST_UNSUPPORTED = {
    "generic": "generic host commands",
    "update_bvs": "updating the agent (HostUpdateBVS)",
    "restart_bvs": "restarting the agent (HostRestartBVS)",
    "remove_bvs": "removing the agent (HostRemoveBVS)",
}


class Dispatcher:
    def __init__(
        self,
        *,
        nodes: NodeManager,
        db: StoreRunner,
        emit: Emit,
        host_info: Callable[[], Awaitable[host_pb2.HostInfo]],
        finished: Callable[..., None] | None = None,
        protocol: ProtocolWatch | None = None,
        held: bool = False,
    ) -> None:
        """With ``held``, commands are recorded and acknowledged as they come
        but none runs until ``release()``: at start-up, the reconciler first
        queues what recovery each node needs, and commands run after it."""
        self.nodes = nodes
        self.protocol = protocol
        self._db = db
        self._emit = emit
        self._host_info = host_info
        self._finished = finished
        self._lanes: dict[str, deque[_Item]] = {}
        #: Once set, new commands are not taken (the agent is stopping).
        self.closed = False
        self._tasks: TaskGroup | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._finishing: dict[str, tuple[int, str]] = {}
        #: The ids of the commands taken that wait in a lane or run.
        self._taken: set[str] = set()
        #: Commands taken while held, in order, with their lanes.
        self._held: list[tuple[str, _Taken]] | None = [] if held else None

    async def __aenter__(self) -> Dispatcher:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(*exc_info)

    @property
    def busy(self) -> bool:
        return bool(self._lanes)

    def in_lane(self, node_id: str) -> bool:
        """Whether a command or a job for the node is queued or running."""
        return node_id in self._lanes

    async def wait_idle(self) -> None:
        """Return once no command is queued or running."""
        await self._idle.wait()

    def run_in_lane(self, node_id: str, job: Callable[[], Awaitable[None]]) -> bool:
        """Run ``job`` in the node's lane if the lane is idle; whether it will.

        The reconciler acts through this, so that it never overlaps a command
        for the same node and leaves a node with queued commands alone.
        """
        if node_id in self._lanes or self.closed:
            return False
        self._open_lane(node_id, job)
        return True

    def submit(self, command: command_flow_pb2.Command) -> None:
        """Record, acknowledge and queue a command on its lane. Never blocks."""
        kind = command.WhichOneof("type")
        if kind is None:
            log.warning("received a Command with neither a node nor a host command")
            self._emit(
                command_result(
                    "",
                    ExitCode.INVALID_COMMAND,
                    "the Command carries neither a node nor a host command",
                )
            )
            return
        if self.closed:
            log.info("stopping: not taking a %s command; it will be sent again", kind)
            return
        inner = command.node if kind == "node" else command.host
        command_id = inner.meta.api_command_id.value
        what = f"{kind}.{inner.WhichOneof('command')}"
        if not command_id:
            why = f"the {what} command has no meta.api_command_id to report under"
            self._emit(command_result("", ExitCode.INVALID_COMMAND, why))
            return
        if command_id in self._taken:  # sent again while it waits or runs
            log.info("command %s is under way; acknowledging it again", command_id)
            self._emit(command_ack(command_id))
            return
        if command_id in self._finishing:  # its result is on its way to the store
            code, response = self._finishing[command_id]
            self._emit(command_ack(command_id))
            self._answer_again(command_id, code, response)
            return
        node_id = command.node.id.value if kind == "node" else None
        lane = node_id if node_id is not None else HOST_LANE
        starts_now = self._held is None and lane not in self._lanes
        # The record and the ack's outbox entry commit together: the ack is
        # sent only once the command is durable, and it runs only after that.
        # A command seen before keeps its record, which comes back instead.
        with self._db.together():
            recorded = self._db.write_nowait(
                self._db.store.take_command, command_id, node_id, what, starts_now
            )
            self._emit(command_ack(command_id))
        self._taken.add(command_id)
        taken = _Taken(command, command_id, what, node_id, recorded, starts_now)
        if self._held is not None:
            self._held.append((lane, taken))
            return
        self._queue(lane, taken)

    def release(self) -> None:
        """Let the commands held since start-up run, in the order they came."""
        held, self._held = self._held or [], None
        if held:
            log.info("running the %d commands received during start-up", len(held))
        for lane, taken in held:
            self._queue(lane, taken)

    def _queue(self, lane: str, item: _Item) -> None:
        queue = self._lanes.get(lane)
        if queue is not None:
            queue.append(item)
            return
        self._open_lane(lane, item)

    def _open_lane(self, lane: str, item: _Item) -> None:
        self._lanes[lane] = deque([item])
        if self._idle.is_set():
            self._idle = anyio.Event()
        assert self._tasks is not None, "use the dispatcher inside 'async with'"
        self._tasks.start_soon(self._drain, lane, name=f"lane {lane}")

    async def _drain(self, lane: str) -> None:
        queue = self._lanes[lane]
        try:
            while queue:
                item = queue[0]
                if isinstance(item, _Taken):
                    try:
                        await self._execute(item)
                    finally:
                        self._taken.discard(item.id)
                else:
                    await item()
                queue.popleft()
        finally:
            del self._lanes[lane]
            if not self._lanes:
                self._idle.set()

    async def _execute(self, taken: _Taken) -> None:
        command, command_id, kind, node_id = (
            taken.command,
            taken.id,
            taken.kind,
            taken.node_id,
        )  # fmt: skip
        earlier = await taken.recorded
        if earlier is not None:
            await self._answered_before(earlier)
            return
        if not taken.started:  # it waited: durable as started before it acts
            await self._db.write(self._db.store.start_command, command_id)
        log.debug(
            "command %s (%s) for %s: started", command_id, kind, node_id or "host"
        )

        try:
            code, response = await self._outcome(command)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._interrupted(command_id)
            raise

        # Queued, not awaited: the record and the result's outbox entry commit
        # together, so the result is durable before it is sent. Until then a
        # repeat of the command is answered from memory.
        self._finishing[command_id] = (int(code), response)
        with self._db.together():
            written = self._db.write_nowait(
                self._db.store.finish_command, command_id, int(code), response
            )
            self._emit(command_result(command_id, code, response))
        written.add_done_callback(lambda _: self._finishing.pop(command_id, None))
        log.info("command %s (%s): exit code %d: %s", command_id, kind, code, response)
        if self._finished is not None:
            self._finished(
                command_id=command_id,
                node_id=node_id,
                kind=kind,
                exit_code=int(code),
                response=response,
            )

    async def _interrupted(self, command_id: str) -> None:
        why = (
            "interrupted: the agent stopped before the command finished; the "
            "node is brought back to its expected state when the agent restarts"
        )
        code = int(ExitCode.INTERNAL_ERROR)
        await self._db.write(self._db.store.finish_command, command_id, code, why)
        log.warning("command %s interrupted by the agent stopping", command_id)
        self._emit(command_result(command_id, code, why))

    def _answer_again(self, command_id: str, code: int, response: str) -> None:
        log.info("command %s was executed before; sending its result again", command_id)
        self._emit(command_result(command_id, code, response))

    async def _answered_before(self, record: CommandRecord) -> None:
        """Answer a command the store knew already (its ack is sent)."""
        command_id = record.id
        if record.finished:
            assert record.exit_code is not None
            self._answer_again(command_id, record.exit_code, record.response or "")
            return
        code, why = (
            ExitCode.INTERNAL_ERROR,
            (
                "the agent stopped while this command ran; check the node's status "
                "before sending it again"
            ),
        )
        await self._db.write(self._db.store.finish_command, command_id, int(code), why)
        self._emit(command_result(command_id, code, why))

    async def _outcome(self, command: command_flow_pb2.Command) -> tuple[ExitCode, str]:
        try:
            if command.HasField("node"):
                return ExitCode.OK, await self._run_node(command.node)
            return ExitCode.OK, await self._run_host(command.host)
        except CommandError as exc:
            return exc.exit_code, str(exc)
        except RuntimeUnavailable as exc:
            return ExitCode.SERVICE_NOT_READY, str(exc)
        except RuntimeFailure as exc:
            return ExitCode.RUNTIME_ERROR, str(exc)
        except Exception as exc:  # one command's bug must not end the stream
            log.exception("command failed unexpectedly")
            return ExitCode.INTERNAL_ERROR, f"internal error: {exc!r}"

    async def _run_node(self, command: node_pb2.NodeCommand) -> str:
        node_id, which = command.id.value, command.WhichOneof("command")
        nodes = self.nodes
        match which:
            case "create":
                return await nodes.create(node_id, command.create)
            case "start":
                return await nodes.start(node_id)
            case "stop":
                return await nodes.stop(node_id)
            case "restart":
                return await nodes.restart(node_id)
            case "upgrade":
                return await nodes.upgrade(node_id, command.upgrade)
            case "delete":
                return await nodes.delete(node_id)
            case "snapshot":
                return await nodes.snapshot(node_id)
            case "update":
                return await nodes.rename(node_id, command.update)
            case "info_get":
                if self.protocol is not None:
                    node = await nodes.require(node_id)
                    await self.protocol.refresh(node, report=False)
                return await nodes.info(node_id)
            case "generic":
                name, params = unpack_generic(node_id, command.generic)
                return await nodes.generic(node_id, name, params)
            case None:
                raise InvalidCommand(
                    f"the NodeCommand for node {node_id!r} carries no command"
                )
        raise InvalidCommand(f"unknown node command {which!r}")

    async def _run_host(self, command: host_pb2.HostCommand) -> str:
        which = command.WhichOneof("command")
        host_id = self.nodes.host_id
        # A v1 peer may leave the id unset; one that names a host names this one.
        if command.id.value and command.id.value != host_id:
            raise InvalidArgument(
                f"the host command is for host {shown(command.id.value)}, and this "
                f"agent is host {host_id}; nothing was done"
            )
        if which == "info_get":
            self._emit(host_update(await self._host_info()))
            return "host info sent"
        if which is None:
            raise InvalidCommand("the HostCommand carries no command")
        what = _HOST_UNSUPPORTED.get(which, repr(which))
        raise NotSupported(f"{what} is not supported by this agent")
