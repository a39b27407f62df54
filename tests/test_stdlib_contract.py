"""The blocking socket keeps the stdlib socket's contract where callers rely on it.

Each test runs the same steps on a real stdlib TCP pair and on an SMB-Direct
pair and checks both behave alike.
"""

from __future__ import annotations

import errno
import gc
import os
import socket as stdlib_socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from smbdirect_socket import SOL_SMBDIRECT
from smbdirect_socket import options as opt
from smbdirect_socket.blocking import SMBDirectSocket, create_connection, create_server

Pair = tuple[Any, Any]


def tcp_pair() -> Pair:
    with stdlib_socket.create_server(("127.0.0.1", 0)) as listener:
        client = stdlib_socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def smbdirect_pair(bytestream: bool = False) -> Pair:
    with create_server(("127.0.0.1", 0), bytestream=bytestream) as listener:
        client = create_connection(listener.getsockname(), timeout=10, bytestream=bytestream)
        server, _ = listener.accept()
    client.settimeout(None)
    return client, server


@pytest.fixture(params=["tcp", "smbdirect"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    client, server = tcp_pair() if request.param == "tcp" else smbdirect_pair(bytestream=True)
    yield client, server
    client.close()
    server.close()


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_recv_into_checks_its_size_before_reading(pair: Pair) -> None:
    client, server = pair
    client.sendall(b"hello")
    buffer = bytearray(2)
    with pytest.raises(ValueError, match="buffer too small"):
        server.recv_into(buffer, 5)
    with pytest.raises(ValueError, match="negative"):
        server.recv_into(buffer, -1)
    server.settimeout(5)
    assert server.recv(5) == b"hello"  # nothing was consumed
    assert buffer == bytearray(2)


def test_an_empty_framed_message_is_sent_as_nothing() -> None:
    """A 4-byte header saying 0: the kernel's framing has no message to send
    (an SMB-Direct data message without data is only a credit grant), so
    ``sendall`` returns at once and the peer's next message is the next one."""
    client, server = smbdirect_pair()
    try:
        assert client.send(struct.pack(">I", 0)) == 4
        client.settimeout(5)
        client.sendall(struct.pack(">I", 0))
        client.sendall(struct.pack(">I", 3) + b"abc")
        server.settimeout(5)
        assert server.recv(4) == struct.pack(">I", 3)
        assert server.recv(3) == b"abc"
    finally:
        client.close()
        server.close()


def test_a_short_parameters_value_is_einval() -> None:
    with stdlib_socket.socket() as tcp, pytest.raises(OSError) as stdlib_error:
        tcp.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, b"\0")  # struct linger is 8 bytes
    with SMBDirectSocket() as sock, pytest.raises(OSError) as ours:
        sock.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_PARAMETERS, b"\0" * 10)
    assert type(ours.value) is type(stdlib_error.value) is OSError
    assert ours.value.errno == stdlib_error.value.errno == errno.EINVAL


def test_two_threads_may_wait_in_recv(pair: Pair) -> None:
    """The stdlib lets two threads block in recv on one socket; each gets its turn."""
    client, server = pair
    server.settimeout(10)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            results.append(server.recv(1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=receive) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # both wait now
    client.sendall(b"a")
    time.sleep(0.2)
    client.sendall(b"b")
    for thread in threads:
        thread.join(10)
    assert not errors
    assert sorted(results) == [b"a", b"b"]


@pytest.mark.parametrize("make_pair", [tcp_pair, smbdirect_pair])
def test_a_dropped_socket_is_closed_with_a_resource_warning(make_pair: Callable[[], Pair]) -> None:
    baseline = descriptors()
    client, server = make_pair()
    client.fileno()  # the readiness descriptor exists too
    inner = weakref.ref(getattr(client, "trio_socket", client))
    with pytest.warns(ResourceWarning, match="unclosed"):
        del client
        gc.collect()
    server.settimeout(10)
    assert server.recv(1) == b""  # the peer sees the connection end
    server.close()
    deadline = time.monotonic() + 10
    while (inner() is not None or descriptors() > baseline) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert inner() is None  # its connection and buffers are gone
    assert descriptors() <= baseline  # and its descriptors


def _stalled_sendall(client: Any) -> float:
    client.settimeout(2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.sendall(bytes(64 << 20))
    return time.monotonic() - started


def test_the_timeout_bounds_the_whole_sendall(pair: Pair) -> None:
    client, _ = pair
    assert 1.9 <= _stalled_sendall(client) < 3.5


def test_the_timeout_bounds_framed_messages_too() -> None:
    client, server = smbdirect_pair()
    try:
        size = client.info().max_fragmented_send_size
        message = struct.pack(">I", size) + bytes(size)
        client.settimeout(2)
        with pytest.raises(TimeoutError):
            for _ in range(100):  # the reader never reads: credits run out
                started = time.monotonic()
                client.sendall(message)
        assert 1.9 <= time.monotonic() - started < 3.5
    finally:
        client.close()
        server.close()


def test_create_connection_reports_failures_as_the_stdlibs() -> None:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()  # nothing listens there
    for connect in (stdlib_socket.create_connection, create_connection):
        with pytest.raises(ConnectionRefusedError):
            connect(address, timeout=5)
        with pytest.raises(ExceptionGroup) as group:
            connect(address, timeout=5, all_errors=True)
        assert [type(error) for error in group.value.exceptions] == [ConnectionRefusedError]
