"""The gateway against hostile clients, and its bounds (no Samba needed).

The target is a stand-in SMB2 server that reads each request a chunk at a
time, keeping none of it, and answers the request's first command: a READ
with its Length in bytes of data, anything else with a success response
carrying a 4-byte body (an ECHO response's).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing

from smbdirect_socket import BufferDescriptorV1, Parameters, create_connection
from smbdirect_socket.connection import iwarp_private_data
from smbdirect_socket.rdma.soft.provider import SoftIwarpProvider
from smbdirect_socket.smb import gateway as gateway_module
from smbdirect_socket.smb import smb2
from smbdirect_socket.smb.gateway import Gateway, GatewayLimits, gateway_thread, translate
from smbdirect_socket.smb.limits import ByteBudget

from .targets import DirectTcpTarget

LARGE = Parameters().with_large_messages()
ECHO = 0x000D
MiB = 1024 * 1024


class SinkServer(DirectTcpTarget):
    """A Direct-TCP SMB2 server stand-in: ``received`` holds each request's size."""

    def __init__(self) -> None:
        self.received: list[int] = []
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        file = conn.makefile("rb")
        while header := file.read(4):
            (size,) = struct.unpack(">I", header)
            first = file.read(min(size, 64))
            rest = file.read(min(size - len(first), 64))
            left = size - len(first) - len(rest)
            while left and (chunk := file.read(min(left, MiB))):
                left -= len(chunk)
            self.received.append(size)
            response = bytearray(first)
            struct.pack_into("<II", response, 16, smb2.FLAG_SERVER_TO_REDIR, 0)  # Flags, NextCommand
            if smb2.Command(bytes(first)).command == smb2.READ:
                length = struct.unpack_from("<I", rest, 4)[0]
                response += struct.pack("<HBBIII", 17, 80, 0, length, 0, 0) + b"r" * length
            else:
                response += struct.pack("<HH", 4, 0)
            conn.sendall(struct.pack(">I", len(response)) + response)


@pytest.fixture
def target() -> Iterator[SinkServer]:
    server = SinkServer()
    yield server
    server.close()


def request(command: int, message_id: int, body: bytes) -> bytes:
    header = struct.pack("<4sHHIHHIIQ", b"\xfeSMB", 64, 1, 0, command, 1, 0, 0, message_id)
    return header + bytes(64 - len(header)) + body


def echo(message_id: int) -> bytes:
    return request(ECHO, message_id, struct.pack("<HH", 4, 0))


def rdma_read(message_id: int, descriptors: list[BufferDescriptorV1], length: int) -> bytes:
    info = BufferDescriptorV1.pack_list(descriptors)
    body = struct.pack("<HBBIQ16sIIIHH", 49, 0, 0, length, 0, bytes(16), 0, 1, 0, 64 + 48, len(info))
    return request(smb2.READ, message_id, body + info)


def rdma_write(message_id: int, descriptors: list[BufferDescriptorV1], length: int) -> bytes:
    info = BufferDescriptorV1.pack_list(descriptors)
    body = struct.pack("<HHIQ16sIIHHI", 49, 0, 0, 0, bytes(16), 1, length, 64 + 48, len(info), 0)
    return request(smb2.WRITE, message_id, body + info)


def send(sock: socket.socket, message: bytes) -> None:
    sock.sendall(struct.pack(">I", len(message)) + message)


def receive(sock: socket.socket) -> bytes:
    header = sock.recv(4)
    if not header:
        return b""
    return sock.recv(struct.unpack(">I", header)[0])


