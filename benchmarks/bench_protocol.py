"""Throughput of the sans-IO protocol core alone: two objects wired in memory.

This is the ceiling of every layer above: no sockets, no RDMA, no event loop.
Each run moves messages one way and reads them on the other side; the cost is
per fragment (packing and parsing a header, credit bookkeeping), so large
negotiated sizes move far more bytes per second.  The baseline in the same
run is a plain ``bytes`` copy of the same data, which bounds any pure-Python
layer that must touch every byte once.

    python benchmarks/bench_protocol.py [--seconds S] [--json FILE]

The JSON (smbdirect_socket.tools.measure) names each figure's unit:
``bytes_per_second``, ``messages_per_second``, ``fragments_per_second``.
"""

from __future__ import annotations

import argparse
from typing import Any

from smbdirect_socket import Parameters
from smbdirect_socket._wire import COMPILED
from smbdirect_socket.pdu import ReceiveLimits, ReceiveState, check_data_transfers, encode_data_transfers
from smbdirect_socket.testing import ProtocolPair
from smbdirect_socket.tools import measure
from smbdirect_socket.tools.measure import BYTES_PER_SECOND

CASES = {
    "default (1364-byte fragments, 64 KiB messages)": (Parameters(), 65536),
    "default, 1 KiB messages": (Parameters(), 1024),
    "large (64 KiB fragments, 1 MiB messages)": (
        Parameters(max_send_size=65536, max_recv_size=65536, max_fragmented_recv_size=1 << 24),
        1 << 20,
    ),
}


def run_case(parameters: Parameters, size: int, seconds: float) -> dict[str, float]:
    pair = ProtocolPair(parameters, parameters)
    pair.start()
    pair.run()
    payload = bytes(size)
    server = pair.server
    moved = measure.Meter()
    fragments_before = pair.client.statistics.fragments_sent
    moved.start()
    while moved.running(seconds):
        for _ in range(16):
            pair.client.send_message(payload)
            pair.collect(pair.client)
            pair.run()
            server.read(server.readable)
            pair.collect(server)
            pair.run()
            moved.add(size)
    total = moved.total()
    fragments = pair.client.statistics.fragments_sent - fragments_before
    return {
        "messages_per_second": total.operations / total.seconds,
        "bytes_per_second": total.bytes_per_second,
        "fragments_per_second": fragments / total.seconds,
    }


def wire_batches(seconds: float) -> dict[str, float]:
    """The batch calls alone: a 64 KiB message written as 1364-byte fragments in one
    call, then checked and gathered in one call (what the protocol will ask of them)."""
    message = bytes(65536)
    chunk = 1364 - 24
    count = -(-len(message) // chunk)
    limits = ReceiveLimits(1 << 24, 1364, 255)
    into = bytearray(count * 1364)
    moved = measure.Meter()
    moved.start()
    while moved.running(seconds):
        for _ in range(16):
            data = memoryview(encode_data_transfers(255, 10, 0, message, 0, count, chunk))
            pdus = [data[i : i + 1364] for i in range(0, len(data), 1364)]
            batch = check_data_transfers(pdus, into, ReceiveState(granted=count, send_credits=0), limits)
            assert batch.error is None
            moved.add(count * chunk, count)
    total = moved.total()
    return {"fragments_per_second": total.operations / total.seconds, "bytes_per_second": total.bytes_per_second}


def copy_baseline(seconds: float) -> float:
    data = bytes(1 << 20)
    moved = measure.Meter()
    moved.start()
    while moved.running(seconds):
        bytearray(data)
        moved.add(len(data))
    return moved.bytes_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    baseline = copy_baseline(args.seconds / 2)
    results: dict[str, Any] = {"memory_copy_bytes_per_second": baseline}  # the wire core is in the metadata
    print(f"wire core: {'compiled' if COMPILED else 'pure Python'}")
    print(f"baseline: in-memory copy {baseline / 1e9:.2f} GB/s")
    for name, (parameters, size) in CASES.items():
        r = run_case(parameters, size, args.seconds)
        results[name] = r | {"ratio_to_copy": r["bytes_per_second"] / baseline}
        print(
            f"{name}: {r['messages_per_second']:,.0f} msg/s, "
            f"{BYTES_PER_SECOND.show(r['bytes_per_second']):,.1f} {BYTES_PER_SECOND.label}, "
            f"{r['fragments_per_second']:,.0f} fragments/s, ratio to copy {r['bytes_per_second'] / baseline:.3f}"
        )
    r = wire_batches(args.seconds)
    results["wire batches alone (1364-byte fragments)"] = r
    print(
        f"wire batches alone (1364-byte fragments, encode + check): {r['fragments_per_second']:,.0f} fragments/s, "
        f"{BYTES_PER_SECOND.show(r['bytes_per_second']):,.1f} {BYTES_PER_SECOND.label}"
    )
    if args.json:
        measure.write_json(args.json, measure.benchmark_document("bench_protocol", results))


if __name__ == "__main__":
    main()
