"""Listeners outlive running out of descriptors: a burst of connections under
a low descriptor limit is logged, and once it is over new connections are served."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from smbdirect_socket.blocking import create_connection

SERVER = """
import logging, resource, struct, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

if sys.argv[1] == "blocking":
    from smbdirect_socket import create_server

    with create_server(("127.0.0.1", 0)) as server:
        print(server.getsockname()[1], flush=True)
        while True:
            sock, _ = server.accept()
            (length,) = struct.unpack(">I", sock.recv(4))
            sock.sendall(struct.pack(">I", length) + sock.recv(length))
            sock.close()
else:
    from functools import partial

    import trio
    from smbdirect_socket.trio import serve_smbdirect

    async def echo(stream):
        header = await stream.receive_some(4)
        (length,) = struct.unpack(">I", header)
        await stream.send_all(header + await stream.receive_some(length))

    async def main():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_smbdirect, echo, 0, host="127.0.0.1"))
            print(listeners[0].socket.getsockname()[1], flush=True)

    trio.run(main)
"""


@pytest.mark.parametrize("front_door", ["blocking", "trio"])
def test_a_burst_of_connections_under_a_low_descriptor_limit(front_door: str) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, front_door],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stderr is not None
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(server.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    idle: list[socket.socket] = []
    try:
        port = int(server.stdout.readline())
        for _ in range(80):  # idle TCP connections: each takes the listener a descriptor
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 20
        while not any("EMFILE" in line for line in log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("EMFILE" in line and "ERROR" in line for line in log), log
        for sock in idle:
            sock.close()
        idle.clear()
        with create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(struct.pack(">I", 5) + b"hello")
            assert client.recv(4) == struct.pack(">I", 5)
            assert client.recv(5) == b"hello"
        assert server.poll() is None
    finally:
        for sock in idle:
            sock.close()
        server.kill()
        server.wait()
    assert sum("EMFILE" in line for line in log) == 1  # once per episode, not ten times a second
    assert any("accepts again" in line for line in log)
