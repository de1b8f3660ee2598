"""The errors of the reference control plane.

Each error carries the gRPC status the servicers answer it with; they are
translated in one place, ``abort_on_error``::

    ControlPlaneError (NodevisorError)
    ├── Unauthenticated      no token, or one the control plane does not know
    ├── OtpRejected          a one-time password that is unknown, used or expired
    ├── NotFound             no host (or command) with that id
    ├── InvalidRequest       a request that cannot be carried out as sent
    ├── CommandTimeout       no result for a command within the caller's timeout
    ├── Unavailable          the control plane cannot be reached, or is stopping
    ├── DataDirLocked        another control plane serves the same data dir
    └── DataDirUnusable      the data dir cannot be created, or its files opened

Clients turn a failed call back into these with ``from_rpc_error``. The last
two stop a control plane from starting; no call is answered with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from .._errors import NodevisorError

__all__ = [
    "CommandTimeout",
    "ControlPlaneError",
    "DataDirLocked",
    "DataDirUnusable",
    "InvalidRequest",
    "NotFound",
    "OtpRejected",
    "Unauthenticated",
    "Unavailable",
    "abort_on_error",
    "from_rpc_error",
]


class ControlPlaneError(NodevisorError):
    """The base of the errors the control plane answers a call with."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class Unauthenticated(ControlPlaneError):
    status = grpc.StatusCode.UNAUTHENTICATED


class OtpRejected(ControlPlaneError):
    status = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ControlPlaneError):
    status = grpc.StatusCode.NOT_FOUND


class InvalidRequest(ControlPlaneError):
    status = grpc.StatusCode.INVALID_ARGUMENT


@contextlib.asynccontextmanager
async def abort_on_error(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """End the call with the status of a ``ControlPlaneError`` raised inside."""
    try:
        yield
    except ControlPlaneError as exc:
        await context.abort(exc.status, str(exc))


class CommandTimeout(ControlPlaneError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ControlPlaneError):
    status = grpc.StatusCode.UNAVAILABLE


class DataDirLocked(ControlPlaneError):
    """Another control plane process serves the same data directory."""


class DataDirUnusable(ControlPlaneError):
    """The data directory cannot be created, or a file in it cannot be opened."""


_BY_STATUS: dict[grpc.StatusCode, type[ControlPlaneError]] = {
    cls.status: cls
    for cls in (
        Unauthenticated,
        OtpRejected,
        NotFound,
        InvalidRequest,
        CommandTimeout,
        Unavailable,
    )
}


def from_rpc_error(exc: grpc.aio.AioRpcError, address: str) -> ControlPlaneError:
    """The error a client raises for a failed call to the control plane."""
    cls = _BY_STATUS.get(exc.code(), ControlPlaneError)
    details = exc.details() or "no details"
    return cls(f"control plane at {address} answered {exc.code().name}: {details}")
