"""``nodevisor control-plane``: run the reference control plane and drive it."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.markup import escape
from rich.table import Table

from blockjoy.api.v1 import command_flow_pb2, common_pb2, host_pb2, node_pb2

from .._config import check_api_url
from .._logging import configure
from .._loop import take_short_turns
from .._output import console
from ..admin.v1 import admin_pb2
from ._admin_api import MIN_SECONDS
from ._client import AdminClient
from ._commands import NODE_ACTIONS, describe_update, generic_command, node_command
from ._errors import CommandTimeout, ControlPlaneError, Unavailable
from ._server import check_listen
from ._server import serve as serve_forever

__all__ = ["control_plane"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The exit status of `send` when no result came within --timeout (as timeout(1)),
# and of every client command when the control plane could not be reached or
# went away (EX_UNAVAILABLE), so that a script tells them from a command that
# failed.
TIMED_OUT = 124
UNREACHABLE = 69
_EXIT_FOR: dict[type[ControlPlaneError], int] = {
    CommandTimeout: TIMED_OUT,
    Unavailable: UNREACHABLE,
}

STATUS = node_pb2.NodeInfo.ContainerStatus
SYNC = node_pb2.NodeInfo.SyncStatus
#: The longest a one-time password may stay valid: thirty days.
MAX_TTL = 30 * 86400.0
#: The longest `send` waits for a result when given a --timeout: thirty days
#: (without one it waits as long as it takes).
MAX_TIMEOUT = 30 * 86400.0

data_dir_option = click.option(
    "--data-dir",
    envvar="NODEVISOR_CP_DATA_DIR",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The control plane's data dir (env NODEVISOR_CP_DATA_DIR).",
)


def _address(
    check: Callable[[str], str],
) -> Callable[[click.Context, click.Parameter, str], str]:
    """A click callback: ``check``'s ``ValueError`` as a usage error (exit 2),
    before anything is dialled, bound or created."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            return check(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


api_option = click.option(
    "--api",
    envvar="NODEVISOR_CP_URL",
    default="127.0.0.1:50051",
    show_default=True,
    # Checked as the agent checks its api_url: a URL or a mistyped address
    # is not left to the resolver to refuse as "unreachable".
    callback=_address(check_api_url),
    help="host:port of the control plane (env NODEVISOR_CP_URL).",
)


def _run(
    main: Callable[..., Awaitable[T]],
    *args: Any,
    exit_for: Mapping[type[ControlPlaneError], int] | None = None,
) -> T:
    """Run ``main`` on asyncio; a control plane error ends the CLI in one line.

    Its exit status is the one ``exit_for`` gives the error's class, or 1.
    """
    try:
        return anyio.run(main, *args, backend="asyncio")
    except ControlPlaneError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = (exit_for or {}).get(type(exc), 1)
        raise error from exc


def _admin_call(
    api: str, data_dir: Path, call: Callable[[AdminClient], Awaitable[T]]
) -> T:
    """``call`` on a client of the control plane: 69 when it cannot be reached."""

    async def main() -> T:
        async with AdminClient.for_data_dir(api, data_dir) as admin:
            return await call(admin)

    return _run(main, exit_for=_EXIT_FOR)


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


@click.group("control-plane")
def control_plane() -> None:
    """Run the reference control plane, and operate it."""


@control_plane.command()
@click.option(
    "--listen",
    default="127.0.0.1:50051",
    show_default=True,
    callback=_address(check_listen),
    help="host:port to serve on; port 0 takes any free port.",
)
@data_dir_option
def serve(listen: str, data_dir: Path) -> None:
    """Serve agents and operators until SIGINT or SIGTERM."""
    logger = logging.getLogger(__package__)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    configure()
    take_short_turns()
    _run(serve_forever, data_dir, listen)


@control_plane.group()
def otp() -> None:
    """One-time passwords that provision hosts."""


