"""The blocking, stdlib-style SMB-Direct socket: plain threads, no trio in sight."""

from __future__ import annotations

import errno
import hashlib
import os
import select
import selectors
import socket as stdlib_socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import smbdirect_socket as sd
from smbdirect_socket import IPPROTO_SMBDIRECT, SOL_SMBDIRECT
from smbdirect_socket import options as opt
from smbdirect_socket.blocking import SMBDirectSocket, create_connection, create_server
from smbdirect_socket.constants import SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def receive_message(sock: SMBDirectSocket) -> bytes:
    (length,) = struct.unpack(">I", sock.recv(4))
    return sock.recv(length)


def in_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server() -> Iterator[SMBDirectSocket]:
    sock = create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def pair(server: SMBDirectSocket) -> Iterator[tuple[SMBDirectSocket, SMBDirectSocket]]:
    client = create_connection(server.getsockname(), timeout=10)
    accepted, _ = server.accept()
    yield client, accepted
    client.close()
    accepted.close()


def test_socket_front_door() -> None:
    plain = sd.socket()
    assert type(plain) is stdlib_socket.socket
    plain.close()
    with sd.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM, IPPROTO_SMBDIRECT) as sock:
        assert isinstance(sock, SMBDirectSocket)
        assert (sock.family, sock.type, sock.proto) == (stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM, 257)
        assert sock.gettimeout() is None and sock.getblocking()
        assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PROTOCOL) == IPPROTO_SMBDIRECT
    with pytest.raises(OSError) as info:
        sd.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM, IPPROTO_SMBDIRECT)
    assert info.value.errno == errno.EAFNOSUPPORT
    nonblocking = sd.socket(type=stdlib_socket.SOCK_STREAM | stdlib_socket.SOCK_NONBLOCK, proto=IPPROTO_SMBDIRECT)
    assert not nonblocking.getblocking()
    nonblocking.close()


