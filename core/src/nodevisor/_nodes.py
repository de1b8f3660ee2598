"""Node commands: each drives one node through the state machine.

``NodeManager`` holds the rules of what a command does to a node. It is the
only place that changes a node's status: every change is checked against
``TRANSITIONS``, written to the store first, then reported and logged. A
runtime is asked to act only after the store records what is about to
happen.

The dispatcher guarantees that commands for one node never overlap, so these
methods need no lock of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import anyio

from blockjoy.api.v1 import node_pb2

from ._catalogue import Catalogue, Release, parse_url
from ._errors import (
    Conflict,
    InvalidArgument,
    InvalidTransition,
    NodeNotFound,
    NotSupported,
    RuntimeFailure,
    ServiceNotReady,
    UpgradeFailed,
    shown,
)
from ._runtime import NodeSpec, NodeState, Runtime, RuntimeNode
from ._states import NodeStatus, check_transition
from ._store import NodeRecord, Store, StoreRunner

__all__ = ["NodeManager", "StoreRunner", "validate_name"]

log = logging.getLogger(__name__)

S = NodeStatus
T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 63


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid node name; raise ``InvalidArgument``."""
    if not name:
        raise InvalidArgument("node name is empty")
    if len(name) > MAX_NAME:
        raise InvalidArgument(
            f"node name {name[:20]!r}... is {len(name)} characters long; "
            f"at most {MAX_NAME} are allowed"
        )
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"node name {shown(name)} may hold only ASCII letters, digits, '-', '_' "
            "and '.', and must start with a letter or digit"
        )
    return name


def _validate_id(node_id: str) -> str:
    try:
        return str(uuid.UUID(node_id))
    except ValueError:
        raise InvalidArgument(f"node id {shown(node_id)} is not a UUID") from None


