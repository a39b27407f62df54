"""The software iWARP engine against plain TCP moving the same bytes.

Both ends run in one trio event loop (one core, as a Python process has),
over loopback TCP, and so does the baseline: trio TCP streams carrying the
same bytes with no RDMA framing.  Printed per case: the engine's figure, the
baseline's, and their ratio.

* sends of 1364 bytes and of 64 KiB (the receiver reposts and grants 64
  buffers at a time with a small Send, as an upper layer's credits would);
  the 64 are posted in one batch, as the connection posts the fragments of a
  message (``QueuePair.batch``: one write for all);
* RDMA write and RDMA read of 1 MiB, four in flight;
* the round trip of a 64-byte Send answered by a 64-byte Send.

    python benchmarks/bench_engine.py [--seconds S] [--json FILE]

The JSON (smbdirect_socket.tools.measure) names each figure's unit:
``engine_bytes_per_second``, ``tcp_microseconds``, ...
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from common import accept_and_connect, round_trip, tcp_streams

from smbdirect_socket._wire import COMPILED
from smbdirect_socket.rdma import Access, Opcode, QueuePair, Status, get_provider
from smbdirect_socket.tools import measure
from smbdirect_socket.tools.measure import BYTES_PER_SECOND, MICROSECONDS, Comparison, Unit

WINDOW = 64


async def queue_pairs() -> tuple[QueuePair, QueuePair]:
    provider = get_provider("softiwarp")
    listener = provider.listen(("127.0.0.1", 0))

    async def accept() -> QueuePair:
        request = await listener.get_request()
        return await request.accept(initiator_depth=16, responder_resources=16)

    try:
        return await accept_and_connect(
            accept, lambda: provider.connect(listener.address, initiator_depth=16, responder_resources=16)
        )
    finally:
        await listener.aclose()


async def timed(seconds: float, step: Callable[[], Awaitable[int]]) -> float:
    """Run ``step`` (returning bytes moved) for ``seconds``; bytes per second."""
    moved = measure.Meter()
    moved.start()
    while moved.running(seconds):
        moved.add(await step())
    return moved.bytes_per_second


async def expect(qp: QueuePair, opcode: Opcode, count: int = 1) -> None:
    """Wait for ``count`` completions of ``opcode``, passing over the others."""
    while count:
        for completion in await qp.get_completions():
            assert completion.status is Status.SUCCESS, completion
            count -= completion.opcode is opcode


async def engine_sends(size: int, seconds: float) -> float:
    client, server = await queue_pairs()
    buffers = [bytearray(size) for _ in range(WINDOW)]
    grant = bytearray(8)
    payload = bytes(size)
    client.post_recv(0, memoryview(grant))
    for i, b in enumerate(buffers):
        server.post_recv(i, memoryview(b))

    async def step() -> int:
        with client.batch():
            for i in range(WINDOW):
                client.post_send(i, payload, signaled=False)
        received = 0
        while received < WINDOW:
            completions = await server.get_completions()
            with server.batch():
                for completion in completions:
                    assert completion.opcode is Opcode.RECV, completion
                    server.post_recv(completion.wr_id, memoryview(buffers[completion.wr_id]))
            received += len(completions)
        server.post_send(0, b"grant", signaled=False)  # the window is open again
        await expect(client, Opcode.RECV)
        client.post_recv(0, memoryview(grant))
        return WINDOW * size

    rate = await timed(seconds, step)
    await client.disconnect()
    await server.disconnect()
    return rate


async def tcp_sends(size: int, seconds: float) -> float:
    client, server = await tcp_streams()
    payload = bytes(size) * WINDOW

    async def drain() -> None:
        while await server.receive_some(1 << 20):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)

        async def step() -> int:
            await client.send_all(payload)
            return len(payload)

        rate = await timed(seconds, step)
        await client.aclose()
    return rate


async def engine_rdma(read: bool, seconds: float) -> float:
    client, server = await queue_pairs()
    size = 1 << 20
    exposed = bytearray(size * 4)
    region = server.register(memoryview(exposed), Access.REMOTE_READ | Access.REMOTE_WRITE)
    local = bytearray(size * 4)
    payload = bytes(size)
    opcode = Opcode.RDMA_READ if read else Opcode.RDMA_WRITE

    async def step() -> int:
        for i in range(4):
            if read:
                client.post_read(
                    i, memoryview(local)[i * size : (i + 1) * size], region.token, region.address + i * size
                )
            else:
                client.post_write(i, payload, region.token, region.address + i * size)
        await expect(client, opcode, 4)
        return 4 * size

    rate = await timed(seconds, step)
    await client.disconnect()
    await server.disconnect()
    return rate


async def engine_round_trip(count: int) -> float:
    client, server = await queue_pairs()
    a, b = bytearray(64), bytearray(64)
    message = bytes(64)

    async def echo() -> None:
        for _ in range(count):
            await expect(server, Opcode.RECV)
            server.post_recv(1, memoryview(b))  # before the answer, so the next message finds it
            server.post_send(2, message)

    server.post_recv(1, memoryview(b))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = measure.now()
        for _ in range(count):
            client.post_recv(1, memoryview(a))
            client.post_send(2, message)
            await expect(client, Opcode.RECV)
        elapsed = measure.now() - start
    await client.disconnect()
    await server.disconnect()
    return elapsed / count


async def main(seconds: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []  # the wire core is in the JSON's metadata
    print(f"wire core: {'compiled' if COMPILED else 'pure Python'}")

    def report(name: str, ours: float, baseline: float, unit: Unit, target: str) -> None:
        comparison = Comparison(name, ours, baseline, unit, ours_name="engine", target=target)
        results.append(comparison.record())
        print(comparison.line(width=28))

    for size in (1364, 65536):
        report(
            f"send {size} B",
            await engine_sends(size, seconds),
            await tcp_sends(size, seconds),
            BYTES_PER_SECOND,
            ">= 0.6" if size == 1364 else "-",
        )
    tcp_bulk = await tcp_sends(1 << 20, seconds)
    report("RDMA write 1 MiB", await engine_rdma(False, seconds), tcp_bulk, BYTES_PER_SECOND, ">= 0.9")
    report("RDMA read 1 MiB", await engine_rdma(True, seconds), tcp_bulk, BYTES_PER_SECOND, ">= 0.9")
    count = max(200, int(seconds * 2000))
    report(
        "64 B round trip",
        await engine_round_trip(count),
        await round_trip(await tcp_streams(), count, length_first=False),
        MICROSECONDS,
        "<= 1.2",
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = trio.run(main, args.seconds)
    if args.json:
        measure.write_json(args.json, measure.benchmark_document("bench_engine", results))
