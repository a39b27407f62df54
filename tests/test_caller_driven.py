"""The blocking socket's sends and receives run in the calling thread.

A connected socket's data path never goes through the engine thread: the
caller drives the connection and sleeps on its descriptor, as a thread
sleeps in a kernel socket.  Two threads may use one socket at once (one
sending, one receiving), and the engine still answers the peer while no
caller is inside.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from smbdirect_socket import engine_thread
from smbdirect_socket.blocking import SMBDirectSocket, create_connection, create_server

Pair = tuple[SMBDirectSocket, SMBDirectSocket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    with create_server(("127.0.0.1", 0)) as server:
        client = create_connection(server.getsockname(), timeout=30)
        accepted, _ = server.accept()
    accepted.settimeout(30)
    yield client, accepted
    client.close()
    accepted.close()


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def receive_message(sock: SMBDirectSocket) -> bytes:
    (length,) = struct.unpack(">I", sock.recv(4))
    return sock.recv(length)


def test_sends_and_receives_never_hop_to_the_engine(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = pair

    def hop(*args: object) -> None:
        raise AssertionError("a connected socket's send or receive went through the engine thread")

    monkeypatch.setattr(engine_thread, "run", hop)
    monkeypatch.setattr(engine_thread, "run_sync", hop)
    for size in (1, 60, 5000, 100_000):
        message = os.urandom(size)
        client.sendall(framed(message))
        assert receive_message(server) == message
        server.sendmsg([framed(message)])
        buffer = bytearray(4 + size)
        assert server.getblocking()
        assert client.recv_into(buffer, 4) == 4
        assert client.recv_into(memoryview(buffer)[4:]) == size
        assert bytes(buffer[4:]) == message


def test_one_thread_sends_while_another_receives(pair: Pair) -> None:
    """10,000 messages each way, each checked by hash, over one socket per end
    used by two threads at once (one sending, one receiving)."""
    client, server = pair
    count = 10_000
    results: dict[str, bytes] = {}
    failures: list[BaseException] = []

    def send(sock: SMBDirectSocket, name: str, seed: int) -> None:
        digest = hashlib.sha256()
        try:
            for index in range(count):
                message = hashlib.sha256(f"{seed}/{index}".encode()).digest() * (1 + index % 40)
                digest.update(message)
                sock.sendall(framed(message))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        results[f"sent by {name}"] = digest.digest()

    def receive(sock: SMBDirectSocket, name: str) -> None:
        digest = hashlib.sha256()
        try:
            for _ in range(count):
                digest.update(receive_message(sock))
        except BaseException as exc:
            failures.append(exc)
        results[f"received by {name}"] = digest.digest()

    threads = [
        threading.Thread(target=send, args=(client, "client", 1)),
        threading.Thread(target=send, args=(server, "server", 2)),
        threading.Thread(target=receive, args=(client, "client")),
        threading.Thread(target=receive, args=(server, "server")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert results["sent by client"] == results["received by server"]
    assert results["sent by server"] == results["received by client"]


def test_the_engine_answers_while_no_caller_is_inside(pair: Pair) -> None:
    """Credits flow back while the receiving program does not call: the engine
    takes over the connection from a caller that left."""
    client, server = pair
    message = os.urandom(1000)
    received: list[bytes] = []

    def receive_late() -> None:
        time.sleep(0.3)  # nobody inside the server socket meanwhile
        received.extend(receive_message(server) for _ in range(600))

    thread = threading.Thread(target=receive_late)
    thread.start()
    for _ in range(600):  # more messages than the server's receive credits
        client.sendall(framed(message))
    thread.join(60)
    assert received == [message] * 600