class NodeManager:
    def __init__(
        self,
        *,
        db: StoreRunner,
        catalogue: Catalogue,
        runtimes: dict[str, Runtime],
        unavailable: dict[str, str],
        default_runtime: str,
        host_id: str,
        snapshot_dir: Path,
        report: Callable[[NodeRecord], None],
        step_timeout: float = 1800.0,
    ) -> None:
        """``step_timeout`` bounds each runtime step of a command, in seconds."""
        self._db = db
        self._store = db.store
        self.catalogue = catalogue
        self.runtimes = runtimes
        self._unavailable = unavailable
        self.default_runtime = default_runtime
        self.host_id = host_id
        self.snapshot_dir = snapshot_dir
        self._report = report
        self.step_timeout = step_timeout
        #: Every node record read or written, as last written: commands read
        #: their node from here, not from the store through its thread. The
        #: reconciler's ``get`` reads the store and refreshes it.
        self._known: dict[str, NodeRecord] = {}

    # lookups

    async def nodes(self) -> list[NodeRecord]:
        """Every live node in the store; commits go on while it reads."""
        return await self._db.apart(Store.nodes)

    async def _record(self, node_id: str) -> NodeRecord | None:
        """The node's record: the last one written, or the store's."""
        node = self._known.get(node_id)
        if node is None:
            node = await self._db(self._store.node, node_id)
            if node is not None:  # unless a write came meanwhile
                node = self._known.setdefault(node_id, node)
        return node

    async def require(self, node_id: str) -> NodeRecord:
        node = await self._record(node_id)
        if node is None:
            raise NodeNotFound(f"no node with id {shown(node_id)} on this host")
        if node.status is S.Deleted:
            raise NodeNotFound(f"node {node_id} was deleted")
        return node

    def runtime(self, name: str) -> Runtime:
        runtime = self.runtimes.get(name)
        if runtime is None:
            why = self._unavailable.get(name, "it is not installed")
            raise ServiceNotReady(f"runtime {name!r} is not available: {why}")
        return runtime

    def spec(self, node: NodeRecord, release: Release | None = None) -> NodeSpec:
        release = release or self.catalogue.resolve(node.url, node.runtime)
        return release.node_spec(node_id=node.id, name=node.name, host_id=self.host_id)

    # status changes: the only place a node's status is written

    async def _move(self, node: NodeRecord, target: NodeStatus) -> NodeRecord:
        check_transition(node.id, node.status, target)
        why = f"{node.status.name} -> {target.name}"
        # A status the runtime is about to act under is committed before it
        # acts. A settled status ends the step: it is queued, and whatever
        # comes next (its report, the command's result, the next step's
        # status) commits in the same or a later batch, never before it.
        return await self._save(
            node.replace(status=target), why, wait=not target.settled
        )

    async def _save(
        self, node: NodeRecord, why: str, *, wait: bool = True
    ) -> NodeRecord:
        node = await self._write(node, wait=wait, report=True)
        log.info("node %s (%s): %s", node.id, node.name, why)
        return node

    async def _write(
        self, node: NodeRecord, *, wait: bool = True, report: bool = False
    ) -> NodeRecord:
        """Save the record; with ``wait``, return once it is committed.

        With ``report``, the record and its report commit together: a record
        never lands unreported (a node deleted that way would vanish from the
        control plane's view for good), and a report never goes out for a
        record that failed.
        """
        self._known[node.id] = node
        with self._db.together():
            written = self._db.write_nowait(self._store.save_node, node)
            if report:
                self._report(node)
        written.add_done_callback(functools.partial(self._written, node, not wait))
        if wait:
            node = await written  # a failure is raised here
        return node

    def _written(
        self, node: NodeRecord, unawaited: bool, written: asyncio.Future[NodeRecord]
    ) -> None:
        if written.cancelled() or written.exception() is None:
            return
        if unawaited:
            log.error("a node's status could not be stored: %r", written.exception())
        if self._known.get(node.id) is node:  # the store does not have it
            del self._known[node.id]

    @staticmethod
    def _expect(node: NodeRecord, expected: NodeStatus) -> NodeRecord:
        # Not saved alone: the status change that follows saves it, in the
        # same commit, before the runtime is asked to act.
        return node.replace(expected=expected, failure=None)

    async def _intend(self, node: NodeRecord, expected: NodeStatus) -> None:
        """Record a command's wish that needed no runtime step.

        A node can be in the status a command asks for while the agent
        expects another of it (an interrupted upgrade rolled back to Stopped,
        say); the command's wish is the newer one, or the reconciler would
        undo what the command just reported done.
        """
        if node.expected is not expected:
            await self._save(
                self._expect(node, expected), f"now expected {expected.name}"
            )

    @contextlib.asynccontextmanager
    async def _undone_if_refused(self, node: NodeRecord) -> AsyncIterator[None]:
        """Around a command's steps: if the runtime refuses one, the node is
        expected again what it was before the command.

        The control plane has the failure as the command's result; the
        reconciler must not carry the command out later behind its back.
        """
        try:
            yield
        except RuntimeFailure:
            await self._expect_again(node.id, node.expected)
            raise

    async def _expect_again(self, node_id: str, expected: NodeStatus) -> None:
        """Record ``expected`` as what is expected of the node, unreported."""
        node = await self._record(node_id)
        if node is not None and node.expected is not expected:
            # Not reported: NodeInfo does not carry what is expected.
            await self._write(node.replace(expected=expected))
            log.info(
                "node %s (%s): the command failed; expected %s again",
                node.id,
                node.name,
                expected.name,
            )

    async def _settle(
        self, node: NodeRecord, runtime: Runtime, exc: Exception | str
    ) -> S:
        """After a failed step, record the status the runtime actually shows."""
        try:
            actual = await self._step(runtime, node.id, runtime.inspect(node.id))
        except Exception as inner:  # the node's state stays unknown; keep the record
            log.warning("node %s: cannot inspect after a failure: %r", node.id, inner)
            actual = None
        status = (
            S.Running if actual and actual.state is NodeState.RUNNING else S.Stopped
        )
        await self._save(
            node.replace(status=status, failure=str(exc)),
            f"failed, now {status.name}: {exc}",
        )
        return status

    async def _step(
        self,
        runtime: Runtime,
        node_id: str,
        step: Coroutine[Any, Any, T],
        *,
        plain: bool = False,
    ) -> T:
        return await _step(runtime, node_id, step, self.step_timeout, plain=plain)

    async def _guarded(
        self, node: NodeRecord, runtime: Runtime, step: Coroutine[Any, Any, T]
    ) -> T:
        try:
            return await self._step(runtime, node.id, step)
        except RuntimeFailure as exc:
            await self._settle(node, runtime, exc)
            raise

    # commands

    async def create(self, node_id: str, msg: node_pb2.NodeCreate) -> str:
        node_id = _validate_id(node_id)
        existing = await self._record(node_id)
        if existing is not None and existing.status is not S.Deleted:
            return f"node {node_id} exists already ({existing.name}); nothing to do"
        name = validate_name(msg.name)
        release = self.catalogue.resolve(msg.image.url, self.default_runtime)
        if msg.blockchain and msg.blockchain != release.protocol:
            raise InvalidArgument(
                f"blockchain {shown(msg.blockchain)} does not match image url "
                f"{shown(msg.image.url)}, whose protocol is {release.protocol!r}"
            )
        runtime = self.runtime(self.default_runtime)
        await self._require_free(name)

        node = NodeRecord(
            id=node_id,
            name=name,
            protocol=release.protocol,
            version=release.version,
            runtime=runtime.name,
            node_type=msg.type,
            status=S.UndefinedContainerStatus,
            expected=S.Stopped,
        )
        node = await self._write(node)
        spec = self.spec(node, release)
        try:
            node = await self._move(node, S.Installing)
            await self._step(runtime, node_id, runtime.prepare(spec))
            node = await self._move(node, S.Creating)
            await self._step(runtime, node_id, runtime.create(spec))
        except RuntimeFailure as exc:
            await self._undo_create(node, runtime, exc)
            raise
        await self._move(node, S.Stopped)
        return f"node {node_id} ({name}) created from {release.url}"

    async def _undo_create(
        self, node: NodeRecord, runtime: Runtime, exc: Exception
    ) -> None:
        try:
            await self._step(runtime, node.id, runtime.delete(node.id))
        except Exception as inner:  # best effort; the create already failed
            log.warning(
                "node %s: cleanup after a failed create failed: %r", node.id, inner
            )
        self._known.pop(node.id, None)
        # Reported Deleted: the node is no longer on the host, and the
        # control plane must not keep it as a node that might still come.
        gone = node.replace(status=S.Deleted, failure=f"create failed: {exc}")
        with self._db.together():
            forgotten = self._db.write_nowait(self._store.forget_node, node.id)
            self._report(gone)
        await forgotten
        log.info(
            "node %s (%s): create failed, record removed: %s", node.id, node.name, exc
        )

    async def start(self, node_id: str) -> str:
        node = await self.require(node_id)
        if node.status is S.Running:
            await self._intend(node, S.Running)
            return f"node {node_id} is running already"
        self._need(node, S.Stopped, command="start")
        runtime = self.runtime(node.runtime)
        async with self._undone_if_refused(node):
            await self._start(self._expect(node, S.Running), runtime)
        return f"node {node_id} started"

    async def _start(self, node: NodeRecord, runtime: Runtime) -> NodeRecord:
        node = await self._move(node, S.Starting)
        spec = self.spec(node)
        await self._guarded(node, runtime, self._recreate_if_missing(runtime, spec))
        await self._guarded(node, runtime, runtime.start(spec))
        return await self._move(node, S.Running)

    async def _recreate_if_missing(self, runtime: Runtime, spec: NodeSpec) -> None:
        # A container or VM removed behind the agent's back is made again on
        # start; the runtime keeps chain data apart, so what is left is used.
        if await runtime.inspect(spec.id) is not None:
            return
        log.warning(
            "node %s: the runtime has no trace of it; creating it again", spec.id
        )
        await _make(runtime, spec)

    async def stop(self, node_id: str) -> str:
        node = await self.require(node_id)
        if node.status is S.Stopped:
            await self._intend(node, S.Stopped)
            return f"node {node_id} is stopped already"
        self._need(node, S.Running, command="stop")
        runtime = self.runtime(node.runtime)
        async with self._undone_if_refused(node):
            _, unclean = await self._stop(self._expect(node, S.Stopped), runtime)
        if unclean:
            return f"node {node_id} stopped uncleanly: {unclean}"
        return f"node {node_id} stopped"

    async def _stop(self, node: NodeRecord, runtime: Runtime) -> tuple[NodeRecord, str]:
        """Stop a running node; also return how it was killed, or ""."""
        spec = self.spec(node)
        node = await self._move(node, S.Stopping)
        outcome = await self._guarded(node, runtime, runtime.stop(spec))
        unclean = ""
        if not outcome.clean:
            unclean = outcome.detail or "killed"
            if outcome.outlived_grace:
                unclean += (
                    f" (it did not exit within {spec.grace_period:g}s of "
                    f"{spec.stop_signal})"
                )
            # Kept on the node: its chain data may need checking.
            node = node.replace(failure=f"stopped uncleanly: {unclean}")
        node = await self._move(node, S.Stopped)
        return node, unclean

    async def restart(self, node_id: str) -> str:
        node = await self.require(node_id)
        self._need(node, S.Running, S.Stopped, command="restart")
        runtime = self.runtime(node.runtime)
        async with self._undone_if_refused(node):
            node = self._expect(node, S.Running)
            unclean = ""
            if node.status is S.Running:
                node, unclean = await self._stop(node, runtime)
            await self._start(node, runtime)
        if unclean:
            return f"node {node_id} restarted; its stop was unclean: {unclean}"
        return f"node {node_id} restarted"

    async def upgrade(self, node_id: str, msg: node_pb2.NodeUpgrade) -> str:
        node = await self.require(node_id)
        runtime = self.runtime(node.runtime)
        release = self.catalogue.resolve(msg.image.url, node.runtime)
        if release.protocol != node.protocol:
            raise InvalidArgument(
                f"cannot upgrade node {node_id} from protocol {node.protocol!r} "
                f"to {release.protocol!r}; an upgrade keeps the protocol"
            )
        if release.version == node.version:
            if node.failure and node.failure.startswith(_UPGRADE_ROLLED_BACK):
                # The upgrade this failure is about is done now, or moot.
                await self._save(node.replace(failure=None), "upgrade failure cleared")
            return f"node {node_id} runs {release.url} already"
        if not runtime.capabilities.upgrade:
            raise NotSupported(f"runtime {runtime.name!r} cannot upgrade nodes")
        self._need(node, S.Running, command="upgrade")

        old, new = self.spec(node), self.spec(node, release)
        try:
            await self._step(runtime, node_id, runtime.prepare(new))
        except RuntimeFailure as exc:
            raise UpgradeFailed(
                f"upgrade of node {node_id} to {release.url} failed before the node "
                f"was touched; it keeps running {node.url}: {exc}"
            ) from exc
        journal = json.dumps({"op": "upgrade", "from": node.version, "to": new.version})
        node = await self._move(node.replace(journal=journal), S.Upgrading)
        try:
            await self._step(runtime, node_id, runtime.stop(old))
            await self._step(runtime, node_id, runtime.upgrade(old, new))
        except RuntimeFailure as exc:
            back = await self._roll_back(
                node.replace(journal=None), runtime, old, new, exc
            )
            if back is not None:
                raise UpgradeFailed(
                    f"upgrade of node {node_id} to {release.url} failed, and so did "
                    f"putting it back on {node.url} ({back.reason}); the node is "
                    f"{back.status.name}: {exc}"
                ) from exc
            raise UpgradeFailed(
                f"upgrade of node {node_id} to {release.url} failed and was rolled "
                f"back to {node.url}: {exc}"
            ) from exc
        # The journal stays until the new version runs: a crash before that
        # is finished by the reconciler, a start that fails is rolled back.
        node = await self._save(
            node.replace(version=release.version, status=S.Upgraded),
            f"Upgrading -> Upgraded ({release.url})",
        )
        try:
            await self._step(runtime, node_id, runtime.start(new))
        except RuntimeFailure as exc:
            back = node.replace(version=old.version, journal=None)
            failed = await self._roll_back(back, runtime, old, new, exc, started=True)
            if failed is not None:
                raise UpgradeFailed(
                    f"upgrade of node {node_id} to {release.url} failed: the new "
                    f"version did not start, and putting the node back on "
                    f"{old.url} failed too ({failed.reason}); the node is "
                    f"{failed.status.name}: {exc}"
                ) from exc
            raise UpgradeFailed(
                f"upgrade of node {node_id} to {release.url} failed: the new version "
                f"did not start, and the node was rolled back to {node.url}: {exc}"
            ) from exc
        await self._move(node.replace(journal=None), S.Running)
        return f"node {node_id} upgraded from {old.url} to {new.url}"

    async def _roll_back(
        self,
        node: NodeRecord,
        runtime: Runtime,
        old: NodeSpec,
        new: NodeSpec,
        exc: Exception,
        *,
        started: bool = False,
    ) -> _RollbackFailed | None:
        """Put the node back on ``old``; with ``started``, ``new`` was started.

        Returns what went wrong if that failed too, else ``None``. Either way
        the node's record shows the status the runtime reports and why.
        """
        try:
            if started:
                await self._step(runtime, new.id, runtime.stop(new))
            await self._step(runtime, new.id, runtime.upgrade(new, old))
            await self._step(runtime, new.id, runtime.start(old))
        except Exception as inner:  # told in the result and kept on the node
            log.error("node %s: rolling back the upgrade failed: %r", node.id, inner)
            why = f"{exc}; rolling back to {old.url} failed: {_described(inner)}"
            status = await self._settle(node, runtime, why)
            return _RollbackFailed(_described(inner), status)
        await self._settle(node, runtime, exc)
        return None

    async def delete(self, node_id: str) -> str:
        node = await self.require(node_id)
        self._need(node, S.Running, S.Stopped, command="delete")
        runtime = self.runtime(node.runtime)
        async with self._undone_if_refused(node):
            node = self._expect(node, S.Deleted)
            found = await self._step(runtime, node_id, runtime.inspect(node_id))
            if node.status is S.Running and found is None:
                node = await self._save(node.replace(status=S.Stopped), "found absent")
            if node.status is S.Running:
                node, _ = await self._stop(node, runtime)
            node = await self._move(node, S.Deleting)
            await self._guarded(node, runtime, runtime.delete(node_id))
        await self._move(node, S.Deleted)
        kept = self.snapshot_dir / node_id
        if await anyio.Path(kept).exists():
            return f"node {node_id} deleted with its data; its snapshots stay in {kept}"
        return f"node {node_id} deleted with its data"

    async def snapshot(self, node_id: str) -> str:
        node = await self.require(node_id)
        runtime = self.runtime(node.runtime)
        if not runtime.capabilities.snapshot:
            raise NotSupported(f"runtime {runtime.name!r} cannot snapshot nodes")
        self._need(node, S.Stopped, command="snapshot")
        async with self._undone_if_refused(node):
            node = self._expect(node, S.Running)
            destination = self.snapshot_dir / node_id
            await anyio.Path(destination).mkdir(mode=0o700, parents=True, exist_ok=True)
            node = await self._move(node, S.Snapshotting)
            path = await self._guarded(
                node, runtime, _written(runtime, node_id, destination, self.spec(node))
            )
        await self._start(node, runtime)
        return f"node {node_id} snapshot written to {path}"

    async def rename(self, node_id: str, msg: node_pb2.NodeInfoUpdate) -> str:
        node = await self.require(node_id)
        if not msg.HasField("name") or msg.name == node.name:
            self._report(node)
            return f"node {node_id} unchanged"
        name = validate_name(msg.name)
        await self._require_free(name)
        await self._save(node.replace(name=name), f"renamed from {node.name!r}")
        return f"node {node_id} renamed to {name}"

    async def generic(
        self, node_id: str, command: str, params: Mapping[str, object]
    ) -> str:
        """Run a generic command the node's spec declares, its parameters checked.

        Anything undeclared or misfit is refused before the runtime is asked.
        """
        node = await self.require(node_id)
        runtime = self.runtime(node.runtime)
        spec = self.spec(node)
        declared = spec.interface.command(spec.protocol, command)
        values = declared.check(command, params)
        if not runtime.capabilities.protocol:
            raise NotSupported(
                f"runtime {runtime.name!r} of node {node_id} cannot run generic "
                f"commands; {shown(command)} was not run"
            )
        self._need(node, S.Running, command=f"run {shown(command)} on")
        log.info("node %s: running generic command %r %s", node_id, command, values)
        # What the runtime raises is the answer (NotSupported, say), as it is.
        answer = await self._step(
            runtime,
            node_id,
            runtime.protocol_command(spec, command, values),
            plain=True,
        )
        return f"node {node_id}: {command} done: {answer}"

    async def info(self, node_id: str) -> str:
        node = await self.require(node_id)
        runtime = self.runtime(node.runtime)
        actual = await self._step(runtime, node_id, runtime.inspect(node_id))
        observed = _observed(actual.state if actual else NodeState.ABSENT)
        if node.status.settled and observed is not None and observed is not node.status:
            detail = f": {actual.detail}" if actual and actual.detail else ""
            why = f"found {observed.name} outside nodevisor{detail}"
            node = await self._save(node.replace(status=observed, failure=why), why)
        elif actual is None and node.status.settled:
            node = await self._record_missing(node, runtime)
        else:
            self._report(node)
        return f"node {node_id} is {node.status.name}"

    # recovery: what the reconciler asks for, one node at a time

    async def get(self, node_id: str) -> NodeRecord | None:
        """The store's record of the node, read afresh.

        Called in the node's lane, where no write of it can race the read.
        """
        node = await self._db(self._store.node, node_id)
        if node is None:
            self._known.pop(node_id, None)
        else:
            self._known[node_id] = node
        return node

    async def known_ids(self) -> set[str]:
        """Every node id in the store, deleted ones included."""
        every = await self._db.apart(lambda store: store.nodes(include_deleted=True))
        return {node.id for node in every}

    async def adopt(self, runtime: Runtime, found: RuntimeNode) -> NodeRecord:
        """Record a node the runtime owns but the store does not know.

        The node is kept as it is found: nothing is started, stopped or removed.
        """
        protocol, version = _split_url(found.url)
        name = found.name or found.id
        if await self._db(self._store.node_named, name) is not None:
            name = f"{name}-{found.id[:8]}"
        status = S.Running if found.state is NodeState.RUNNING else S.Stopped
        node = NodeRecord(
            id=found.id,
            name=name,
            protocol=protocol,
            version=version,
            runtime=runtime.name,
            status=status,
            expected=status,
            failure="adopted: the runtime owns this node but the agent's store "
            "did not know it",
        )
        return await self._save(node, f"adopted from runtime {runtime.name!r}")

    def out_of_step(self, node: NodeRecord, actual: RuntimeNode | None) -> bool:
        """Whether ``converge`` has anything to do for the node."""
        if node.journal or not node.status.settled:
            return True
        if node.status is S.Deleted:
            return False
        observed = _observed(actual.state) if actual else None
        return observed is not node.status or node.status is not node.expected

    async def converge(
        self, node: NodeRecord, actual: RuntimeNode | None
    ) -> str | None:
        """Take the node one step towards its expected status; say what was done."""
        runtime = self.runtime(node.runtime)
        if node.journal:
            return await self._resume(node, runtime, actual)
        if node.expected is S.Deleted and node.status is not S.Deleted:
            return await self._finish_delete(node, runtime)
        if actual is None:
            return await self._absent(node, runtime)
        observed, recorded = _observed(actual.state), None
        if observed is not None and observed is not node.status:
            node = await self._record_observed(node, observed, actual)
            recorded = f"recorded {observed.name}"
        if node.status is node.expected or node.status is S.Deleted:
            return recorded
        # What was found out of step has been reported; once the node is
        # brought back, it no longer describes the node.
        node = node.replace(failure=None)
        if node.expected is S.Running:
            await self._start(node, runtime)
            return "started, as expected"
        await self._stop(node, runtime)
        return "stopped, as expected"

    async def mark_unmanaged(self) -> None:
        """Say on each node whose runtime cannot be used why it is not managed.

        Its status is left as last known: nothing can look at the node. The
        failure is cleared at a later start-up that has the runtime again.
        """
        for node in await self.nodes():
            if node.runtime in self.runtimes:
                if node.failure and node.failure.startswith(_UNMANAGED):
                    await self._save(node.replace(failure=None), "runtime is back")
                continue
            why = self._unavailable.get(node.runtime, "it is not installed")
            failure = (
                f"{_UNMANAGED}{node.runtime!r} is not available ({why}); the node "
                "is not managed until an agent starts with it"
            )
            if node.failure != failure:
                await self._save(node.replace(failure=failure), failure)

    async def give_up(
        self, node_id: str, reason: str, status: NodeStatus | None = None
    ) -> None:
        """Record why the reconciler stops trying, and the status it left."""
        node = await self.get(node_id)
        if node is None or (node.failure == reason and status in (None, node.status)):
            return
        await self._save(
            node.replace(failure=reason, status=status or node.status), reason
        )

    async def record_actual(
        self, node: NodeRecord, actual: RuntimeNode | None
    ) -> NodeRecord:
        """Record what the runtime shows of a settled node, and do nothing more."""
        if actual is None:
            return await self._record_missing(node, self.runtime(node.runtime))
        observed = _observed(actual.state)
        if observed is None or observed is node.status:
            return node
        return await self._record_observed(node, observed, actual)

    async def _record_observed(
        self, node: NodeRecord, observed: NodeStatus, actual: RuntimeNode
    ) -> NodeRecord:
        if node.status.settled:
            detail = f" ({actual.detail})" if actual.detail else ""
            why = f"found {observed.name} outside nodevisor{detail}"
        else:
            why = f"found {observed.name} after an interrupted {node.status.name}"
        return await self._save(node.replace(status=observed, failure=why), why)

    async def _absent(self, node: NodeRecord, runtime: Runtime) -> str | None:
        if node.status in (S.UndefinedContainerStatus, S.Installing, S.Creating):
            spec = self.spec(node)
            await self._step(runtime, node.id, _make(runtime, spec))
            await self._save(node.replace(status=S.Stopped), "create finished")
            return "finished an interrupted create"
        if node.failure == _missing(runtime) and node.status is S.Stopped:
            return None  # reported before; the next start makes it again
        node = await self._record_missing(node, runtime)
        if node.expected is S.Running:
            await self._start(node.replace(failure=None), runtime)
            return "made the missing node again and started it"
        return "reported the node missing"

    async def _record_missing(self, node: NodeRecord, runtime: Runtime) -> NodeRecord:
        why = _missing(runtime)
        if node.status is S.Deleted:
            return node
        return await self._save(node.replace(status=S.Stopped, failure=why), why)

    async def _finish_delete(self, node: NodeRecord, runtime: Runtime) -> str:
        await self._step(runtime, node.id, runtime.delete(node.id))
        await self._save(node.replace(status=S.Deleted), "delete finished")
        return "finished an interrupted delete"

    async def _resume(
        self, node: NodeRecord, runtime: Runtime, actual: RuntimeNode | None
    ) -> str:
        journal = json.loads(node.journal or "{}")
        target = f"{node.protocol}/{journal.get('to')}"
        if actual is not None and actual.url == target:
            node = await self._save(
                node.replace(version=journal["to"], status=S.Upgraded, journal=None),
                f"upgrade to {target} finished after a restart",
            )
            await self._step(runtime, node.id, runtime.start(self.spec(node)))
            await self._save(node.replace(status=S.Running), "Upgraded -> Running")
            return f"finished an interrupted upgrade to {target}"
        why = f"{_UPGRADE_ROLLED_BACK}{target} was interrupted and rolled back"
        if actual is not None and actual.url != node.url:
            back = runtime.upgrade(
                self.spec(node, self._release_of(actual)), self.spec(node)
            )
            await self._step(runtime, node.id, back)
        status = (
            S.Running if actual and actual.state is NodeState.RUNNING else S.Stopped
        )
        await self._save(node.replace(journal=None, status=status, failure=why), why)
        return why

    async def _require_free(self, name: str) -> None:
        holder = await self._db(self._store.node_named, name)
        if holder is not None:
            raise Conflict(f"node name {name!r} is taken by node {holder.id}")

    def _need(self, node: NodeRecord, *allowed: NodeStatus, command: str) -> None:
        if node.status not in allowed:
            needed = " or ".join(status.name for status in allowed)
            raise InvalidTransition(
                f"cannot {command} node {node.id}: it is {node.status.name}, "
                f"and {command} needs it {needed}"
            )


