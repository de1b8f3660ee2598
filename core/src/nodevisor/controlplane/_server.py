"""The reference control plane as one object: database, services and server."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import TracebackType

import anyio
import grpc

from blockjoy.api.v1 import command_flow_pb2_grpc, host_pb2_grpc

from .._outbox import MAX_MESSAGE_BYTES
from ..admin.v1 import admin_pb2_grpc
from ._admin_api import AdminServicer
from ._agent_api import CommandFlowServicer, HostsServicer
from ._db import Database
from ._errors import Unavailable
from ._hub import Hub
from ._tokens import ensure_admin_token

__all__ = ["DATABASE_FILE", "ControlPlane", "serve"]

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


class ControlPlane:
    """A control plane serving ``data_dir`` on ``listen``.

    ``async with ControlPlane(data_dir, "127.0.0.1:0") as cp`` starts it;
    ``cp.address`` is then the address it listens on, with the real port.
    """

    def __init__(
        self, data_dir: Path, listen: str = "127.0.0.1:50051", grace: float = 1.0
    ) -> None:
        self.data_dir, self.listen, self.grace = data_dir, listen, grace
        self.address = ""
        self.admin_token = ""
        self._hub = Hub()
        self._db: Database | None = None
        self._server: grpc.aio.Server | None = None

    def __repr__(self) -> str:
        state = f"serving on {self.address}" if self._server else "stopped"
        return f"<ControlPlane {self.data_dir} {state}>"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = ensure_admin_token(self.data_dir)
        self._db = db = await anyio.to_thread.run_sync(
            Database, self.data_dir / DATABASE_FILE
        )
        await db.call(db.mark_all_offline)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        self._add_services(server, db)
        try:
            port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            db.close()
            raise Unavailable(f"cannot listen on {self.listen!r}: {exc}") from exc
        await server.start()
        self._server = server
        self.address = f"{self.listen.rpartition(':')[0]}:{port}"
        log.info(
            "control plane listening on %s (data dir %s)", self.address, self.data_dir
        )

    def _add_services(self, server: grpc.aio.Server, db: Database) -> None:
        host_pb2_grpc.add_HostsServicer_to_server(HostsServicer(db, self._hub), server)
        command_flow_pb2_grpc.add_CommandFlowServicer_to_server(
            CommandFlowServicer(db, self._hub), server
        )
        admin = AdminServicer(db, self._hub, self.admin_token, self.data_dir)
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
            if self._db is not None:
                self._db.close()
                self._db = None
        log.info("control plane on %s stopped", self.address)

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


async def serve(data_dir: Path, listen: str) -> None:
    """Serve until SIGINT or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with ControlPlane(data_dir, listen):
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                return
