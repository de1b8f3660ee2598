"""The agent: loads its parts, then serves the control plane until stopped."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from anyio.abc import TaskGroup

from blockjoy.api.v1 import command_flow_pb2, host_pb2

from ._catalogue import Catalogue
from ._config import AgentConfig
from ._credentials import Credentials
from ._dispatch import Dispatcher
from ._errors import ConfigError, ExitCode, PluginError
from ._hostinfo import host_info
from ._lock import exclusive
from ._messages import command_result, host_update, node_update
from ._nodes import NodeManager
from ._outbox import Outbox
from ._plugins import PluginManager
from ._protocol import ProtocolWatch
from ._reconcile import Reconciler
from ._runtime import Runtime, RuntimeContext
from ._states import NodeStatus
from ._store import STORE_FILE, NodeRecord, Store, StoreRunner
from ._stream import CommandStream

__all__ = ["Agent", "load_runtimes"]

log = logging.getLogger(__name__)

#: Seconds between two prunings of the command history.
PRUNE_INTERVAL = 3600.0
#: The longest commands that came during start-up wait for the reconciler's
#: first pass to queue the recovery of the nodes, in seconds.
RECOVERY_WAIT = 60.0


async def load_runtimes(
    config: AgentConfig, host_id: str, plugins: PluginManager, wanted: set[str]
) -> tuple[dict[str, Runtime], dict[str, str]]:
    """Build each wanted runtime; return those that work and why others don't.

    A runtime that rejects its settings table raises ``ConfigError``: that is
    the operator's to fix, not a runtime to run without.
    """
    runtimes: dict[str, Runtime] = {}
    unavailable: dict[str, str] = {}
    for name in sorted(wanted):
        try:
            runtime = await _build(config, host_id, plugins, name)
        except PluginError as exc:  # one runtime failing leaves the others running
            unavailable[name] = str(exc)
            # The traceback of a constructor's bug is for the plugin's author.
            log.error(
                "runtime %r cannot be used: %s", name, exc, exc_info=exc.__cause__
            )
            continue
        try:
            await runtime.check()
        except Exception as exc:  # the engine may come up later; keep the runtime
            log.warning("runtime %r is not ready: %s", name, exc)
        runtimes[name] = runtime
    return runtimes, unavailable


async def _build(
    config: AgentConfig, host_id: str, plugins: PluginManager, name: str
) -> Runtime:
    """Build runtime ``name``, its data directory made first, for it alone."""
    plugins.runtime_class(name)  # raises for an absent one before anything is made
    context = RuntimeContext(
        host_id=host_id,
        data_dir=config.data_dir / "runtimes" / name,
        settings=config.runtimes.get(name, {}),
    )
    try:
        await anyio.Path(context.data_dir).mkdir(
            mode=0o700, parents=True, exist_ok=True
        )
    except OSError as exc:
        raise PluginError(f"its data directory cannot be made: {exc}") from exc
    return plugins.build(name, context)


def _check_runtime(name: str, plugins: PluginManager) -> None:
    """Refuse a configured runtime that no plugin provides.

    When a plugin failed to load, it may be the one that provides the
    runtime: that failure is reported, and the agent serves what it can.
    """
    if name in plugins.runtimes or plugins.failures:
        return
    installed = ", ".join(sorted(plugins.runtimes)) or "none"
    raise ConfigError(
        f"runtime = {name!r} in the config names no installed runtime "
        f"(installed: {installed}); `nodevisor agent plugins` lists them"
    )


class Agent:
    """One host's agent. ``run()`` returns when cancelled (SIGINT, SIGTERM)."""

    def __init__(
        self, config: AgentConfig, plugins: PluginManager | None = None
    ) -> None:
        self.config = config
        self.credentials = Credentials.load(config.data_dir)
        if config.api_url_set and config.api_url != self.credentials.api_url:
            log.info(
                "using api_url %s from config instead of %s from provisioning",
                config.api_url,
                self.credentials.api_url,
            )
            self.credentials = dataclasses.replace(
                self.credentials, api_url=config.api_url
            )
        self.plugins = plugins or _loaded_plugins()
        _check_runtime(config.runtime, self.plugins)
        self.catalogue = Catalogue.load(config.catalogue_dirs)
        self.outbox: Outbox | None = None
        self.stream: CommandStream | None = None
        #: Set once the stream exists; then ``stream.connected`` tells more.
        self.started = anyio.Event()
        self.reconciler: Reconciler | None = None
        self.protocol: ProtocolWatch | None = None
        self._statuses: dict[str, NodeStatus] = {}
        self._observers: TaskGroup | None = None

    async def run(self, stop: anyio.Event | None = None) -> None:
        """Serve until ``stop`` is set (then drain) or the task is cancelled."""
        async with AsyncExitStack() as stack:
            stack.enter_context(exclusive(self.config.data_dir))
            self._observers = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._observers.cancel_scope.cancel)
            store = Store(self.config.data_dir / STORE_FILE)
            stack.callback(store.close)
            db = await stack.enter_async_context(StoreRunner(store))
            self.outbox = Outbox(db)
            await self.outbox.load()
            nodes = await self._node_manager(stack, db)
            self.protocol = ProtocolWatch(
                nodes, self._report, interval=self.config.protocol_interval
            )
            dispatcher = await stack.enter_async_context(
                Dispatcher(
                    nodes=nodes,
                    db=db,
                    emit=self._emit,
                    host_info=self._host_info,
                    finished=self._command_finished,
                    protocol=self.protocol,
                    held=True,
                )
            )
            await self._close_interrupted(db)
            await self._serve(nodes, dispatcher, db, stop or anyio.Event())

    async def _serve(
        self,
        nodes: NodeManager,
        dispatcher: Dispatcher,
        db: StoreRunner,
        stop: anyio.Event,
    ) -> None:
        assert self.outbox is not None
        self.stream = CommandStream(
            credentials=self.credentials,
            outbox=self.outbox,
            on_command=dispatcher.submit,
            greeting=lambda: self._greeting(nodes),
            heartbeat=self._heartbeat,
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_timeout=self.config.heartbeat_timeout,
        )
        self.reconciler = Reconciler(
            nodes,
            dispatcher,
            interval=self.config.reconcile_interval,
            attempts=self.config.reconcile_attempts,
        )
        self.started.set()
        log.info(
            "agent for host %s starting, runtime %r",
            self.credentials.host_id,
            self.config.runtime,
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.stream.run)
            tasks.start_soon(self.reconciler.run)
            tasks.start_soon(self._release_after_recovery, dispatcher)
            tasks.start_soon(self._prune_history, db)
            if self.protocol is not None:
                tasks.start_soon(self.protocol.run)
            for runtime in nodes.runtimes.values():
                tasks.start_soon(self._follow, runtime)
            await stop.wait()
            await self._drain(dispatcher)
            tasks.cancel_scope.cancel()

    async def _release_after_recovery(self, dispatcher: Dispatcher) -> None:
        """Let commands run once the reconciler has queued its start-up steps.

        A node an interrupted command left half-way is then finished or
        rolled back before a command that came meanwhile acts on it. A
        runtime that does not answer its listing holds commands for at most
        ``RECOVERY_WAIT`` seconds.
        """
        assert self.reconciler is not None
        with anyio.move_on_after(RECOVERY_WAIT) as waited:
            await self.reconciler.started.wait()
        if waited.cancelled_caught:
            log.warning(
                "the start-up pass is not done after %gs; commands run now",
                RECOVERY_WAIT,
            )
        dispatcher.release()

    async def _drain(self, dispatcher: Dispatcher) -> None:
        """Take no new commands; give running ones and their results time."""
        assert self.outbox is not None
        dispatcher.closed = True
        grace = self.config.shutdown_grace
        log.info("stopping: new commands are refused; waiting up to %gs", grace)
        with anyio.move_on_after(grace):
            await dispatcher.wait_idle()
            await self._delivered()
        if dispatcher.busy:
            log.warning("stopping with commands still running; they are recorded")

    async def _delivered(self) -> None:
        """Until the outbox is empty, or there is no stream to empty it.

        Without a stream, waiting would only use up the grace: the outbox is
        durable, and goes out when the agent next connects.
        """
        assert self.outbox is not None and self.stream is not None
        while len(self.outbox) and self.stream.connected.is_set():
            with anyio.move_on_after(0.1):
                await self.outbox.wait_empty()

    async def _node_manager(
        self, stack: AsyncExitStack, db: StoreRunner
    ) -> NodeManager:
        known = await db(db.store.nodes)
        self._statuses = {node.id: node.status for node in known}
        wanted = {self.config.runtime} | {node.runtime for node in known}
        runtimes, unavailable = await load_runtimes(
            self.config, self.credentials.host_id, self.plugins, wanted
        )
        for runtime in runtimes.values():
            stack.push_async_callback(_close_runtime, runtime)
        return NodeManager(
            db=db,
            catalogue=self.catalogue,
            runtimes=runtimes,
            unavailable=unavailable,
            default_runtime=self.config.runtime,
            host_id=self.credentials.host_id,
            snapshot_dir=self.config.data_dir / "snapshots",
            report=self._report,
            step_timeout=self.config.step_timeout,
        )

    async def _prune_history(self, db: StoreRunner) -> None:
        """Forget old finished commands once started, then hourly."""
        keep = self.config.command_history_days * 86_400
        assert self.reconciler is not None
        await self.reconciler.started.wait()  # start-up work comes first
        while True:
            try:
                pruned = await db.write(db.store.prune_commands, time.time() - keep)
            except Exception as exc:  # tried again in an hour; nothing is lost
                log.warning("could not prune the command history: %r", exc)
            else:
                if pruned:
                    log.info("forgot %d commands finished long ago", pruned)
            await anyio.sleep(PRUNE_INTERVAL)

    async def _close_interrupted(self, db: StoreRunner) -> None:
        forgotten = await db.write(db.store.forget_unstarted)
        if forgotten:
            log.info(
                "%d commands the agent had taken never started; they run when "
                "the control plane sends them again",
                forgotten,
            )
        why = "the agent stopped while this command ran; check the node's status"
        for record in await db(db.store.unfinished_commands):
            code = int(ExitCode.INTERNAL_ERROR)
            await db.write(db.store.finish_command, record.id, code, why)
            log.warning("command %s (%s) was interrupted", record.id, record.kind)
            self._emit(command_result(record.id, code, why))

    async def _greeting(self, nodes: NodeManager) -> list[command_flow_pb2.InfoUpdate]:
        updates = [host_update(await self._host_info())]
        latest = self.protocol.latest if self.protocol else lambda _: None
        return updates + [
            node_update(node, latest(node)) for node in await nodes.nodes()
        ]

    async def _follow(self, runtime: Runtime) -> None:
        assert self.reconciler is not None
        try:
            await self.reconciler.follow(runtime)
        except Exception:  # a bug; the periodic passes still cover the runtime
            log.exception("following the events of runtime %r stopped", runtime.name)

    async def _heartbeat(self) -> None:
        self._emit(host_update(await self._host_info()))

    async def _host_info(self) -> host_pb2.HostInfo:
        config = self.config
        info = await anyio.to_thread.run_sync(
            lambda: host_info(
                host_id=self.credentials.host_id,
                api_url=self.credentials.api_url,
                data_dir=config.data_dir,
                name=config.name,
                location=config.location,
            )
        )
        for plugin in self.plugins.plugins:
            status = info.plugins.add(
                name=plugin.name, distribution=plugin.distribution
            )
            status.runtimes.extend(plugin.runtimes)
            if plugin.error:
                status.error = plugin.error
        return info

    def _emit(self, update: command_flow_pb2.InfoUpdate) -> None:
        assert self.outbox is not None
        self.outbox.put(update)

    def _report(self, node: NodeRecord) -> None:
        protocol = self.protocol.latest(node) if self.protocol else None
        self._emit(node_update(node, protocol))
        previous = self._statuses.get(node.id, NodeStatus.UndefinedContainerStatus)
        self._statuses[node.id] = node.status
        if previous is not node.status:
            self._notify(
                "nodevisor_node_status_changed",
                node_id=node.id,
                name=node.name,
                runtime=node.runtime,
                previous=previous.name,
                current=node.status.name,
                failure=node.failure,
            )

    def _command_finished(self, **details: Any) -> None:
        self._notify("nodevisor_command_finished", **details)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        self.plugins.notify(self._spawn, hook, **kwargs)

    def _spawn(self, observer: Callable[[], Awaitable[Any]]) -> None:
        assert self._observers is not None
        self._observers.start_soon(observer)


def _loaded_plugins() -> PluginManager:
    plugins = PluginManager()
    plugins.load_entry_points()
    return plugins


async def _close_runtime(runtime: Runtime) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await runtime.aclose()
        except Exception:  # closing is best effort at exit
            log.exception("runtime %r did not close cleanly", runtime.name)
