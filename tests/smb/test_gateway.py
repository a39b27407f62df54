"""The gateway's relay and its failures, against a Direct-TCP echo server (no Samba needed)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from smbdirect_socket import Parameters, create_connection
from smbdirect_socket.smb import smb2
from smbdirect_socket.smb.gateway import Gateway, gateway_thread

from .targets import DirectTcpTarget


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class DirectTcpServer(DirectTcpTarget):
    """Answers each 4-byte-length-framed message with its reverse; ``inflate`` makes
    the answer that many times larger."""

    def __init__(self) -> None:
        self.inflate = 1
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        file = conn.makefile("rb")
        while header := file.read(4):
            body = file.read(struct.unpack(">I", header)[0])
            conn.sendall(framed(body[::-1] * self.inflate))


@pytest.fixture
def target() -> Iterator[DirectTcpServer]:
    server = DirectTcpServer()
    yield server
    server.close()


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(framed(payload))
    (length,) = struct.unpack(">I", sock.recv(4))
    return sock.recv(length)


def test_relays_messages_of_every_size(target: DirectTcpServer) -> None:
    gateway = Gateway(target.address)
    large = Parameters().with_large_messages()
    with gateway_thread(gateway) as address, create_connection(address, timeout=30, parameters=large) as client:
        for size in (1, 1364, 65536, 1 << 20, 8 << 20):
            payload = bytes(range(256)) * (size // 256) or b"x"
            assert exchange(client, payload) == payload[::-1]
        assert gateway.active == 1


def test_unreachable_target_disconnects_the_client(target: DirectTcpServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = probe.getsockname()
    gateway = Gateway(nowhere)
    with gateway_thread(gateway) as address, create_connection(address, timeout=10) as client:
        assert client.recv(4) == b""  # the gateway hung up: end of stream, no hang
    assert gateway.served == 1 and gateway.active == 0


def test_target_going_away_is_a_disconnect_and_others_carry_on(target: DirectTcpServer) -> None:
    gateway = Gateway(target.address)
    with gateway_thread(gateway) as address:
        first = create_connection(address, timeout=10)
        assert exchange(first, b"one") == b"eno"
        target.drop()  # the SMB server goes away under the first client
        assert first.recv(4) == b""
        first.close()
        with create_connection(address, timeout=10) as second:  # the gateway still serves
            assert exchange(second, b"two") == b"owt"


def test_reply_too_large_for_the_client_ends_only_that_client(target: DirectTcpServer) -> None:
    """The kernel's sizes: the client reassembles at most 173910 bytes."""
    gateway = Gateway(target.address)
    with gateway_thread(gateway) as address:
        client = create_connection(address, timeout=10)
        target.inflate = 1000  # a 100-byte request is answered with 100000... then more
        assert exchange(client, b"x" * 100) == b"x" * 100_000
        client.sendall(framed(b"y" * 200))  # 200000 bytes cannot reach this client:
        assert client.recv(4) == b""  # the gateway ends its connection (and logs why)
        client.close()
        target.inflate = 1
        with create_connection(address, timeout=10) as other:
            assert exchange(other, b"fine") == b"enif"


def smb2_request(command: int, body: bytes, *, flags: int = 0, next_command: int = 0) -> bytes:
    header = struct.pack("<4sHHIHHIIQ", b"\xfeSMB", 64, 1, 0, command, 1, flags, next_command, 42)
    return header + bytes(64 - len(header)) + body


def test_untranslatable_rdma_request_is_answered_and_the_connection_carries_on(target: DirectTcpServer) -> None:
    signed_write = smb2_request(
        smb2.WRITE, struct.pack("<HHIQ16sIIHHI", 49, 0, 0, 0, bytes(16), 1, 4096, 112, 16, 0) + bytes(16), flags=0x8
    )
    with gateway_thread(Gateway(target.address)) as address, create_connection(address, timeout=10) as client:
        answer = smb2.split(exchange(client, signed_write))
        assert [(c.status, c.message_id) for c in answer] == [(smb2.STATUS_INVALID_PARAMETER, 42)]
        assert exchange(client, b"plain") == b"nialp"  # still relaying


def test_malformed_smb2_chain_ends_only_that_connection(target: DirectTcpServer) -> None:
    broken = smb2_request(5, b"", next_command=12)  # a link that points inside the header
    with gateway_thread(Gateway(target.address)) as address:
        with create_connection(address, timeout=10) as client:
            client.sendall(framed(broken))
            assert client.recv(4) == b""
        with create_connection(address, timeout=10) as other:
            assert exchange(other, b"fine") == b"enif"


def test_io_beyond_the_negotiated_read_write_size_is_refused(target: DirectTcpServer) -> None:
    huge_read = smb2_request(
        smb2.READ, struct.pack("<HBBIQ16sIIIHH", 49, 0, 0, 16 << 20, 0, bytes(16), 0, 1, 0, 112, 16) + bytes(16)
    )
    with gateway_thread(Gateway(target.address)) as address, create_connection(address, timeout=10) as client:
        answer = smb2.split(exchange(client, huge_read))  # 16 MiB > the 8 MiB the gateway offers
        assert [c.status for c in answer] == [smb2.STATUS_INVALID_PARAMETER]
        assert exchange(client, b"plain") == b"nialp"
