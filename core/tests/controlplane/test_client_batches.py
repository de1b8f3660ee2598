"""How ``AdminClient.send_commands`` writes its requests.

Requests that are ready together go in one ``SendCommandsRequest.batch``,
but only once the control plane has said in its response headers that it
reads batches; an error of the caller's requests ends the call and is
raised to the caller.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import anyio
import grpc
import pytest

from blockjoy.api.v1 import command_flow_pb2, common_pb2, node_pb2
from nodevisor._outbox import BATCHES_HEADER
from nodevisor.admin.v1 import admin_pb2
from nodevisor.controlplane._client import _write_requests
from nodevisor.controlplane.testing import RunningControlPlane

pytestmark = pytest.mark.anyio


def start(node_id: str) -> command_flow_pb2.Command:
    command = node_pb2.NodeCommand(
        id=common_pb2.Uuid(value=node_id), start=node_pb2.NodeStart()
    )
    return command_flow_pb2.Command(node=command)


class RecordingCall:
    """Stands in for the call: records what is written, gives ``headers``."""

    def __init__(self, headers: grpc.aio.Metadata | None) -> None:
        self.headers = headers
        self.written: list[admin_pb2.SendCommandsRequest] = []
        self.done = False

    async def initial_metadata(self) -> grpc.aio.Metadata | None:
        return self.headers

    async def write(self, message: admin_pb2.SendCommandsRequest) -> None:
        self.written.append(message)
        await asyncio.sleep(0)

    async def done_writing(self) -> None:
        self.done = True


def ready_together(count: int) -> AsyncIterator[tuple[str, command_flow_pb2.Command]]:
    async def requests() -> AsyncIterator[tuple[str, command_flow_pb2.Command]]:
        for n in range(count):
            yield f"host-{n}", start(str(uuid.uuid4()))

    return requests()


def sent(call: RecordingCall) -> list[str]:
    return [r.host_id for m in call.written for r in (m.batch or [m])]


async def test_requests_ready_together_go_in_one_message_to_a_batch_reader() -> None:
    call = RecordingCall(grpc.aio.Metadata((BATCHES_HEADER, "1")))

    await _write_requests(call, ready_together(20))  # type: ignore[arg-type]

    assert len(call.written) < 20
    assert any(len(message.batch) > 1 for message in call.written)
    assert sent(call) == [f"host-{n}" for n in range(20)]  # each once, in order
    assert call.done


@pytest.mark.parametrize("headers", [None, grpc.aio.Metadata(("other", "1"))])
async def test_a_control_plane_that_does_not_say_so_gets_one_message_each(
    headers: grpc.aio.Metadata | None,
) -> None:
    call = RecordingCall(headers)

    await _write_requests(call, ready_together(20))  # type: ignore[arg-type]

    assert not any(message.batch for message in call.written)
    assert sent(call) == [f"host-{n}" for n in range(20)]
    assert call.done


async def test_an_error_of_the_requests_ends_the_call_and_reaches_the_caller(
    cp: RunningControlPlane,
) -> None:
    host_id, _ = await cp.provision()  # no agent: each command stays queued

    async def requests() -> AsyncIterator[tuple[str, command_flow_pb2.Command]]:
        yield host_id, start(str(uuid.uuid4()))
        await asyncio.sleep(0.2)  # queued, and answered, before the error
        raise ValueError("the caller's list of commands is broken")

    answers: list[str | None] = []
    with anyio.fail_after(10), pytest.raises(ValueError, match="list of commands"):
        async for answer in cp.admin.send_commands(requests()):
            answers.append(answer.WhichOneof("update"))
    assert answers == ["queued"]