def test_framed_request_response(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, server = pair
    assert client.getpeername() == server.getsockname()

    def echo() -> None:
        while True:
            header = server.recv(4)
            if not header:
                return
            server.sendall(header + server.recv(struct.unpack(">I", header)[0]))

    thread = in_thread(echo)
    for size in (1, 4, 1340, 1341, 65536, 173910):
        payload = os.urandom(size)
        assert client.send(framed(payload)) == size + 4
        assert receive_message(client) == payload
    client.close()
    thread.join(10)
    assert not thread.is_alive()


def test_recv_into_recvmsg_into_and_sendmsg(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, server = pair
    client.sendmsg([struct.pack(">I", 10), b"hello", b"world"])
    header = bytearray(4)
    assert server.recv_into(header) == 4 and header == struct.pack(">I", 10)
    first, second = bytearray(3), bytearray(7)
    nbytes, ancillary, flags, _ = server.recvmsg_into([first, second])
    assert (nbytes, ancillary, flags) == (10, [], 0)
    assert first + second == b"helloworld"
    client.send(framed(b"abc"))
    assert server.recvmsg(4)[0] == struct.pack(">I", 3)
    assert server.recvmsg(3)[0] == b"abc"


def test_timeouts(server: SMBDirectSocket, pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, _ = pair
    client.settimeout(0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.recv(4)
    assert time.monotonic() - started >= 0.1
    assert isinstance(TimeoutError(), stdlib_socket.timeout)
    server.settimeout(0.05)
    with pytest.raises(TimeoutError):
        server.accept()
    with pytest.raises(ValueError, match="out of range"):
        client.settimeout(-1)
    client.settimeout(None)
    assert client.gettimeout() is None


def test_nonblocking_calls(server: SMBDirectSocket, pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, accepted = pair
    client.setblocking(False)
    with pytest.raises(BlockingIOError) as info:
        client.recv(4)
    assert info.value.errno == errno.EAGAIN
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()
    accepted.send(framed(b"ping"))
    selector = selectors.DefaultSelector()
    selector.register(client, selectors.EVENT_READ)
    assert selector.select(5)
    assert client.recv(4) == struct.pack(">I", 4)
    assert client.recv(4) == b"ping"
    selector.close()


def test_nonblocking_connect(server: SMBDirectSocket) -> None:
    client = SMBDirectSocket()
    client.setblocking(False)
    assert client.connect_ex(server.getsockname()) == errno.EINPROGRESS
    assert client.connect_ex(server.getsockname()) in (errno.EALREADY, errno.EISCONN)
    _, writable, _ = select.select([], [client], [], 10)
    assert writable == [client]
    assert client.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ERROR) == 0
    assert client.connect_ex(server.getsockname()) == errno.EISCONN
    server.accept()[0].close()
    client.close()


def test_nonblocking_connect_refused() -> None:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()  # nothing listens there
    client = SMBDirectSocket()
    client.setblocking(False)
    with pytest.raises(BlockingIOError) as info:
        client.connect(address)
    assert info.value.errno == errno.EINPROGRESS
    _, writable, _ = select.select([], [client], [], 10)
    assert writable == [client]
    assert client.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ERROR) == errno.ECONNREFUSED
    client.close()


def test_blocking_connect_refused_and_misuse(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
    with pytest.raises(ConnectionRefusedError):
        create_connection(address, timeout=5)
    fresh = SMBDirectSocket()
    with pytest.raises(OSError) as info:
        fresh.send(framed(b"x"))
    assert info.value.errno == errno.ENOTCONN
    fresh.close()
    with pytest.raises(OSError) as info:
        fresh.recv(4)
    assert info.value.errno == errno.EBADF
    client, _ = pair
    with pytest.raises(OSError) as info:
        client.connect(address)
    assert info.value.errno == errno.EISCONN
    for bad, code in ((b"\x00\x00\x00\x05abc", errno.EINVAL), (framed(bytes(173911)), errno.EMSGSIZE)):
        with pytest.raises(OSError) as info:
            client.send(bad)
        assert info.value.errno == code
    with pytest.raises(OSError) as info:
        client.recv(4, stdlib_socket.MSG_PEEK)
    assert info.value.errno == errno.EINVAL
    client.shutdown(stdlib_socket.SHUT_WR)
    with pytest.raises(OSError) as info:
        client.send(framed(b"x"))
    assert info.value.errno == errno.EPIPE


def test_readiness_follows_the_connection(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, server = pair
    poller = select.poll()
    poller.register(server.fileno(), select.POLLIN | select.POLLOUT)
    # Writable once the client's first grant arrives: accept returns when the
    # server has answered the negotiation, a moment before.
    assert poller.poll(5000) == [(server.fileno(), select.POLLOUT)]
    client.send(framed(b"data"))
    deadline = time.monotonic() + 5
    while not any(event & select.POLLIN for _, event in poller.poll(100)):
        assert time.monotonic() < deadline
    assert server.recv(4) == struct.pack(">I", 4)
    assert server.recv(4) == b"data"
    assert poller.poll(0) == [(server.fileno(), select.POLLOUT)]  # level-triggered: drained again
    client.close()
    readable, _, _ = select.select([server], [], [], 5)
    assert readable == [server]
    assert server.recv(4) == b""


def test_shutdown_wakes_a_reader_in_select(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    """smbprotocol closes from one thread while its reader waits in select."""
    client, _ = pair
    woke: list[list[object]] = []
    thread = in_thread(lambda: woke.append(select.select([client], [], [], 10)[0]))
    time.sleep(0.1)
    client.shutdown(stdlib_socket.SHUT_RDWR)
    thread.join(5)
    assert woke == [[client]]
    assert client.recv(4) == b""


def test_makefile_in_bytestream_mode(server: SMBDirectSocket) -> None:
    server.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_BYTESTREAM, 1)
    client = create_connection(server.getsockname(), bytestream=True)
    accepted, _ = server.accept()
    assert accepted.bytestream
    writer = client.makefile("wb")
    writer.write(b"first line\nsecond line\n")
    writer.flush()
    writer.close()
    reader = accepted.makefile("rb")
    assert reader.readline() == b"first line\n"
    assert reader.readline() == b"second line\n"
    accepted.close()  # the file still holds it open
    client.close()
    assert reader.readline() == b""
    reader.close()


def test_rdma_read_write_and_remote_invalidate(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, server = pair
    source = os.urandom(1 << 20)
    readable = client.register_buffer(source)
    sink = bytearray(1 << 20)
    writable = client.register_buffer(sink, writable=True)
    client.send(framed(readable.pack() + writable.pack()))
    message = receive_message(server)
    (read_from,) = sd.BufferDescriptorV1.unpack_list(message[:16])
    (write_to,) = sd.BufferDescriptorV1.unpack_list(message[16:])
    copy = bytearray(1 << 20)
    server.rdma_read(copy, [read_from])
    server.rdma_write(copy, [write_to])
    token = struct.pack("=I", write_to.token)
    server.sendmsg([framed(b"done")], [(SOL_SMBDIRECT, SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE, token)])
    assert receive_message(client) == b"done"
    assert hashlib.sha256(sink).digest() == hashlib.sha256(source).digest()
    with pytest.raises(OSError) as info:
        server.rdma_read(copy, [write_to])  # invalidated by the send above
    assert info.value.errno == errno.EREMOTEIO
    info_ = server.info()
    assert info_.rdma_reads == 1 and info_.rdma_writes >= 1
    client.deregister_buffer(readable)


def test_statistics_and_parameters(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    client, server = pair
    client.send(framed(b"x" * 3000))
    receive_message(server)
    stats = opt.SocketInfo.unpack(client.getsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_INFO, opt.SocketInfo.size))
    assert stats.state == 1 and stats.messages_sent == 1 and stats.fragments_sent >= 3
    with pytest.raises(OSError) as info:
        client.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_MAX_SEND_SIZE, 2000)
    assert info.value.errno == errno.EISCONN
    with pytest.raises(OSError) as info:
        client.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY)
    assert info.value.errno == errno.ENOPROTOOPT


def test_many_threads_many_connections(server: SMBDirectSocket) -> None:
    def serve() -> None:
        for _ in range(20):
            sock, _ = server.accept()
            in_thread(lambda sock=sock: (sock.send(framed(receive_message(sock)[::-1])), sock.close()))

    in_thread(serve)
    results: list[bool] = []

    def client(n: int) -> None:
        with create_connection(server.getsockname(), timeout=20) as sock:
            payload = os.urandom(n * 1000 + 1)
            sock.sendall(framed(payload))
            results.append(receive_message(sock) == payload[::-1])

    threads = [in_thread(lambda n=n: client(n)) for n in range(20)]
    for thread in threads:
        thread.join(30)
    assert results == [True] * 20


def test_connect_from_a_bound_address(server: SMBDirectSocket) -> None:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        source = probe.getsockname()
    with create_connection(server.getsockname(), timeout=10, source_address=source) as client:
        accepted, peer = server.accept()
        assert client.getsockname() == source == peer == accepted.getpeername()
        accepted.close()


KILLED_PEER = """
import os, signal, struct, sys
from smbdirect_socket import create_connection
sock = create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
sock.sendall(struct.pack(">I", 5) + b"hello")
print("sent", flush=True)
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_peer_process_ends_its_connection_only(server: SMBDirectSocket) -> None:
    import subprocess
    import sys

    peer = subprocess.Popen(
        [sys.executable, "-c", KILLED_PEER, str(server.getsockname()[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert peer.stdout is not None and peer.stdin is not None
    victim, _ = server.accept()
    assert peer.stdout.readline() == "sent\n"
    survivor = create_connection(server.getsockname(), timeout=10)
    other, _ = server.accept()
    assert receive_message(victim) == b"hello"
    victim.settimeout(10)
    peer.stdin.write("die\n")
    peer.stdin.flush()
    assert peer.wait(10) == -9
    try:
        assert victim.recv(4) == b""  # the kernel closed its TCP in order
    except OSError as exc:
        assert exc.errno in (errno.ECONNRESET, errno.ECONNABORTED)
    survivor.send(framed(b"still here"))
    assert receive_message(other) == b"still here"
    for sock in (victim, survivor, other):
        sock.close()


def test_msg_dontwait_does_not_wait_behind_a_blocked_receiver(pair: tuple[SMBDirectSocket, SMBDirectSocket]) -> None:
    """Threads that receive take turns; one that asks not to wait gets EAGAIN at
    once, as from the kernel, instead of waiting for its turn."""
    client, server = pair
    server.settimeout(10)
    received: list[bytes] = []
    waiting = in_thread(lambda: received.append(server.recv(4)))
    time.sleep(0.2)  # it waits now
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        server.recv(4, stdlib_socket.MSG_DONTWAIT)
    assert time.monotonic() - started < 1
    client.send(framed(b"ping"))
    waiting.join(10)
    assert received == [struct.pack(">I", 4)]
