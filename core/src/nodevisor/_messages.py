"""Building the ``InfoUpdate`` messages the agent sends."""

from __future__ import annotations

from blockjoy.api.v1 import command_flow_pb2, common_pb2, host_pb2, node_pb2

from ._runtime import ProtocolStatus
from ._store import NodeRecord

__all__ = [
    "MAX_TEXT_BYTES",
    "command_ack",
    "command_result",
    "host_update",
    "node_update",
]

#: The most bytes of a command's response or a node's failure reason that
#: an update carries: far below the message limit, so that whatever a
#: runtime or a refused value made of it, the update still goes out.
MAX_TEXT_BYTES = 64 * 1024


def _fitted(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_TEXT_BYTES:
        return text
    note = f" [cut short: {len(data)} bytes in all]"
    kept = data[: MAX_TEXT_BYTES - len(note.encode())].decode(errors="ignore")
    return kept + note


def node_update(
    node: NodeRecord, protocol: ProtocolStatus | None = None
) -> command_flow_pb2.InfoUpdate:
    info = node_pb2.NodeInfo(
        id=common_pb2.Uuid(value=node.id),
        name=node.name,
        container_status=int(node.status),  # type: ignore[arg-type]
        image=node.url,
        runtime=node.runtime,
    )
    if node.failure:
        info.failure_reason = _fitted(node.failure)
    if protocol is not None:
        _fill_protocol(info, protocol)
    return command_flow_pb2.InfoUpdate(node=info)


def _fill_protocol(info: node_pb2.NodeInfo, protocol: ProtocolStatus) -> None:
    if protocol.block_height is not None:
        info.block_height = protocol.block_height
    if protocol.sync_status is not None:
        info.sync_status = node_pb2.NodeInfo.SyncStatus.Value(protocol.sync_status)
    if protocol.app_status is not None:
        info.app_status = node_pb2.NodeInfo.ApplicationStatus.Value(protocol.app_status)
    if protocol.onchain_name is not None:
        info.onchain_name = protocol.onchain_name


def host_update(info: host_pb2.HostInfo) -> command_flow_pb2.InfoUpdate:
    return command_flow_pb2.InfoUpdate(host=info)


def command_ack(command_id: str) -> command_flow_pb2.InfoUpdate:
    info = command_flow_pb2.CommandInfo(id=common_pb2.Uuid(value=command_id))
    return command_flow_pb2.InfoUpdate(command=info)


def command_result(
    command_id: str, exit_code: int, response: str
) -> command_flow_pb2.InfoUpdate:
    info = command_flow_pb2.CommandInfo(
        id=common_pb2.Uuid(value=command_id),
        exit_code=exit_code,
        response=_fitted(response),
    )
    return command_flow_pb2.InfoUpdate(command=info)
