"""The agent: loads its parts, then serves the control plane until stopped."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import anyio

from blockjoy.api.v1 import command_flow_pb2, host_pb2

from ._catalogue import Catalogue
from ._config import AgentConfig
from ._credentials import Credentials
from ._dispatch import Dispatcher
from ._errors import ExitCode
from ._hostinfo import host_info
from ._messages import command_result, host_update, node_update
from ._nodes import NodeManager, StoreRunner
from ._plugins import PluginManager
from ._runtime import Runtime, RuntimeContext
from ._store import NodeRecord, Store
from ._stream import CommandStream, Outbox

__all__ = ["Agent", "load_runtimes"]

log = logging.getLogger(__name__)


async def load_runtimes(
    config: AgentConfig, host_id: str, plugins: PluginManager, wanted: set[str]
) -> tuple[dict[str, Runtime], dict[str, str]]:
    """Build each wanted runtime; return those that work and why others don't."""
    runtimes: dict[str, Runtime] = {}
    unavailable = {f.plugin: str(f) for f in plugins.failures}
    for name in sorted(wanted):
        try:
            cls = plugins.runtime_class(name)
            context = RuntimeContext(
                host_id=host_id,
                data_dir=config.data_dir / "runtimes" / name,
                settings=config.runtimes.get(name, {}),
            )
            runtime = cls(context)
        except Exception as exc:  # one runtime failing leaves the others running
            log.error("runtime %r cannot be used: %s", name, exc)
            unavailable[name] = str(exc)
            continue
        try:
            await runtime.check()
        except Exception as exc:  # the engine may come up later; keep the runtime
            log.warning("runtime %r is not ready: %s", name, exc)
        runtimes[name] = runtime
    return runtimes, unavailable


class Agent:
    """One host's agent. ``run()`` returns when cancelled (SIGINT, SIGTERM)."""

    def __init__(
        self, config: AgentConfig, plugins: PluginManager | None = None
    ) -> None:
        self.config = config
        self.credentials = Credentials.load(config.data_dir)
        self.plugins = plugins or _loaded_plugins()
        self.catalogue = Catalogue.load(config.catalogue_dirs)
        self.outbox = Outbox()
        self.stream: CommandStream | None = None
        #: Set once the stream exists; then ``stream.connected`` tells more.
        self.started = anyio.Event()

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            store = Store(self.config.data_dir / "state.db")
            stack.callback(store.close)
            db = StoreRunner(store)
            runtimes = await self._runtimes(stack, db)
            nodes = NodeManager(
                db=db,
                catalogue=self.catalogue,
                runtimes=runtimes[0],
                unavailable=runtimes[1],
                default_runtime=self.config.runtime,
                host_id=self.credentials.host_id,
                snapshot_dir=self.config.data_dir / "snapshots",
                report=self._report,
            )
            dispatcher = await stack.enter_async_context(
                Dispatcher(
                    nodes=nodes, db=db, emit=self.outbox.put, host_info=self._host_info
                )
            )
            await self._close_interrupted(db)
            self.stream = CommandStream(
                credentials=self.credentials,
                outbox=self.outbox,
                on_command=dispatcher.submit,
                greeting=lambda: self._greeting(nodes),
            )
            self.started.set()
            log.info(
                "agent for host %s starting, runtime %r",
                self.credentials.host_id,
                self.config.runtime,
            )
            await self.stream.run()

    async def _runtimes(
        self, stack: AsyncExitStack, db: StoreRunner
    ) -> tuple[dict[str, Runtime], dict[str, str]]:
        wanted = {self.config.runtime} | {n.runtime for n in await db(db.store.nodes)}
        runtimes, unavailable = await load_runtimes(
            self.config, self.credentials.host_id, self.plugins, wanted
        )
        for runtime in runtimes.values():
            stack.push_async_callback(_close_runtime, runtime)
        return runtimes, unavailable

    async def _close_interrupted(self, db: StoreRunner) -> None:
        why = "the agent stopped while this command ran; check the node's status"
        for record in await db(db.store.unfinished_commands):
            await db(
                db.store.finish_command, record.id, int(ExitCode.INTERNAL_ERROR), why
            )
            log.warning(
                "command %s (%s) was interrupted by a restart", record.id, record.kind
            )
            self.outbox.put(command_result(record.id, ExitCode.INTERNAL_ERROR, why))

    async def _greeting(self, nodes: NodeManager) -> list[command_flow_pb2.InfoUpdate]:
        updates = [host_update(await self._host_info())]
        return updates + [node_update(node) for node in await nodes.nodes()]

    async def _host_info(self) -> host_pb2.HostInfo:
        config = self.config
        return await anyio.to_thread.run_sync(
            lambda: host_info(
                host_id=self.credentials.host_id,
                api_url=self.credentials.api_url,
                data_dir=config.data_dir,
                name=config.name,
                location=config.location,
            )
        )

    def _report(self, node: NodeRecord) -> None:
        self.outbox.put(node_update(node))


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
