"""The SMB-Direct socket on the verbs provider against perftest on the same device, in one boot.

Run in the interop guest (``make bench-verbs``); the guest CPU is emulated,
so only the ratios mean anything.  Per device (rxe0, siw0):

* framed message throughput (128 KiB messages) of the socket vs ``ib_send_bw`` (64 KiB);
* ``rdma_write`` of 1 MiB buffers through the socket's RDMA API vs ``ib_write_bw`` (1 MiB);
* the round trip of a 64-byte message vs twice ``ib_send_lat``'s typical one-way latency,
  between trio sockets and between blocking sockets (each driven by its calling thread).

perftest runs over rdma_cm (``-R``) with its server and client on the device's
address, as our pair does.

    python benchmarks/bench_verbs.py [--seconds S] [--large] [--json FILE]

The JSON (smbdirect_socket.tools.measure) names each figure's unit:
``socket_bytes_per_second``, ``twice_ib_send_lat_microseconds``, ...
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import subprocess
import threading
import time
from typing import Any

import trio
from common import accept_and_connect

from smbdirect_socket import Parameters, blocking
from smbdirect_socket import trio as sdtrio
from smbdirect_socket.rdma import get_provider
from smbdirect_socket.tools import measure
from smbdirect_socket.tools.measure import BYTES_PER_SECOND, MICROSECONDS, Comparison

DEVICES = {"rxe0": os.environ.get("RDMA_VM_RXE_ADDR", ""), "siw0": os.environ.get("RDMA_VM_SIW_ADDR", "")}
MESSAGE = 128 * 1024


def perftest(tool: str, device: str, address: str, size: int, seconds: float, port: int) -> dict[str, float]:
    """Run a perftest tool's server and client on one device; its result row as numbers."""
    common = [tool, "-d", device, "-R", "-s", str(size), "-p", str(port), "-F"]
    common += ["-n", "1000"] if tool.endswith("_lat") else ["-D", str(max(int(seconds), 1))]
    server = subprocess.Popen(common, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        output = subprocess.run([*common, address], capture_output=True, text=True, timeout=120).stdout
    finally:
        server.wait(timeout=60)
    rows = [line.split() for line in output.splitlines() if re.match(r"\s*\d+\s+\d+\s", line)]
    if not rows:
        raise RuntimeError(f"{tool} printed no result:\n{output}")
    numbers = [float(v) for v in rows[-1]]
    if tool.endswith("_lat"):  # bytes iterations t_min t_max t_typical t_avg ... (microseconds)
        return {"typical_microseconds": numbers[4], "average_microseconds": numbers[5]}
    size_bytes, iterations, _, average = numbers[:4]
    rate = average * 1e6 if average > 0 else size_bytes * iterations / max(int(seconds), 1)  # siw prints 0.00
    return {"bytes_per_second": rate}


async def socket_pair(address: str, port: int, parameters: Parameters) -> tuple[sdtrio.SMBDirectSocket, ...]:
    provider = get_provider("verbs")
    listener = sdtrio.socket(provider=provider, parameters=parameters)
    await listener.bind((address, port))
    listener.listen()

    async def accept() -> sdtrio.SMBDirectSocket:
        return (await listener.accept())[0]

    async def connect() -> sdtrio.SMBDirectSocket:
        sock = sdtrio.socket(provider=provider, parameters=parameters)
        await sock.connect((address, port))
        return sock

    try:
        return await accept_and_connect(accept, connect)
    finally:
        listener.close()


async def framed_throughput(client: sdtrio.SMBDirectSocket, server: sdtrio.SMBDirectSocket, seconds: float) -> float:
    message = struct.pack(">I", MESSAGE) + bytes(MESSAGE)
    moved = measure.Meter()

    async def drain() -> None:  # until the one-byte message that ends the run
        length = 0
        while length != 1:
            (length,) = struct.unpack(">I", await server.recv(4))
            await server.recv(length)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        moved.start()
        while moved.running(seconds):
            await client.send(message)
            moved.add(MESSAGE)
        rate = moved.bytes_per_second
        await client.send(struct.pack(">I", 1) + b"!")
    return rate


async def write_throughput(client: sdtrio.SMBDirectSocket, server: sdtrio.SMBDirectSocket, seconds: float) -> float:
    target = bytearray(1024 * 1024)
    registration = client.register_buffer(target, writable=True)
    data = os.urandom(len(target))
    moved = measure.Meter()
    moved.start()
    while moved.running(seconds):
        await server.rdma_write(data, registration.descriptors)
        moved.add(len(data))
    return moved.bytes_per_second


async def round_trip(client: sdtrio.SMBDirectSocket, server: sdtrio.SMBDirectSocket, count: int) -> float:
    message = struct.pack(">I", 60) + bytes(60)

    async def echo() -> None:
        for _ in range(count):
            await server.recv(4)
            await server.send(struct.pack(">I", 60) + await server.recv(60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = measure.now()
        for _ in range(count):
            await client.send(message)
            await client.recv(4)
            await client.recv(60)
        return (measure.now() - start) / count


def blocking_round_trip(address: str, port: int, parameters: Parameters, count: int) -> float:
    """:func:`round_trip` between two blocking sockets, each driven by its calling thread."""
    provider = get_provider("verbs")
    with blocking.create_server((address, port), provider=provider, parameters=parameters) as listener:
        client = blocking.create_connection((address, port), provider=provider, parameters=parameters, timeout=60)
        server, _ = listener.accept()
    message = struct.pack(">I", 60) + bytes(60)

    def echo() -> None:
        for _ in range(count):
            server.recv(4)
            server.sendall(struct.pack(">I", 60) + server.recv(60))

    with client, server:
        thread = threading.Thread(target=echo)
        thread.start()
        start = measure.now()
        for _ in range(count):
            client.sendall(message)
            client.recv(4)
            client.recv(60)
        elapsed = measure.now() - start
        thread.join()
    return elapsed / count


async def measure_device(device: str, address: str, seconds: float, parameters: Parameters) -> dict[str, Any]:
    client, server = await socket_pair(address, 7400, parameters)
    framed = await framed_throughput(client, server, seconds)
    written = await write_throughput(client, server, seconds)
    trip = await round_trip(client, server, 200)  # seconds
    client.close()
    server.close()
    blocking_trip = await trio.to_thread.run_sync(blocking_round_trip, address, 7401, parameters, 200)
    await trio.sleep(0.5)
    baseline = {
        "ib_send_bw": perftest("ib_send_bw", device, address, 65536, seconds, 18515),
        "ib_write_bw": perftest("ib_write_bw", device, address, 1024 * 1024, seconds, 18516),
        "ib_send_lat": perftest("ib_send_lat", device, address, 64, seconds, 18517),
    }
    comparisons = [
        Comparison(
            f"framed {MESSAGE // 1024} KiB messages",
            framed,
            baseline["ib_send_bw"]["bytes_per_second"],
            BYTES_PER_SECOND,
            ours_name="socket",
            baseline_name="ib_send_bw",
        ),
        Comparison(
            "rdma_write 1 MiB",
            written,
            baseline["ib_write_bw"]["bytes_per_second"],
            BYTES_PER_SECOND,
            ours_name="socket",
            baseline_name="ib_write_bw",
        ),
        Comparison(
            "64-byte round trip",
            trip,
            2 * baseline["ib_send_lat"]["typical_microseconds"] / 1e6,  # perftest's one way, in seconds
            MICROSECONDS,
            ours_name="socket",
            baseline_name="twice_ib_send_lat",
        ),
        Comparison(
            "64-byte round trip, blocking",
            blocking_trip,
            2 * baseline["ib_send_lat"]["typical_microseconds"] / 1e6,
            MICROSECONDS,
            ours_name="socket",
            baseline_name="twice_ib_send_lat",
        ),
    ]
    print(f"{device}:")
    for comparison in comparisons:
        print(f"  {comparison.line(width=28)}")
    return {"comparisons": [c.record() for c in comparisons], "perftest": baseline}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--large", action="store_true", help="large-message parameters instead of Linux's")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    parameters = Parameters().with_large_messages() if args.large else Parameters()
    print(f"parameters: {'large messages' if args.large else 'Linux defaults'}; the guest CPU is emulated")
    results = {}
    for device, address in DEVICES.items():
        if not address:
            raise SystemExit("run this in the interop guest: make bench-verbs")
        results[device] = await measure_device(device, address, args.seconds, parameters)
    if args.json:
        sizes = "large messages" if args.large else "Linux defaults"
        measure.write_json(args.json, measure.benchmark_document("bench_verbs", results, parameters=sizes))


if __name__ == "__main__":
    trio.run(main)
