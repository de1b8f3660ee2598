"""Build the ``Command`` messages that operators send, and describe updates."""

from __future__ import annotations

from google.protobuf.message import Message

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2

from .._protocol import pack_generic
from ..admin.v1 import admin_pb2

__all__ = ["NODE_ACTIONS", "describe_update", "generic_command", "node_command"]

# The node commands that take nothing but the node id: their CLI name, their
# `NodeCommand` field and its message.
NODE_ACTIONS: dict[str, tuple[str, type[Message]]] = {
    "start": ("start", node_pb2.NodeStart),
    "stop": ("stop", node_pb2.NodeStop),
    "restart": ("restart", node_pb2.NodeRestart),
    "delete": ("delete", node_pb2.NodeDelete),
    "info": ("info_get", node_pb2.NodeInfoGet),
    "snapshot": ("snapshot", node_pb2.NodeSnapshot),
}

_STATUS = node_pb2.NodeInfo.ContainerStatus


def node_command(node_id: str, **variant: object) -> command_flow_pb2.Command:
    """A node command; ``variant`` is one ``NodeCommand`` field and its value."""
    command = node_pb2.NodeCommand(
        id=common_pb2.Uuid(value=node_id),
        **variant,  # type: ignore[arg-type]
    )
    return command_flow_pb2.Command(node=command)


def generic_command(
    node_id: str, name: str, params: dict[str, int | float | str | bool]
) -> command_flow_pb2.Command:
    """A ``NodeGenericCommand``: ``name`` as the parameter ``command``, each
    value packed as a ``StringValue``, ``Int64Value``, ``DoubleValue`` or
    ``BoolValue``."""
    return node_command(node_id, generic=pack_generic(name, params))


def describe_update(response: admin_pb2.SendCommandResponse) -> str:
    """One line about an update of ``SendCommand``, as the CLI prints it."""
    kind = response.WhichOneof("update")
    if kind == "queued":
        return f"queued {response.queued.id}"
    if kind == "node_info":
        info = response.node_info
        status = _STATUS.Name(info.container_status)
        failure = f" failure={info.failure_reason}" if info.failure_reason else ""
        chain = ""
        if info.HasField("block_height"):
            chain += f" height={info.block_height}"
        if info.HasField("sync_status"):
            chain += f" sync={node_pb2.NodeInfo.SyncStatus.Name(info.sync_status)}"
        return f"node {info.id.value} {status}{chain}{failure}"
    info = response.command_info
    if not info.HasField("exit_code"):
        return "ack"
    return f"result exit_code={info.exit_code} response={info.response}"
