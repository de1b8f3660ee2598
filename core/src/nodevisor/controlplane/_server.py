"""The reference control plane as one object: database, services and server."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import anyio
import grpc

from blockjoy.api.v1 import command_flow_pb2_grpc, host_pb2_grpc

from .._config import HOST_PORT
from .._lock import exclusive
from .._outbox import MAX_MESSAGE_BYTES
from ..admin.v1 import admin_pb2_grpc
from ._admin_api import AdminServicer
from ._agent_api import CommandFlowServicer, HostsServicer
from ._db import Database
from ._errors import DataDirLocked, DataDirUnusable, Unavailable
from ._hub import Hub
from ._tokens import ensure_admin_token

__all__ = ["DATABASE_FILE", "ControlPlane", "check_listen", "serve"]

log = logging.getLogger(__name__)

#: No second server may bind a port already in use (gRPC allows it by
#: default, and would split the agents between the two); messages are
#: limited as the agent limits them.
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

DATABASE_FILE = "controlplane.sqlite3"


def check_listen(value: str) -> str:
    """Return ``value`` if it is an address to listen on; raise ``ValueError``.

    That is ``host:port`` (``[::1]:port`` for IPv6), the agent's form of an
    address, with a port from 0 to 65535: 0 takes any free port. gRPC would
    take a larger port modulo 65536, and other targets than ``host:port`` do
    not give an address that agents could be told.
    """
    match = HOST_PORT.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not host:port: expected for example 127.0.0.1:50051,"
            " 0.0.0.0:50051 or [::1]:50051 (port 0 takes any free port)"
        )
    if int(match["port"]) > 65535:
        raise ValueError(
            f"{value!r} has port {match['port']}; a port is 0-65535 in host:port"
            " (0 takes any free port)"
        )
    return value


def _bind_error(listen: str) -> str | None:
    """Why the system refuses ``listen`` ("Address already in use"), if it
    does: gRPC's own error names no cause."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, int(port)), family=family):
            return None
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)


class ControlPlane:
    """A control plane serving ``data_dir`` on ``listen``.

    ``async with ControlPlane(data_dir, "127.0.0.1:0") as cp`` starts it;
    ``cp.address`` is then the address it listens on, with the real port.
    A ``listen`` that is not ``host:port`` raises ``ValueError`` at once.
    """

    def __init__(
        self, data_dir: Path, listen: str = "127.0.0.1:50051", grace: float = 1.0
    ) -> None:
        self.data_dir, self.listen, self.grace = data_dir, check_listen(listen), grace
        self.address = ""
        self.admin_token = ""
        self._hub = Hub()
        self._db: Database | None = None
        self._server: grpc.aio.Server | None = None
        self._held = contextlib.ExitStack()

    def __repr__(self) -> str:
        state = f"serving on {self.address}" if self._server else "stopped"
        return f"<ControlPlane {self.data_dir} {state}>"

    async def start(self) -> None:
        # Bound first: an address that cannot be had leaves no data dir made.
        server = grpc.aio.server(options=SERVER_OPTIONS)
        try:
            port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            # A host name is looked up: not on the event loop.
            why = await anyio.to_thread.run_sync(_bind_error, self.listen)
            why = why or str(exc)
            raise Unavailable(f"cannot listen on {self.listen!r}: {why}") from exc
        try:
            db = await self._open_data_dir()
            await db.call(db.mark_all_offline)
            self._add_services(server, db)
            await server.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await server.stop(None)
            self._close_data_dir()
            raise
        self._server = server
        self.address = f"{self.listen.rpartition(':')[0]}:{port}"
        log.info(
            "control plane listening on %s (data dir %s)", self.address, self.data_dir
        )

    async def _open_data_dir(self) -> Database:
        """Hold the data dir, created owner-only, and open its files.

        The lock is taken before anything in it is read or written: a second
        control plane on the same data dir would mark every host offline.
        """
        with _unusable_as_error(self.data_dir):
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._held.enter_context(
                exclusive(self.data_dir, "control plane", DataDirLocked)
            )
            self.admin_token = ensure_admin_token(self.data_dir)
            self._db = await anyio.to_thread.run_sync(
                Database, self.data_dir / DATABASE_FILE
            )
        return self._db

    def _add_services(self, server: grpc.aio.Server, db: Database) -> None:
        host_pb2_grpc.add_HostsServicer_to_server(HostsServicer(db, self._hub), server)
        command_flow_pb2_grpc.add_CommandFlowServicer_to_server(
            CommandFlowServicer(db, self._hub), server
        )
        admin = AdminServicer(db, self._hub, self.admin_token)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)

    async def aclose(self) -> None:
        """End every agent stream, stop serving and close the database."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.grace + 1.0):
                await self._hub.end_all(
                    Unavailable.status, "the control plane is shutting down"
                )
            if self._server is not None:
                await self._server.stop(self.grace)
                self._server = None
            self._close_data_dir()
        log.info("control plane on %s stopped", self.address)

    def _close_data_dir(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._held.close()

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@contextlib.contextmanager
def _unusable_as_error(data_dir: Path) -> Iterator[None]:
    """Turn the OS's (or SQLite's) refusal of the data dir into one sentence."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename is not None and exc.filename != str(data_dir):
            reason = f"{reason}: {str(exc.filename)!r}"
        raise DataDirUnusable(
            f"cannot use {str(data_dir)!r} as the data dir: {reason}"
        ) from exc
    except sqlite3.Error as exc:
        raise DataDirUnusable(
            f"cannot use {str(data_dir)!r} as the data dir: its database "
            f"{DATABASE_FILE} cannot be opened: {exc}"
        ) from exc


async def serve(data_dir: Path, listen: str) -> None:
    """Serve until SIGINT or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with ControlPlane(data_dir, listen):
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                return