async def _step(
    runtime: Runtime,
    node_id: str,
    step: Coroutine[Any, Any, T],
    seconds: float,
    *,
    plain: bool = False,
) -> T:
    """Await one of the runtime's steps for a node, for ``seconds`` at most.

    A runtime reports a failure as ``RuntimeFailure``. Anything else it
    raises is a bug of its plugin: logged with its traceback, and raised as
    the runtime's failure, so that the command that asked for the step
    still settles the node's status and undoes what it must; with
    ``plain``, it is raised as it is. A step that has
    not finished in time fails the same way and is left to itself: a call
    blocked in a worker thread cannot be stopped, and the node's lane must
    not wait on it for good.
    """
    # A runtime's method by its name ("start()"), a step of several as such.
    method = getattr(step, "__qualname__", "").rpartition(".")
    what = f"{method[2]}()" if method[1] else "its step"
    loop = asyncio.get_running_loop()
    task = loop.create_task(step)
    # Not anyio.fail_after: that would wait for the step to take its
    # cancellation, and a step blocked in a thread never does.
    ended = loop.create_future()
    task.add_done_callback(functools.partial(_wake, ended))
    deadline = loop.call_later(seconds, _wake, ended)
    try:
        await ended
    except asyncio.CancelledError:  # the agent is stopping: so is the step
        task.cancel()
        raise
    finally:
        deadline.cancel()
    if not task.done():
        # Left to itself, not cancelled: a call blocked in a worker thread
        # would not take it, and how the step ends is worth a log line.
        task.add_done_callback(functools.partial(_late, runtime, node_id, what))
        raise RuntimeFailure(
            f"runtime {runtime.name!r} did not finish {what} for node {node_id} "
            f"within {seconds:g}s (step_timeout); it may still be at work, and the "
            "node is checked again"
        )
    try:
        return task.result()
    except RuntimeFailure:
        raise
    except Exception as exc:
        if plain:
            raise
        log.error(
            "node %s: runtime %r raised %r instead of a RuntimeFailure",
            node_id,
            runtime.name,
            exc,
            exc_info=exc,
        )
        raise RuntimeFailure(
            f"runtime {runtime.name!r} failed on node {node_id} with an "
            f"unexpected {type(exc).__name__}: {exc}"
        ) from exc


