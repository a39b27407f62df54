"""The blocking SMB-Direct socket against blocking TCP sockets, in one run.

Plain threads, as a stdlib program would use them; the SMB-Direct side runs
on the software iWARP engine (each calling thread runs the protocol itself).
Printed per case: SMB-Direct, TCP and the ratio.

* throughput of framed 128 KiB messages (4-byte length + message);
* throughput of 64 KiB writes in byte-stream mode;
* the round trip of a 64-byte message, with the echo in the same process and
  in a process of its own (the median: two peers in one process share the GIL);
* an SMB file copy by smbprotocol (write and read back) to the same Samba,
  over SMB-Direct through the gateway and over TCP (needs Samba, as root).

Parameters: the kernel's defaults, or with ``--large`` the large-message
parameters two of this project's sockets agree on (64 KiB fragments).

    python benchmarks/bench_socket.py [--seconds S] [--large] [--json FILE]

The JSON (smbdirect_socket.tools.measure) names each figure's unit:
``smbdirect_bytes_per_second``, ``tcp_microseconds``, ...
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from smbdirect_socket import SOL_SMBDIRECT, Parameters, create_connection, create_server, patch
from smbdirect_socket.options import SMBDIRECT_BYTESTREAM
from smbdirect_socket.smb.gateway import Gateway, gateway_thread
from smbdirect_socket.smb.samba import samba_available, samba_server
from smbdirect_socket.tools import measure
from smbdirect_socket.tools.measure import BYTES_PER_SECOND, MICROSECONDS, Comparison, Unit

Pair = tuple[Any, Any]


def tcp_pair() -> Pair:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def smbdirect_pair(bytestream: bool, parameters: Parameters | None) -> Pair:
    listener = create_server(("127.0.0.1", 0), bytestream=bytestream, parameters=parameters)
    client = create_connection(listener.getsockname(), bytestream=bytestream, parameters=parameters)
    server, _ = listener.accept()
    listener.close()
    assert server.getsockopt(SOL_SMBDIRECT, SMBDIRECT_BYTESTREAM) == int(bytestream)
    return client, server


def receive_exactly(sock: Any, size: int) -> bytes:
    """Exactly ``size`` bytes: one call on a framed SMB-Direct socket, a loop on TCP."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def receive_message(sock: Any) -> bytes:
    """One framed message, header included, as SMB clients read them: 4 bytes, then the rest."""
    header = receive_exactly(sock, 4)
    return header + receive_exactly(sock, struct.unpack(">I", header)[0])


def throughput(pair: Pair, seconds: float, size: int, framed: bool) -> float:
    """Bytes per second one way, the receiver checking message boundaries when framed."""
    client, server = pair
    message = struct.pack(">I", size) + bytes(size) if framed else bytes(size)
    received = measure.Meter()  # counted by the receiving thread alone

    def drain() -> None:
        try:
            if framed:
                while header := server.recv(4):
                    received.add(len(receive_exactly(server, struct.unpack(">I", header)[0])))
            else:
                while chunk := server.recv(65536):
                    received.add(len(chunk))
        except OSError:
            pass  # the sender closed with credit grants unread

    thread = threading.Thread(target=drain)
    thread.start()
    received.start()
    while received.running(seconds):
        client.sendall(message)
    client.close()
    thread.join()
    rate = received.bytes_per_second
    server.close()
    return rate


def round_trip(pair: Pair, count: int) -> float:
    client, server = pair
    message = struct.pack(">I", 60) + bytes(60)

    def echo() -> None:
        for _ in range(count):
            server.sendall(receive_message(server))

    thread = threading.Thread(target=echo)
    thread.start()
    start = measure.now()
    for _ in range(count):
        client.sendall(message)
        receive_message(client)
    elapsed = measure.now() - start
    thread.join()
    client.close()
    server.close()
    return elapsed / count


def smb_copy(parameters: Parameters | None, size: int) -> tuple[float, float] | str:
    """Seconds for smbprotocol to write and read back ``size`` bytes: (SMB-Direct, TCP)."""
    reason = samba_available()
    if reason is not None:
        return reason
    import smbclient

    data = os.urandom(size)

    def copy(host: str, port: int, user: str, password: str, share: str) -> float:
        smbclient.register_session(host, username=user, password=password, port=port)
        path = rf"\\{host}\{share}\bench.bin"
        start = measure.now()
        with smbclient.open_file(path, mode="wb", port=port) as remote:
            remote.write(data)
        with smbclient.open_file(path, mode="rb", port=port) as remote:
            assert remote.read() == data
        elapsed = measure.now() - start
        smbclient.reset_connection_cache()
        return elapsed

    with samba_server() as samba:
        credentials = (samba.user, samba.password, samba.share)
        tcp = copy(samba.host, samba.port, *credentials)
        gateway = Gateway(samba.address, parameters or Parameters())
        with gateway_thread(gateway) as (host, port), patch(ports=[port], parameters=parameters):
            smbdirect = copy(host, port, *credentials)
    return smbdirect, tcp