def _seconds_up_to(
    limit: float, in_words: str
) -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A click callback that refuses a number of seconds under the server's
    minimum (one millisecond) or over ``limit`` (``in_words``, as "30 days")."""

    def check(
        ctx: click.Context, param: click.Parameter, value: float | None
    ) -> float | None:
        if value is not None and not MIN_SECONDS <= value <= limit:  # NaN too
            raise click.BadParameter(
                f"must be at least {MIN_SECONDS:g} and at most {limit:.0f} "
                f"seconds (1 ms to {in_words}), got {value:g}"
            )
        return value

    return check


@otp.command("create")
@click.option(
    "--ttl",
    type=float,
    default=3600.0,
    show_default=True,
    callback=_seconds_up_to(MAX_TTL, "30 days"),
    help="Seconds the password stays valid.",
)
@api_option
@data_dir_option
def otp_create(ttl: float, api: str, data_dir: Path) -> None:
    """Print a new one-time password, alone on stdout."""
    click.echo(_admin_call(api, data_dir, lambda admin: admin.create_otp(ttl)))


@control_plane.command()
@api_option
@data_dir_option
def hosts(api: str, data_dir: Path) -> None:
    """List the provisioned hosts; then each plugin that failed on one, and why."""
    found = _admin_call(api, data_dir, lambda admin: admin.list_hosts())
    table = Table(
        "id", "name", "status", "ip", "version", "last seen", "plugin failures"
    )
    for host in found:
        table.add_row(
            host.id,
            host.info.name,
            "online" if host.online else "offline",
            host.info.ip,
            host.info.version,
            _when(host.last_seen),
            _plugin_failures(host.info),
        )
    out = console()
    out.print(table)
    # Below the table, where a reason has room: it is often a long sentence.
    for line in _failure_reasons(found):
        out.print(line, highlight=False)


def _plugin_failures(info: host_pb2.HostInfo) -> str:
    """The names of the host's plugins that failed, in red, or empty."""
    failed = [plugin.name for plugin in info.plugins if plugin.HasField("error")]
    return f"[red]{escape(', '.join(failed))}[/red]" if failed else ""


def _failure_reasons(hosts: list[admin_pb2.Host]) -> list[str]:
    """A line for each plugin that failed on a host: the host, then why."""
    lines = []
    for host in hosts:
        where = f"{host.info.name} ({host.id})" if host.info.name else host.id
        for plugin in host.info.plugins:
            if plugin.HasField("error"):
                why = f"plugin {plugin.name!r} ({plugin.distribution}): {plugin.error}"
                lines.append(f"[red]failed on {escape(where)}:[/red] {escape(why)}")
    return lines


def _host_filter(what: str) -> Callable[[F], F]:
    """``--host ID``, checked as ``send --host`` is; the server knows the ids."""
    return click.option(
        "--host", "host_id", type=click.UUID, help=f"Only the {what} of this host."
    )


@control_plane.command()
@_host_filter("nodes")
@api_option
@data_dir_option
def nodes(host_id: uuid.UUID | None, api: str, data_dir: Path) -> None:
    """List the nodes, with their last known state."""
    host = str(host_id or "")
    found = _admin_call(api, data_dir, lambda admin: admin.list_nodes(host))
    table = Table(
        "host", "id", "name", "status", "image", "height", "sync", "failure", "updated"
    )
    for node in found:
        info = node.info
        table.add_row(
            node.host_id,
            info.id.value,
            info.name,
            STATUS.Name(info.container_status),
            info.image,
            str(info.block_height) if info.HasField("block_height") else "",
            SYNC.Name(info.sync_status) if info.HasField("sync_status") else "",
            info.failure_reason,
            _when(node.updated_at),
        )
    console().print(table)


@control_plane.command()
@_host_filter("commands")
@api_option
@data_dir_option
def commands(host_id: uuid.UUID | None, api: str, data_dir: Path) -> None:
    """List the history of commands."""
    host = str(host_id or "")
    found = _admin_call(api, data_dir, lambda admin: admin.list_commands(host))
    table = Table(
        "id", "host", "node", "command", "state", "exit", "response", "created"
    )
    for record in found:
        table.add_row(
            record.id,
            record.host_id,
            record.node_id,
            _describe(record.command),
            admin_pb2.CommandState.Name(record.state).removeprefix("COMMAND_STATE_"),
            str(record.exit_code) if record.HasField("exit_code") else "",
            record.response,
            _when(record.created_at),
        )
    console().print(table)


