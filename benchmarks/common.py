"""Helpers shared by the benchmarks: connected pairs for both sides of a comparison."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from smbdirect_socket.tools import measure

T = TypeVar("T")


async def accept_and_connect(accept: Callable[[], Awaitable[T]], connect: Callable[[], Awaitable[T]]) -> tuple[T, T]:
    """Run ``accept`` and ``connect`` together; return (client, server)."""
    accepted: list[T] = []

    async def run_accept() -> None:
        accepted.append(await accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_accept)
        client = await connect()
    return client, accepted[0]


async def tcp_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of trio TCP streams on loopback: the baseline."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        return await accept_and_connect(listeners[0].accept, lambda: trio.open_tcp_stream("127.0.0.1", port))
    finally:
        await listeners[0].aclose()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return bytes(data)


async def receive_message(stream: trio.abc.ReceiveStream) -> bytes:
    """One length-framed message, read as SMB reads it: the 4-byte length, then the body.

    This works on TCP, on byte-stream SMB-Direct and on SMB-Direct's default
    (kernel) framing, where the first 4 bytes of a message are its length.
    """
    header = await receive_exactly(stream, 4)
    return header + await receive_exactly(stream, struct.unpack(">I", header)[0])


async def round_trip(pair: tuple[trio.abc.Stream, trio.abc.Stream], count: int, *, length_first: bool = True) -> float:
    """Seconds per round trip of a 64-byte framed message.

    With ``length_first`` each end reads the length, then the body, as SMB
    does (and as SMB-Direct's default framing requires); otherwise all 64
    bytes at once, the baseline for a layer that delivers whole messages.
    """
    client, server = pair
    message = struct.pack(">I", 60) + bytes(60)

    async def receive(stream: trio.abc.ReceiveStream) -> bytes:
        return await (receive_message(stream) if length_first else receive_exactly(stream, 64))

    async def echo() -> None:
        for _ in range(count):
            await server.send_all(await receive(server))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = measure.now()
        for _ in range(count):
            await client.send_all(message)
            await receive(client)
        elapsed = measure.now() - start
    await client.aclose()
    await server.aclose()
    return elapsed / count
