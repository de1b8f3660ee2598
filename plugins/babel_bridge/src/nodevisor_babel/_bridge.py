"""The bridge: how the host agent asks a node's babel, over its Unix socket.

``BabelBridge`` implements ``Runtime.protocol_status`` and
``Runtime.protocol_command`` for any runtime that says where a node's babel
socket is (``babel_socket``). gRPC errors are translated here, with the
cause chained.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from nodevisor import (
    InvalidArgument,
    NodeSpec,
    NotSupported,
    ProtocolStatus,
    RuntimeFailure,
)
from nodevisor._interface import Value

from .v1 import babel_pb2, babel_pb2_grpc

__all__ = ["BabelBridge", "babel_call"]

log = logging.getLogger(__name__)

_REFUSALS: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.NOT_FOUND: NotSupported,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}


async def babel_call(
    socket: Path,
    node_id: str,
    method: Callable[[babel_pb2_grpc.BabelServiceStub], Any],
    request: Any,
    timeout: float,  # noqa: ASYNC109 (a gRPC deadline, handed to gRPC)
) -> Any:
    """Call one method of the node's babel; translate its errors."""
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stub = babel_pb2_grpc.BabelServiceStub(channel)
        try:
            return await method(stub)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            refusal = _REFUSALS.get(exc.code())
            if refusal is not None:
                raise refusal(exc.details()) from exc
            raise RuntimeFailure(
                f"babel of node {node_id} at {str(socket)!r}: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc


def _value(value: Value) -> babel_pb2.ParameterValue:
    if isinstance(value, bool):
        return babel_pb2.ParameterValue(bool_value=value)
    if isinstance(value, int):
        return babel_pb2.ParameterValue(int_value=value)
    if isinstance(value, float):
        return babel_pb2.ParameterValue(double_value=value)
    return babel_pb2.ParameterValue(string_value=value)


class BabelBridge(abc.ABC):
    """Protocol status and generic commands through each node's babel."""

    #: Seconds a generic command may take.
    command_timeout: float = 120.0

    @abc.abstractmethod
    def babel_socket(self, node_id: str) -> Path:
        """Where the node's babel listens."""

    async def protocol_status(self, spec: NodeSpec) -> ProtocolStatus:
        answer = await babel_call(
            self.babel_socket(spec.id),
            spec.id,
            lambda stub: stub.Status,
            babel_pb2.StatusRequest(protocol=True),
            timeout=30,
        )
        for line in answer.errors:
            log.info("node %s: babel could not answer %s", spec.id, line)
        return ProtocolStatus(
            block_height=_optional(answer, "block_height"),
            sync_status=_optional(answer, "sync_status"),
            app_status=_optional(answer, "app_status"),
            onchain_name=_optional(answer, "onchain_name"),
            peers=_optional(answer, "peers"),
        )

    async def protocol_command(
        self, spec: NodeSpec, command: str, params: Mapping[str, Value]
    ) -> str:
        request = babel_pb2.RunCommandRequest(
            name=command, params={k: _value(v) for k, v in params.items()}
        )
        answer = await babel_call(
            self.babel_socket(spec.id),
            spec.id,
            lambda stub: stub.RunCommand,
            request,
            timeout=self.command_timeout,
        )
        return answer.output


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None