def _wake(ended: asyncio.Future[None], *_: object) -> None:
    if not ended.done():
        ended.set_result(None)


def _late(runtime: Runtime, node_id: str, what: str, task: asyncio.Future[Any]) -> None:
    """How a step given up on ended, for the log."""
    if task.cancelled():
        outcome = "was cancelled (the agent is stopping)"
    elif task.exception() is not None:
        outcome = f"failed late: {task.exception()!r}"
    else:
        outcome = "finished late"
    log.warning(
        "node %s: %s of runtime %r, given up on at step_timeout, %s",
        node_id,
        what,
        runtime.name,
        outcome,
    )


class _RollbackFailed(NamedTuple):
    """Why an upgrade's rollback failed, and the status the node was left in."""

    reason: str
    status: NodeStatus


def _described(exc: Exception) -> str:
    """A runtime's failure as it says it; anything else with its type."""
    if isinstance(exc, RuntimeFailure):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


async def _written(
    runtime: Runtime, node_id: str, destination: Path, spec: NodeSpec
) -> Path:
    """Take the snapshot; the file it names must be there, under ``destination``.

    A runtime that reports a file it did not write would have the operator
    count on a snapshot that does not exist.
    """
    path = await runtime.snapshot(spec, destination)
    if not isinstance(path, str | Path):
        raise RuntimeFailure(
            f"runtime {runtime.name!r} snapshotted node {node_id} but returned "
            f"{path!r}, not the path of the file it wrote"
        )
    file = anyio.Path(path)
    if not await file.is_file():
        raise RuntimeFailure(
            f"runtime {runtime.name!r} says it wrote the snapshot of node {node_id} "
            f"to {str(path)!r}, but there is no such file"
        )
    if not (await file.resolve()).is_relative_to(
        await anyio.Path(destination).resolve()
    ):
        raise RuntimeFailure(
            f"runtime {runtime.name!r} wrote the snapshot of node {node_id} to "
            f"{str(path)!r}, outside its destination {str(destination)!r}"
        )
    return Path(path)


async def _make(runtime: Runtime, spec: NodeSpec) -> None:
    await runtime.prepare(spec)
    await runtime.create(spec)


#: How the failure an interrupted upgrade leaves on its node begins.
_UPGRADE_ROLLED_BACK = "an upgrade to "
#: How the failure of a node whose runtime cannot be used begins.
_UNMANAGED = "the node's runtime "


def _missing(runtime: Runtime) -> str:
    return (
        f"runtime {runtime.name!r} has no trace of the node: it was removed "
        "outside nodevisor; a start makes it again"
    )


def _split_url(url: str) -> tuple[str, str]:
    try:
        return parse_url(url)
    except InvalidArgument:
        return "unknown", "unknown"


def _observed(state: NodeState) -> NodeStatus | None:
    return {NodeState.RUNNING: S.Running, NodeState.STOPPED: S.Stopped}.get(state)