def settles(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` comes true within 5 s: the gateway's tasks finish after the client hears back."""
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def statuses(sock: socket.socket, message: bytes) -> list[tuple[int, int]]:
    send(sock, message)
    return [(command.message_id, command.status) for command in smb2.split(receive(sock))]


def test_echo_then_rdma_read_reusing_its_message_id_ends_only_that_session(
    target: SinkServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's 4-byte ECHO answer taken for the READ's: a malformed READ response.

    ECHO and READ go as one compound, so that the answer (to the first
    command) comes while the READ waits for its data, every time.
    """
    gateway = Gateway(target.address)
    with gateway_thread(gateway) as address, create_connection(address, timeout=10) as other:
        assert statuses(other, echo(5)) == [(5, 0)]
        with create_connection(address, timeout=10) as hostile, caplog.at_level(logging.WARNING):
            registration = hostile.register_buffer(bytearray(4096), writable=True)
            send(
                hostile, smb2.join([smb2.Command(echo(1)), smb2.Command(rdma_read(1, registration.descriptors, 4096))])
            )
            assert receive(hostile) == b""  # the session ended
        assert statuses(other, echo(6)) == [(6, 0)]  # the gateway and the other session carry on
        assert settles(lambda: gateway.active == 1 and gateway.rdma.used == 0)
    ended = [r for r in caplog.records if r.name == "smbdirect_socket.smb.gateway" and "session ended" in r.message]
    assert len(ended) == 1 and "READ response is truncated" in ended[0].message


def test_an_unforeseen_error_ends_only_that_session(
    target: SinkServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the gateway (made here: translate raising RuntimeError for one client's
    MessageId) ends that session, logged with its traceback; the gateway serves on."""

    def buggy(commands: list[smb2.Command], *args: object) -> object:
        if commands[0].message_id == 666:
            raise RuntimeError("a bug")
        return translate(commands, *args)

    monkeypatch.setattr(gateway_module, "translate", buggy)
    gateway = Gateway(target.address)
    with gateway_thread(gateway) as address, create_connection(address, timeout=10) as other:
        with create_connection(address, timeout=10) as victim, caplog.at_level(logging.ERROR):
            send(victim, echo(666))
            assert receive(victim) == b""
        assert statuses(other, echo(1)) == [(1, 0)]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "smbdirect_socket.smb.gateway" and "unexpected" in record.message
    assert "RuntimeError: a bug" in caplog.text  # with its traceback


def test_compound_over_the_command_count_is_refused(target: SinkServer) -> None:
    gateway = Gateway(target.address, limits=GatewayLimits(max_compound_commands=4))
    chain = smb2.join([smb2.Command(echo(i)) for i in range(5)])
    with gateway_thread(gateway) as address, create_connection(address, timeout=10) as client:
        assert statuses(client, chain) == [(i, smb2.STATUS_INSUFFICIENT_RESOURCES) for i in range(5)]
        assert target.received == []  # nothing reached the server
        assert statuses(client, smb2.join([smb2.Command(echo(i)) for i in range(4)])) == [(0, 0)]


def hostile_compound(registration_descriptors: list[BufferDescriptorV1], count: int = 16) -> bytes:
    """``count`` RDMA WRITEs of 8 MiB each, all from the same 8 MiB buffer: 2 KiB on the wire."""
    return smb2.join([smb2.Command(rdma_write(i, registration_descriptors, 8 * MiB)) for i in range(count)])


def test_hostile_compound_is_refused_by_default(target: SinkServer) -> None:
    gateway = Gateway(target.address)
    with gateway_thread(gateway) as address, create_connection(address, timeout=10, parameters=LARGE) as client:
        registration = client.register_buffer(bytearray(8 * MiB))
        message = hostile_compound(registration.descriptors)
        assert len(message) <= 2048
        assert statuses(client, message) == [(i, smb2.STATUS_INSUFFICIENT_RESOURCES) for i in range(16)]
        assert gateway.rdma.peak == 0 and gateway.rdma_read_bytes == 0 and target.received == []


def test_hostile_compound_let_through_stays_within_the_session_budget(target: SinkServer) -> None:
    """With the compound bounds raised, 128 MiB of WRITE data pass through 1 MiB at a time."""
    limits = GatewayLimits(max_compound_bytes=256 * MiB, rdma_bytes_per_session=8 * MiB)
    gateway = Gateway(target.address, limits=limits)
    with gateway_thread(gateway) as address, create_connection(address, timeout=60, parameters=LARGE) as client:
        registration = client.register_buffer(bytearray(8 * MiB))
        assert statuses(client, hostile_compound(registration.descriptors)) == [(0, 0)]
        assert target.received == [16 * (8 * MiB + 64 + 48)]
        assert gateway.rdma_read_bytes == 128 * MiB
        assert gateway.rdma.peak == MiB and settles(lambda: gateway.rdma.used == 0)


def test_rdma_read_larger_than_a_message_with_the_kernel_sizes(target: SinkServer) -> None:
    """The server's 1 MiB reply fits: the client takes 173910 bytes inline, and the 1 MiB it awaits by RDMA."""
    gateway = Gateway(target.address, Parameters())
    with gateway_thread(gateway) as address, create_connection(address, timeout=10) as client:
        buffer = bytearray(MiB)
        registration = client.register_buffer(buffer, writable=True)
        send(client, rdma_read(1, registration.descriptors, MiB))
        (response,) = smb2.split(receive(client))
        assert response.status == 0 and struct.unpack_from("<II", response.data, 68) == (0, MiB)
        assert buffer == b"r" * MiB and gateway.rdma.used == 0


def test_rdma_reads_beyond_the_session_budget_are_refused(target: SinkServer) -> None:
    limits = GatewayLimits(rdma_bytes_per_session=8 * MiB)
    gateway = Gateway(target.address, limits=limits)
    with gateway_thread(gateway) as address, create_connection(address, timeout=10, parameters=LARGE) as client:
        registration = client.register_buffer(bytearray(8 * MiB), writable=True)
        two = smb2.join([smb2.Command(rdma_read(i, registration.descriptors, 8 * MiB)) for i in (1, 2)])
        assert statuses(client, two) == [
            (1, smb2.STATUS_INSUFFICIENT_RESOURCES),
            (2, smb2.STATUS_INSUFFICIENT_RESOURCES),
        ]
        assert gateway.rdma.peak == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="rdma_bytes_per_session"):
        GatewayLimits(rdma_bytes_per_session=2 * MiB, rdma_bytes_total=MiB)
    with pytest.raises(ValueError, match="setup_timeout"):
        GatewayLimits(setup_timeout=0)


def test_connections_are_bounded_in_all_and_per_address(target: SinkServer) -> None:
    gateway = Gateway(target.address, limits=GatewayLimits(max_connections=2, max_connections_per_address=1))
    with gateway_thread(gateway) as address, contextlib.ExitStack() as stack:
        first = stack.enter_context(create_connection(address, timeout=10))
        with pytest.raises(OSError) as refused:
            create_connection(address, timeout=10)  # a second from 127.0.0.1, refused at the MPA step
        assert refused.value.errno == errno.ECONNREFUSED
        second = stack.enter_context(create_connection(address, timeout=10, source_address=("127.0.0.2", 0)))
        with pytest.raises(OSError) as refused:
            create_connection(address, timeout=10, source_address=("127.0.0.3", 0))  # a third in all
        assert refused.value.errno == errno.ECONNREFUSED
        assert gateway.refused == 2
        for sock, message_id in ((first, 1), (second, 2)):
            assert statuses(sock, echo(message_id)) == [(message_id, 0)]
        first.close()
        assert settles(lambda: gateway.active == 1)
        with create_connection(address, timeout=10) as again:  # its place is free again
            assert statuses(again, echo(3)) == [(3, 0)]


async def stall_after_mpa(address: tuple[str, int], hold: float) -> tuple[float, int | None]:
    """Connect RDMA (MPA done), never negotiate SMB-Direct: seconds until the gateway drops
    us, and the errno of a real client's connect meanwhile (None if it got in)."""

    def connect() -> int | None:
        try:
            create_connection(address, timeout=10).close()
        except OSError as exc:
            return exc.errno
        return None

    qp = await SoftIwarpProvider().connect(address, iwarp_private_data(Parameters()))
    start = trio.current_time()
    meanwhile = await trio.to_thread.run_sync(connect)
    with trio.move_on_after(hold):
        with contextlib.suppress(OSError):
            while True:
                await qp.get_completion()  # nothing arrives; the disconnect flushes or fails us
        return trio.current_time() - start, meanwhile
    await qp.disconnect()
    return hold, meanwhile


def test_connection_that_never_negotiates_counts_and_is_dropped_after_the_setup_timeout(target: SinkServer) -> None:
    gateway = Gateway(target.address, limits=GatewayLimits(max_connections=1, setup_timeout=0.5))
    with gateway_thread(gateway) as address:
        dropped_after, meanwhile = trio.run(stall_after_mpa, address, 10.0)
        assert meanwhile == errno.ECONNREFUSED  # the only place was taken
        assert 0.4 < dropped_after < 3
        assert settles(lambda: gateway.active == 0)
        with create_connection(address, timeout=10) as client:  # the only place is free again
            assert statuses(client, echo(1)) == [(1, 0)]
        assert gateway.served == 1


def test_sessions_share_the_total_rdma_budget(target: SinkServer) -> None:
    """Three sessions streaming RDMA WRITEs through a 2 MiB budget: they take turns, all get through."""
    limits = GatewayLimits(rdma_bytes_per_session=MiB, rdma_bytes_total=2 * MiB)
    gateway = Gateway(target.address, limits=limits)
    results: list[list[tuple[int, int]]] = []

    def write(address: tuple[str, int]) -> None:
        with create_connection(address, timeout=30) as client:
            registration = client.register_buffer(bytearray(4 * MiB))
            for message_id in range(4):
                results.append(statuses(client, rdma_write(message_id, registration.descriptors, 4 * MiB)))

    with gateway_thread(gateway) as address:
        threads = [threading.Thread(target=write, args=(address,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 12 and all(result[0][1] == 0 for result in results)
    assert gateway.rdma_read_bytes == 48 * MiB and target.received.count(4 * MiB + 112) == 12
    assert gateway.rdma.peak == 2 * MiB and gateway.rdma.used == 0


def test_reply_over_what_the_client_can_take_ends_its_session(target: SinkServer) -> None:
    """The bound on a server reply: the client's fragmented size plus READ data it awaits by RDMA."""
    with socket.create_server(("127.0.0.1", 0)) as liar:
        gateway = Gateway(liar.getsockname())

        def answer_huge() -> None:
            conn, _ = liar.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(struct.pack(">I", 1 << 30))  # announces 1 GiB: never buffered
                conn.recv(1)

        threading.Thread(target=answer_huge, daemon=True).start()
        with gateway_thread(gateway) as address, create_connection(address, timeout=10) as client:
            send(client, echo(1))
            assert receive(client) == b""
        assert gateway.active == 0


def test_cli_flags_set_the_bounds(target: SinkServer) -> None:
    command = [sys.executable, "-m", "smbdirect_socket.cli", "gateway", "--listen", "127.0.0.1:0"]
    command += [
        "--to",
        f"{target.address[0]}:{target.address[1]}",
        "--max-connections",
        "1",
        "--rdma-bytes-total",
        "1G",
    ]
    unbuffered = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=unbuffered) as gateway:
        try:
            assert gateway.stdout is not None
            started = gateway.stdout.readline()  # smbdirect gateway: SMB-Direct HOST:PORT -> TCP ...
            host, port = started.split()[3].rsplit(":", 1)
            with create_connection((host, int(port)), timeout=10) as client:
                assert statuses(client, echo(1)) == [(1, 0)]
                with pytest.raises(OSError) as refused:
                    create_connection((host, int(port)), timeout=10)
                assert refused.value.errno == errno.ECONNREFUSED
        finally:
            gateway.terminate()


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--rdma-bytes-per-session", "2M", "--rdma-bytes-total", "1M"], "exceeds rdma_bytes_total"),
        (["--max-compound-bytes", "12X"], "expected a size"),
        (["--setup-timeout", "0"], "setup_timeout must be positive"),
    ],
)
def test_cli_refuses_bad_bounds(flags: list[str], problem: str) -> None:
    command = [sys.executable, "-m", "smbdirect_socket.cli", "gateway", "--to", "127.0.0.1:445", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and problem in result.stderr


async def test_byte_budget_serves_in_order() -> None:
    """A large request waiting is not overtaken by small ones that would fit."""
    budget = ByteBudget(10)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    await budget.acquire(8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "large", 10)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "small", 1)  # 8 + 1 fits, but the large one came first
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and budget.used == 8
        budget.release(8)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["large"] and budget.used == 10
        budget.release(10)
    assert order == ["large", "small"] and budget.used == 1 and budget.peak == 10
    with pytest.raises(ValueError, match="can never fit"):
        await budget.acquire(11)
