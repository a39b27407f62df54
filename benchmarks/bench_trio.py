"""SMB-Direct trio streams against trio TCP streams, in one run.

Both ends in one trio loop over loopback; the SMB-Direct side runs on the
software iWARP engine with default (Linux) parameters unless ``--large``.
Printed per case: SMB-Direct, TCP and the ratio.

* throughput of 64 KiB writes in byte-stream mode;
* throughput of framed 128 KiB messages (4-byte length + message) on sockets
  with the kernel's default framing, read back as SMB reads them (length,
  then body);
* the round trip of a 64-byte framed message, the same way, and read at once
  (64 bytes) on byte-stream sockets;
* connection set-up time.

    python benchmarks/bench_trio.py [--seconds S] [--large] [--json FILE]

The JSON (smbdirect_socket.tools.measure) names each figure's unit:
``smbdirect_bytes_per_second``, ``tcp_microseconds``, ...
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from common import accept_and_connect, receive_message, round_trip, tcp_streams

from smbdirect_socket import Parameters
from smbdirect_socket import trio as sdtrio
from smbdirect_socket.tools import measure
from smbdirect_socket.tools.measure import BYTES_PER_SECOND, MICROSECONDS, MILLISECONDS, Comparison, Unit

Pair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


async def smbdirect_pair(bytestream: bool, parameters: Parameters | None) -> Pair:
    listeners = await sdtrio.open_smbdirect_listeners(0, host="127.0.0.1", bytestream=bytestream, parameters=parameters)
    port = listeners[0].socket.getsockname()[1]
    try:
        return await accept_and_connect(
            listeners[0].accept,
            lambda: sdtrio.open_smbdirect_stream("127.0.0.1", port, bytestream=bytestream, parameters=parameters),
        )
    finally:
        await listeners[0].aclose()


async def stream_throughput(pair: Pair, seconds: float) -> float:
    client, server = pair
    chunk = bytes(65536)
    moved = measure.Meter()

    async def drain() -> None:
        while await server.receive_some(65536):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        moved.start()
        while moved.running(seconds):
            await client.send_all(chunk)
            moved.add(len(chunk))
        rate = moved.bytes_per_second
        await client.aclose()
    await server.aclose()
    return rate


async def framed_throughput(pair: Pair, seconds: float) -> float:
    client, server = pair
    size = 128 * 1024
    message = struct.pack(">I", size) + bytes(size)
    moved = measure.Meter()

    async def drain() -> None:
        while True:
            await receive_message(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        moved.start()
        while moved.running(seconds):
            await client.send_all(message)
            moved.add(size)
        rate = moved.bytes_per_second
        nursery.cancel_scope.cancel()
    await client.aclose()
    await server.aclose()
    return rate


async def set_up_time(make: Callable[[], Awaitable[Pair]], count: int) -> float:
    start = measure.now()
    for _ in range(count):
        client, server = await make()
        await client.aclose()
        await server.aclose()
    return (measure.now() - start) / count


async def main(seconds: float, large: bool) -> list[dict[str, Any]]:
    parameters = (
        Parameters(max_send_size=65536, max_recv_size=65536, max_fragmented_recv_size=1 << 20) if large else None
    )
    results: list[dict[str, Any]] = []
    throughput_target = ">= 0.9" if large else ">= 0.6"

    def report(name: str, ours: float, tcp: float, unit: Unit, target: str) -> None:
        comparison = Comparison(name, ours, tcp, unit, target=target)
        results.append(comparison.record())
        print(comparison.line())

    report(
        "64 KiB writes, byte stream",
        await stream_throughput(await smbdirect_pair(True, parameters), seconds),
        await stream_throughput(await tcp_streams(), seconds),
        BYTES_PER_SECOND,
        throughput_target,
    )
    report(
        "framed 128 KiB messages",
        await framed_throughput(await smbdirect_pair(False, parameters), seconds),
        await framed_throughput(await tcp_streams(), seconds),
        BYTES_PER_SECOND,
        throughput_target,
    )
    count = max(100, int(seconds * 1000))
    report(
        "64-byte round trip, framed",
        await round_trip(await smbdirect_pair(False, parameters), count),
        await round_trip(await tcp_streams(), count),
        MICROSECONDS,
        "<= 1.5",
    )
    report(
        "64-byte round trip, one read",
        await round_trip(await smbdirect_pair(True, parameters), count, length_first=False),
        await round_trip(await tcp_streams(), count, length_first=False),
        MICROSECONDS,
        "<= 1.5",
    )
    report(
        "connection set-up",
        await set_up_time(lambda: smbdirect_pair(True, parameters), 20),
        await set_up_time(tcp_streams, 20),
        MILLISECONDS,
        "<= 3",
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--large", action="store_true", help="negotiate 64 KiB messages instead of Linux's 1364 B")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = trio.run(main, args.seconds, args.large)
    if args.json:
        parameters = "large messages" if args.large else "kernel defaults"
        measure.write_json(args.json, measure.benchmark_document("bench_trio", results, parameters=parameters))
