"""Helpers shared by the benchmarks: connected pairs for both sides of a comparison."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

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