def report(name: str, smbdirect: float, tcp: float, unit: Unit) -> dict[str, Any]:
    """One case's line (rates in MB/s, times in us) and its record (bytes/s, microseconds)."""
    comparison = Comparison(name, smbdirect, tcp, unit)
    print(comparison.line(width=38))
    return comparison.record()


def echo_peer(smbdirect: bool, parameters: Parameters | None, ports: Any) -> None:
    """The echo side of a round trip in a process of its own, as a real peer is
    (two peers in one process share its GIL)."""
    listener: Any = create_server(("127.0.0.1", 0), parameters=parameters) if smbdirect else tcp_listener()
    ports.send(listener.getsockname()[1])
    server, _ = listener.accept()
    listener.close()
    if not smbdirect:
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            server.sendall(receive_message(server))
    except (EOFError, OSError):
        pass
    server.close()


def tcp_listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def round_trip_to_process(smbdirect: bool, parameters: Parameters | None, count: int) -> float:
    """Seconds per round trip of a 64-byte framed message to an echo in another process."""
    context = multiprocessing.get_context("spawn")
    ports, child_ports = context.Pipe()
    peer = context.Process(target=echo_peer, args=(smbdirect, parameters, child_ports))
    peer.start()
    try:
        port = ports.recv()
        client: Any = (
            create_connection(("127.0.0.1", port), parameters=parameters)
            if smbdirect
            else socket.create_connection(("127.0.0.1", port))
        )
        if not smbdirect:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = struct.pack(">I", 60) + bytes(60)
        for _ in range(count // 10):  # warm up
            client.sendall(message)
            receive_message(client)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            client.sendall(message)
            receive_message(client)
            samples.append(time.perf_counter() - started)
        client.close()
    finally:
        peer.join(30)
        if peer.is_alive():
            peer.kill()
    return sorted(samples)[count // 2]  # the median: a busy machine's stalls stay out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--large", action="store_true", help="large-message parameters (64 KiB fragments)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    parameters = Parameters().with_large_messages() if args.large else None
    print(f"parameters: {'large messages, 64 KiB fragments' if args.large else 'the kernel defaults'}")
    cases: list[tuple[str, Callable[[], float], Callable[[], float], Unit]] = [
        (
            "framed 128 KiB messages",
            lambda: throughput(smbdirect_pair(False, parameters), args.seconds, 131072, True),
            lambda: throughput(tcp_pair(), args.seconds, 131072, True),
            BYTES_PER_SECOND,
        ),
        (
            "byte-stream 64 KiB writes",
            lambda: throughput(smbdirect_pair(True, parameters), args.seconds, 65536, False),
            lambda: throughput(tcp_pair(), args.seconds, 65536, False),
            BYTES_PER_SECOND,
        ),
        (
            "64-byte round trip",
            lambda: round_trip(smbdirect_pair(False, parameters), 2000),
            lambda: round_trip(tcp_pair(), 2000),
            MICROSECONDS,
        ),
        (
            "64-byte round trip, peer process (median)",
            lambda: round_trip_to_process(True, parameters, 2000),
            lambda: round_trip_to_process(False, parameters, 2000),
            MICROSECONDS,
        ),
    ]
    results = [report(name, smbdirect(), tcp(), unit) for name, smbdirect, tcp, unit in cases]
    copied = smb_copy(parameters, 16 * 1024 * 1024)
    if isinstance(copied, str):
        print(f"SMB file copy: skipped ({copied})")
    else:
        size = 2 * 16 * 1024 * 1024
        results.append(report("smbprotocol 16 MiB write + read", size / copied[0], size / copied[1], BYTES_PER_SECOND))
    if args.json:
        parameters_name = "large messages" if args.large else "kernel defaults"
        measure.write_json(args.json, measure.benchmark_document("bench_socket", results, parameters=parameters_name))


if __name__ == "__main__":
    main()
