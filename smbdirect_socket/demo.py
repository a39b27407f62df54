"""``python -m smbdirect_socket.demo``: a file crosses SMB-Direct, then TCP.

A server and a client in one process talk SMB-Direct over the embedded
software iWARP engine (real MPA/DDP/RDMAP on loopback TCP, the wire Linux
siw speaks): the client sends a file as SMB-style framed messages (a 4-byte
length, then the message), the server checks every byte and answers each
message.  The same copy then runs over plain TCP, and both are summed up.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time

import trio

from . import trio as sdtrio
from .parameters import Parameters

FILE_SIZE = 16 * 1024 * 1024
MESSAGE = 128 * 1024
RUNS = [
    ("Linux's default sizes (1364-byte messages)", Parameters()),
    (
        "sizes two of this project's sockets can agree on (64 KiB messages)",
        Parameters(max_send_size=65536, max_recv_size=65536, max_fragmented_recv_size=1 << 20),
    ),
]


async def _receive_exactly(receive: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await receive.receive_some(size - len(data))
        if not chunk:
            raise EOFError("peer closed")
        data += chunk
    return bytes(data)


async def copy_over_smbdirect(payload: bytes, parameters: Parameters) -> tuple[float, str, sdtrio.SMBDirectSocket]:
    listener = sdtrio.socket(parameters=parameters)
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    digest = hashlib.sha256()

    async def serve() -> None:
        sock, _ = await listener.accept()
        received = 0
        while received < len(payload):
            (length,) = struct.unpack(">I", await sock.recv(4))  # the synthesized length
            body = await sock.recv(length)  # exactly that many bytes
            digest.update(body)
            received += len(body)
            await sock.send(struct.pack(">I", 2) + b"ok")
        sock.close()

    client = sdtrio.socket(parameters=parameters)
    start = time.perf_counter()
    shown = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.connect(listener.getsockname())
        for offset in range(0, len(payload), MESSAGE):
            chunk = payload[offset : offset + MESSAGE]
            await client.send(struct.pack(">I", len(chunk)) + chunk)
            (length,) = struct.unpack(">I", await client.recv(4))
            assert await client.recv(length) == b"ok"
            done = (offset + len(chunk)) * 4 // len(payload)
            if done > shown:
                shown = done
                print(f"  {done * 25:3d}% [{'#' * done * 10:<40}] {time.perf_counter() - start:5.2f} s", flush=True)
    elapsed = time.perf_counter() - start
    listener.close()
    return elapsed, digest.hexdigest(), client


async def copy_over_tcp(payload: bytes) -> tuple[float, str]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    digest = hashlib.sha256()

    async def serve() -> None:
        stream = await listeners[0].accept()
        received = 0
        while received < len(payload):
            (length,) = struct.unpack(">I", await _receive_exactly(stream, 4))
            body = await _receive_exactly(stream, length)
            digest.update(body)
            received += len(body)
            await stream.send_all(struct.pack(">I", 2) + b"ok")
        await stream.aclose()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for offset in range(0, len(payload), MESSAGE):
            chunk = payload[offset : offset + MESSAGE]
            await stream.send_all(struct.pack(">I", len(chunk)) + chunk)
            await _receive_exactly(stream, 6)
        await stream.aclose()
    await listeners[0].aclose()
    return time.perf_counter() - start, digest.hexdigest()


async def main() -> None:
    payload = os.urandom(FILE_SIZE)
    expected = hashlib.sha256(payload).hexdigest()
    print(f"Copying {FILE_SIZE >> 20} MiB as {MESSAGE >> 10} KiB SMB-style messages (4-byte length + message)")
    print("over socket(AF_INET, SOCK_STREAM, IPPROTO_SMBDIRECT) on the software iWARP engine.")
    tcp_elapsed, tcp_digest = await copy_over_tcp(payload)
    tcp_rate = FILE_SIZE / tcp_elapsed / 1e6
    print(f"\nBaseline, a plain trio TCP stream: {tcp_rate:.1f} MB/s, intact: {tcp_digest == expected}")
    for title, parameters in RUNS:
        print(f"\nSMB-Direct, {title}:")
        elapsed, digest, client = await copy_over_smbdirect(payload, parameters)
        info = client.info()
        print(
            f"  negotiated: max send {info.max_send_size} B, max receive {info.max_receive_size} B, "
            f"max fragmented {info.max_fragmented_send_size} B"
        )
        print(
            f"  sent {info.messages_sent} messages in {info.fragments_sent} fragments, "
            f"{info.credit_messages_sent} credit grants, {info.keepalives_sent} keepalives; "
            f"credits now: {info.send_credits} to send, {info.receive_credits} granted to the peer"
        )
        print(
            f"  {FILE_SIZE / elapsed / 1e6:.1f} MB/s ({tcp_elapsed / elapsed:.2f}x TCP), "
            f"every byte checked: {digest == expected}"
        )
        client.close()


if __name__ == "__main__":
    trio.run(main)