def _describe(command: command_flow_pb2.Command) -> str:
    variant = command.WhichOneof("type")
    if variant is None:
        return "(none)"
    inner = getattr(command, variant)
    return f"{variant} {inner.WhichOneof('command') or '(none)'}"


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where ``send`` sends its command, and how long it waits."""

    api: str
    data_dir: Path | None
    host_uuid: uuid.UUID | None
    seconds: float | None
    no_wait: bool

    @property
    def host_id(self) -> str:
        return str(self.host_uuid)


pass_target = click.make_pass_decorator(_Target)
node_option = click.option(
    "--node", "node_id", type=click.UUID, required=True, help="The node's id."
)


@control_plane.group()
@click.option(
    "--host",
    "host_id",
    type=click.UUID,
    help="The host to send the command to (required).",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    callback=_seconds_up_to(MAX_TIMEOUT, "30 days"),
    help="Seconds to wait for the result; no limit by default.",
)
@click.option("--no-wait", is_flag=True, help="Only queue the command.")
@api_option
@click.option(
    "--data-dir",
    envvar="NODEVISOR_CP_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The control plane's data dir (env NODEVISOR_CP_DATA_DIR; required).",
)
@click.pass_context
def send(
    ctx: click.Context,
    host_id: uuid.UUID | None,
    timeout: float | None,
    no_wait: bool,
    api: str,
    data_dir: Path | None,
) -> None:
    """Send a command to a host and print every update about it.

    Exits with 0 when the command's result has exit code 0, with the result's
    exit code otherwise, and with 124 when no result came within --timeout.
    """
    # Checked when a command is sent rather than here, so that
    # `send create --help` works without them.
    ctx.obj = _Target(api, data_dir, host_id, timeout, no_wait)


def _send_and_exit(target: _Target, command: command_flow_pb2.Command) -> None:
    if target.host_uuid is None:
        raise click.UsageError("Missing option '--host'.")
    if target.data_dir is None:
        raise click.UsageError("Missing option '--data-dir'.")
    code = _run(_send, target, command, exit_for=_EXIT_FOR)
    sys.exit(min(code, 125) if code >= 0 else 1)


async def _send(target: _Target, command: command_flow_pb2.Command) -> int:
    assert target.data_dir is not None
    async with AdminClient.for_data_dir(target.api, target.data_dir) as admin:
        if target.no_wait:
            record = await admin.queue_command(target.host_id, command)
            click.echo(f"queued {record.id}")
            return 0
        updates = admin.send_command(target.host_id, command, target.seconds)
        await _warn_if_offline(admin, target.host_id)
        async for response in updates:
            click.echo(describe_update(response))
            if response.command_info.HasField("exit_code"):
                return response.command_info.exit_code
    raise ControlPlaneError(
        f"control plane at {target.api} ended the stream before a result"
    )


async def _warn_if_offline(admin: AdminClient, host_id: str) -> None:
    hosts = {host.id: host for host in await admin.list_hosts()}
    if host_id in hosts and not hosts[host_id].online:
        click.echo(
            f"host {host_id} is offline: the command waits in its queue until "
            "its agent connects",
            err=True,
        )


@send.command()
@click.option("--name", required=True, help="The new node's name.")
@click.option("--image", required=True, help="protocol/version from the catalogue.")
@click.option("--blockchain", default="", help="The protocol, if it must be checked.")
@click.option(
    "--node-id",
    type=click.UUID,
    default=None,
    help="The new node's id; a new one when absent.",
)
@pass_target
def create(
    target: _Target,
    name: str,
    image: str,
    blockchain: str,
    node_id: uuid.UUID | None,
) -> None:
    """Create a node."""
    node_id = node_id or uuid.uuid4()
    click.echo(f"node-id {node_id}")
    create = node_pb2.NodeCreate(
        name=name, blockchain=blockchain, image=common_pb2.ContainerImage(url=image)
    )
    _send_and_exit(target, node_command(str(node_id), create=create))


def _add_node_action(name: str, field: str, message: type[Message]) -> None:
    @send.command(name, help=f"Send a `{field}` command to a node.")
    @node_option
    @pass_target
    def action(target: _Target, node_id: uuid.UUID) -> None:
        _send_and_exit(target, node_command(str(node_id), **{field: message()}))


for _name, (_field, _message) in NODE_ACTIONS.items():
    _add_node_action(_name, _field, _message)


@send.command()
@node_option
@click.option("--image", required=True, help="protocol/version from the catalogue.")
@pass_target
def upgrade(target: _Target, node_id: uuid.UUID, image: str) -> None:
    """Upgrade a node to another image."""
    upgrade = node_pb2.NodeUpgrade(image=common_pb2.ContainerImage(url=image))
    _send_and_exit(target, node_command(str(node_id), upgrade=upgrade))


@send.command()
@node_option
@click.option("--name", required=True, help="The node's new name.")
@pass_target
def rename(target: _Target, node_id: uuid.UUID, name: str) -> None:
    """Rename a node."""
    update = node_pb2.NodeInfoUpdate(name=name)
    _send_and_exit(target, node_command(str(node_id), update=update))


@send.command()
@node_option
@click.argument("name")
@click.argument("params", nargs=-1, metavar="[PARAM=VALUE]...")
@pass_target
def generic(
    target: _Target, node_id: uuid.UUID, name: str, params: tuple[str, ...]
) -> None:
    """Run a generic command the node's protocol spec declares.

    A VALUE that reads as JSON (5, 2.5, true) is sent as a number or a
    boolean; anything else as a string: `send generic --node ID mine n=5`.
    """
    values: dict[str, int | float | str | bool] = {}
    for param in params:
        key, sep, raw = param.partition("=")
        if not sep or not key:
            raise click.UsageError(f"parameter {param!r} is not PARAM=VALUE")
        if key in values:
            raise click.UsageError(f"parameter {key!r} is given twice")
        values[key] = _plain_value(raw)
    _send_and_exit(target, generic_command(str(node_id), name, values))


def _plain_value(raw: str) -> int | float | str | bool:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, int | float | bool) else raw


@send.command()
@pass_target
def raw(target: _Target) -> None:
    """Send a Command that carries no command at all (to test agents)."""
    _send_and_exit(target, command_flow_pb2.Command())
