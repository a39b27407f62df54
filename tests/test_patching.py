"""Unmodified stdlib programs over SMB-Direct: patch() and python -m smbdirect_socket.run."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbdirect_socket import IPPROTO_SMBDIRECT, Parameters, SMBDirectSocket, create_server, patch

ORIGINAL = socket.socket


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """An SMB-Direct server answering each framed message with its reverse."""
    server = create_server(("127.0.0.1", 0))

    def serve_one(sock: SMBDirectSocket) -> None:
        with sock:
            while header := sock.recv(4):
                sock.send(framed(sock.recv(struct.unpack(">I", header)[0])[::-1]))

    def serve() -> None:
        while True:
            try:
                sock, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(sock,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


@pytest.fixture
def tcp_echo() -> Iterator[tuple[str, int]]:
    listener = ORIGINAL()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()
    listener.close()


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(framed(payload))
    (length,) = struct.unpack(">I", sock.recv(4))
    return sock.recv(length)


def test_patch_routes_chosen_ports(echo_server: tuple[str, int], tcp_echo: tuple[str, int]) -> None:
    with patch(ports=[echo_server[1]]) as patched:
        assert socket.socket is not ORIGINAL and patched.route.takes(echo_server)
        direct = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SMBDIRECT)
        assert isinstance(direct, SMBDirectSocket)
        direct.connect(echo_server)
        assert exchange(direct, b"direct") == b"tcerid"
        direct.close()
        with socket.create_connection(echo_server, timeout=10) as created:
            assert isinstance(created, SMBDirectSocket)
            assert exchange(created, b"created") == b"detaerc"
        with socket.socket() as routed:  # as impacket does: socket(), then connect
            routed.settimeout(10)
            routed.connect(echo_server)
            assert isinstance(routed, socket.socket)
            assert routed.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == IPPROTO_SMBDIRECT
            assert exchange(routed, b"routed") == b"detuor"
        with socket.create_connection(tcp_echo) as plain:  # not a chosen port: TCP
            assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
            plain.sendall(b"hello")
            assert plain.recv(5) == b"hello"
    assert socket.socket is ORIGINAL


def test_fallback_only_when_asked(tcp_echo: tuple[str, int]) -> None:
    """A TCP server that does not speak SMB-Direct fails the handshake."""
    with patch(ports=[tcp_echo[1]]), pytest.raises(OSError) as info:
        socket.create_connection(tcp_echo, timeout=10)
    assert info.value.errno == errno.EPROTO and "plain TCP service" in info.value.strerror
    with patch(ports=[tcp_echo[1]], fallback=True):
        with socket.create_connection(tcp_echo, timeout=10) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.connect(tcp_echo)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP


def test_patch_twice_is_an_error() -> None:
    with patch(), pytest.raises(RuntimeError, match="already patched"):
        patch()
    assert socket.socket is ORIGINAL


PROGRAM = """
import socket, struct, sys
port = int(sys.argv[1])
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    sock.sendall(struct.pack(">I", 5) + b"hello")
    length = struct.unpack(">I", sock.recv(4))[0]
    print(type(sock).__name__, sock.recv(length).decode())
"""


def test_run_a_script_and_a_module(echo_server: tuple[str, int], tmp_path: Path) -> None:
    (tmp_path / "client.py").write_text(textwrap.dedent(PROGRAM))
    port = str(echo_server[1])
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for target in (["client.py"], ["-m", "client"]):
        result = subprocess.run(
            [sys.executable, "-m", "smbdirect_socket.run", "--ports", port, *target, port],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "SMBDirectSocket olleh"
    unpatched = subprocess.run(
        [sys.executable, "client.py", port], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert unpatched.returncode != 0  # plain TCP cannot talk to an SMB-Direct listener


def test_fallback_takes_one_connect_timeout_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A silent TCP server (it never accepts, the kernel's backlog answers) on all of localhost's addresses."""
    with ORIGINAL(socket.AF_INET6) as silent:
        silent.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        silent.bind(("::", 0))
        silent.listen()
        port = silent.getsockname()[1]
        timeout = 0.5
        parameters = Parameters(rdma_connect_timeout_msec=int(timeout * 1000))
        caplog.set_level(logging.WARNING, logger="smbdirect_socket")
        with patch(ports=[port], fallback=True, parameters=parameters):
            started = time.monotonic()
            with socket.create_connection(("localhost", port), timeout=10) as sock:
                elapsed = time.monotonic() - started
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
    assert timeout <= elapsed < 2 * timeout  # one timeout, not one per address of localhost
    [record] = [r for r in caplog.records if r.name.startswith("smbdirect_socket")]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"SMB-Direct to localhost:{port} failed (RDMA connect to ")
    assert record.getMessage().endswith(
        f":{port} timed out: no MPA reply: the peer accepted TCP but does not speak iWARP/SMB-Direct; for a TCP SMB "
        "server put `smbdirect gateway` in front of it): falling back to TCP"
    )
