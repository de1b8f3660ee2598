"""A bare grpc.aio bidirectional echo: the ceiling the benchmark compares to.

``python bench/echo.py`` serves ``/bench.Echo/Echo`` on a free loopback port,
prints the port on one line and serves until SIGTERM. Messages are raw bytes:
no protobuf, no handler logic, so what it measures is gRPC alone.
``/bench.Echo/Fan`` answers each message with ``FAN`` copies of it: the shape
of a v1 command on the agent's stream, one message down and four up (the
ack, two status changes, the result). ``echo_rate`` is the client side, used
by ``benchmark.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc

METHOD = "/bench.Echo/Echo"
FAN_METHOD = "/bench.Echo/Fan"
#: Messages up for each one down in ``Fan``.
FAN = 4


async def _echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


async def _fan(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for message in requests:
        for _ in range(FAN):
            yield message


async def serve() -> None:
    server = grpc.aio.server()
    handlers = {
        "Echo": grpc.stream_stream_rpc_method_handler(_echo),
        "Fan": grpc.stream_stream_rpc_method_handler(_fan),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


async def echo_rate(
    address: str,
    *,
    window: int,
    seconds: float,
    warmup: float = 0.5,
    fan: bool = False,
) -> float:
    """Round trips per second over one stream, ``window`` messages in flight.

    With ``fan``, a round trip is one message down and ``FAN`` up. The first
    ``warmup`` seconds are not counted.
    """
    payload = b"x" * 96  # about the size of a serialised start command
    replies = FAN if fan else 1
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(FAN_METHOD if fan else METHOD)()
        credit = asyncio.Semaphore(window)

        async def write() -> None:
            while True:
                await credit.acquire()
                await call.write(payload)

        writer = asyncio.create_task(write())
        try:
            return await _count(call, credit, seconds, warmup, replies)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            call.cancel()


async def _count(
    call: grpc.aio.StreamStreamCall,
    credit: asyncio.Semaphore,
    seconds: float,
    warmup: float,
    replies: int,
) -> float:
    begin = time.perf_counter() + warmup
    end = begin + seconds
    counted = 0
    while True:
        for _ in range(replies):
            await call.read()
        credit.release()
        now = time.perf_counter()
        if now >= end:
            return counted / (now - begin)
        if now >= begin:
            counted += 1


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
