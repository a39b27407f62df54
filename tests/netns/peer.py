"""One end of a network fault test, run inside a network namespace.

``python -m tests.netns.peer serve|send HOST PORT [options]`` prints one JSON
object a line (``event``, ``t`` = ``time.monotonic()``, which namespaces
share) so that the test driving it can time a fault against what each end saw.

Every unit on the wire is an SMB-style framed message (a 4-byte big-endian
length, then the payload), so the same exchange runs on framed and
byte-stream sockets.  The sender announces how many messages of what size
follow; each starts with its sequence number and the rest is derived from
it; the receiver checks the order, hashes every byte and answers with the
digest, which the sender compares with its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
import time
from typing import Any

from benchmarks.soak import receive_message, send_message
from smbdirect_socket import Parameters, create_connection, create_server
from smbdirect_socket.blocking import SMBDirectSocket

_START = struct.Struct(">QI")  # messages, message size
_SEQUENCE = struct.Struct(">Q")


def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def payload(sequence: int, size: int) -> bytes:
    return _SEQUENCE.pack(sequence) + random.Random(sequence).randbytes(size - _SEQUENCE.size)


def serve_one(sock: SMBDirectSocket) -> None:
    messages, size = _START.unpack(receive_message(sock))
    digest, step = hashlib.sha256(), max(1, (1 << 20) // size)
    for sequence in range(messages):
        data = receive_message(sock)
        if len(data) != size or _SEQUENCE.unpack_from(data)[0] != sequence:
            raise AssertionError(f"message {sequence}: got {len(data)} bytes starting {data[:8].hex()}")
        digest.update(data)
        if sequence % step == 0:
            report("progress", received=sequence * size)
    send_message(sock, digest.digest())
    report("received", bytes=messages * size, sha256=digest.hexdigest())


def send(sock: SMBDirectSocket, messages: int, size: int) -> None:
    send_message(sock, _START.pack(messages, size))
    digest, step, start = hashlib.sha256(), max(1, (1 << 20) // size), time.monotonic()
    for sequence in range(messages):
        data = payload(sequence, size)
        digest.update(data)
        send_message(sock, data)
        if sequence % step == 0:
            report("progress", sent=sequence * size)
    answer = receive_message(sock)
    elapsed = time.monotonic() - start
    report("sent", bytes=messages * size, seconds=elapsed, intact=answer == digest.digest())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns.peer")
    parser.add_argument("role", choices=["serve", "send"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--bytestream", action="store_true")
    parser.add_argument("--keepalive-interval-ms", type=int, default=Parameters().keepalive_interval_msec)
    parser.add_argument("--keepalive-timeout-ms", type=int, default=Parameters().keepalive_timeout_msec)
    parser.add_argument("--connections", type=int, default=1, help="serve: connections to take, then exit")
    parser.add_argument("--messages", type=int, default=64)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--timeout", type=float, default=120, help="seconds any one call may block")
    parser.add_argument("--accept-timeout", type=float, help="serve: seconds accept() may block (default: --timeout)")
    args = parser.parse_args()
    parameters = Parameters().replace(
        keepalive_interval_msec=args.keepalive_interval_ms, keepalive_timeout_msec=args.keepalive_timeout_ms
    )
    try:
        if args.role == "serve":
            with create_server((args.host, args.port), bytestream=args.bytestream, parameters=parameters) as server:
                server.settimeout(args.timeout if args.accept_timeout is None else args.accept_timeout)
                report("listening")
                for _ in range(args.connections):
                    sock, _ = server.accept()
                    with sock:
                        sock.settimeout(args.timeout)
                        serve_one(sock)
        else:
            with create_connection(
                (args.host, args.port), args.timeout, bytestream=args.bytestream, parameters=parameters
            ) as sock:
                report("connected")
                send(sock, args.messages, args.size)
    except OSError as exc:
        report("error", errno=exc.errno, type=type(exc).__name__, message=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
