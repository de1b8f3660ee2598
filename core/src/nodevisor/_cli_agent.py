"""``nodevisor agent``: the commands an operator runs on a host."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import click
from rich.markup import escape
from rich.table import Table

from ._agent import Agent
from ._config import AgentConfig, check_api_url, load_config
from ._credentials import Credentials
from ._errors import CredentialsError, NodevisorError
from ._loop import take_short_turns
from ._output import console
from ._plugins import PluginManager
from ._provision import provision
from ._store import STORE_FILE, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Config file [default: $NODEVISOR_CONFIG or /etc/nodevisor/config.toml].",
)


@click.group("agent")
def agent() -> None:
    """Run and inspect the agent on this host."""


@agent.command("provision")
@config_option
@click.option("--otp", required=True, help="One-time password from the operator.")
@click.option(
    "--api",
    "api_url",
    help="Control plane address host:port [default: api_url from the config; "
    "when provisioning again, the address saved at the last provisioning].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Provision again although this host is provisioned already.",
)
def provision_command(
    config_path: Path | None, otp: str, api_url: str | None, force: bool
) -> None:
    """Register this host with the control plane."""
    config = _config(config_path)
    if api_url is not None:
        try:
            check_api_url(api_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--api'") from None
    url = api_url or _saved_api_url(config) or config.api_url
    credentials = _run(lambda: provision(config, otp, url, force=force))
    click.echo(f"provisioned: host id {credentials.host_id}")


def _saved_api_url(config: AgentConfig) -> str | None:
    """Where a provisioned host was provisioned, unless the config names one."""
    if config.api_url_set:
        return None
    try:
        return Credentials.load(config.data_dir).api_url
    except CredentialsError:
        return None


@agent.command("run")
@config_option
def run_command(config_path: Path | None) -> None:
    """Connect to the control plane and carry out its commands until stopped."""
    config = _config(config_path)
    take_short_turns()
    _run(lambda: _serve(Agent(config)))
    leave_stuck_threads()


def leave_stuck_threads(wait: float = 1.0) -> None:
    """Exit now if runtime calls given up on still hold worker threads.

    Python waits for every such thread at exit, however long a hung engine
    keeps it, with the agent already stopped and its data dir free for the
    next one. What the agent must keep is in its store by now.
    """
    others = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon
    ]
    deadline = time.monotonic() + wait
    for thread in others:  # idle workers end once the event loop is closed
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread for thread in others if thread.is_alive()]
    if not stuck:
        return
    log.warning(
        "%d runtime calls given up on still run in worker threads; exiting "
        "without waiting for them",
        len(stuck),
    )
    logging.shutdown()
    os._exit(0)


async def _serve(agent: Agent) -> None:
    """Run until SIGTERM or SIGINT, then drain; a second signal stops at once."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, stop, tasks.cancel_scope)
        await agent.run(stop)
        tasks.cancel_scope.cancel()
    log.info("agent stopped")


async def _watch_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            name = signal.Signals(received).name
            if stop.is_set():
                log.warning("received %s again; stopping now", name)
                scope.cancel()
                return
            log.info("received %s; finishing running commands, then stopping", name)
            stop.set()


@agent.command("plugins")
def plugins_command() -> None:
    """List the runtimes and observers plugins provide, and plugins that failed."""
    plugins = PluginManager()
    plugins.load_entry_points()
    out = console()
    out.print(_runtime_table(plugins))
    for line in _plugin_lines(plugins):
        out.print(line, markup=True, highlight=False)
    if plugins.failures:
        raise SystemExit(1)


def _runtime_table(plugins: PluginManager) -> Table:
    table = Table(
        "runtime", "class", "contract", "snapshot", "upgrade", "exec", "protocol"
    )
    for name, cls in sorted(plugins.runtimes.items()):
        caps = cls.capabilities
        table.add_row(
            name,
            f"{cls.__module__}.{cls.__qualname__}",
            str(cls.contract_version),
            *(
                _yes(flag)
                for flag in (caps.snapshot, caps.upgrade, caps.exec, caps.protocol)
            ),
        )
    return table


def _plugin_lines(plugins: PluginManager) -> list[str]:
    """A line for each plugin the table leaves out, the failed ones last."""
    lines = []
    for plugin in plugins.plugins:
        text = escape(str(plugin))
        if plugin.observes and not plugin.errors:
            lines.append(f"observer: {text} ({', '.join(plugin.observes)})")
        elif not plugin.runtimes and not plugin.errors:
            lines.append(
                f"[yellow]unused:[/yellow] {text}, but it provides no "
                "runtime and implements no hook"
            )
    failed = [f"[red]failed:[/red] {escape(str(p))}" for p in plugins.failures]
    return lines + failed


@agent.command("nodes")
@config_option
def nodes_command(config_path: Path | None) -> None:
    """List the nodes this agent keeps, as its store records them."""
    config = _config(config_path)
    try:
        store = Store.open_readonly(config.data_dir / STORE_FILE)
    except NodevisorError as exc:
        raise click.ClickException(str(exc)) from exc
    table = Table("id", "name", "image", "runtime", "status", "expected", "failure")
    for node in store.nodes():
        table.add_row(
            node.id,
            node.name,
            node.url,
            node.runtime,
            node.status.name,
            node.expected.name,
            node.failure or "",
        )
    store.close()
    console().print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _config(path: Path | None) -> AgentConfig:
    try:
        return load_config(path)
    except NodevisorError as exc:
        raise click.ClickException(str(exc)) from exc


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()`` on the event loop; nodevisor's errors become CLI errors."""
    try:
        return anyio.run(make)
    except NodevisorError as exc:
        raise click.ClickException(str(exc)) from exc
    except BaseExceptionGroup as group:
        # Raised inside a task group (the agent's start-up, say): one error
        # arrives wrapped, and deserves the same one-line message.
        error = _sole(group)
        if not isinstance(error, NodevisorError):
            raise
        raise click.ClickException(str(error)) from error


def _sole(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
