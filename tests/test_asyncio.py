"""The asyncio front door, on real asyncio loops over the software iWARP provider.

Each test runs its own loop with ``asyncio.run`` (the suite's async tests run
under trio).  The stream checks follow ``trio.testing.check_two_way_stream``
where asyncio's streams have the same contract: data both ways at once and in
order, a receive returns what has arrived, a close reaches the peer as the end
of the stream after every byte, flow control, and errors as the stdlib's.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import socket as stdlib_socket
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import trio

from smbdirect_socket import IPPROTO_SMBDIRECT, Parameters
from smbdirect_socket import asyncio as sdasyncio
from smbdirect_socket._event_loops import asyncio_running, require_trio

T = TypeVar("T")
TIMEOUT = 60


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), TIMEOUT)

    return asyncio.run(bounded())


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def serving(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], **options: Any
) -> tuple[sdasyncio.SMBDirectServer, int]:
    server = await sdasyncio.start_server(handler, "127.0.0.1", 0, **options)
    return server, server.sockets[0].getsockname()[1]


def free_port() -> int:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ---- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bytestream", [False, True], ids=["framed", "bytestream"])
def test_echo(bytestream: bool) -> None:
    async def main() -> None:
        server, port = await serving(echo, bytestream=bytestream)
        async with server:
            reader, writer = await sdasyncio.open_connection("127.0.0.1", port, bytestream=bytestream)
            assert writer.get_extra_info("peername") == ("127.0.0.1", port)
            assert writer.get_extra_info("sockname")[0] == "127.0.0.1"
            writer.write(framed(b"hello"))
            await writer.drain()
            assert await read_message(reader) == b"hello"
            transport = writer.transport
            assert isinstance(transport, sdasyncio.SMBDirectTransport)
            info = transport.info()
            assert info.state == 1 and info.messages_sent >= 1
            assert not writer.can_write_eof()
            with pytest.raises(NotImplementedError, match="no half-close"):
                writer.write_eof()
            writer.close()
            await writer.wait_closed()

    run(main)


def test_framed_messages_of_every_size_and_in_pieces() -> None:
    """A message may be written whole, several to a write, or split across writes;
    the reader gets each back as its length and its bytes."""

    async def main() -> None:
        server, port = await serving(echo)
        async with server:
            reader, writer = await sdasyncio.open_connection("127.0.0.1", port)
            sizes = [1, 2, 3, 4, 5, 1000, 1364, 1365, 65536, 173910]
            messages = [random.randbytes(size) for size in sizes]
            wire = b"".join(framed(m) for m in messages)
            cuts = sorted(random.sample(range(1, len(wire)), 40))
            for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
                writer.write(wire[start:end])
            writer.write(framed(b"") + framed(b"last"))  # an empty message carries nothing
            await writer.drain()
            for message in messages:
                assert await read_message(reader) == message
            assert await read_message(reader) == b"last"
            writer.close()
            await writer.wait_closed()

    run(main)


def test_large_messages_both_modes() -> None:
    async def main() -> None:
        big = Parameters().with_large_messages()
        for bytestream, parameters, size in [(True, None, 16 << 20), (False, big, 8 << 20)]:
            server, port = await serving(echo, bytestream=bytestream, parameters=parameters)
            async with server:
                reader, writer = await sdasyncio.open_connection(
                    "127.0.0.1", port, bytestream=bytestream, parameters=parameters
                )
                payload = random.randbytes(size)
                writer.write(framed(payload))
                echoed = asyncio.ensure_future(read_message(reader))
                await writer.drain()
                assert hashlib.sha256(await echoed).digest() == hashlib.sha256(payload).digest()
                writer.close()
                await writer.wait_closed()

    run(main)


def test_oversize_message_is_emsgsize() -> None:
    async def main() -> None:
        server, port = await serving(echo)
        async with server:
            reader, writer = await sdasyncio.open_connection("127.0.0.1", port)
            writer.write(framed(bytes(2 << 20)))  # above the default 1 MiB (and the peer's 173910)
            with pytest.raises(OSError) as info:
                await reader.read()
            assert info.value.errno == errno.EMSGSIZE
            with pytest.raises(OSError):
                await writer.drain()
            writer.close()

    run(main)


def test_both_ways_at_once_with_flow_control() -> None:
    """Each side sends 8 MiB while the other reads slowly: writes pause (drain
    waits), nothing deadlocks, every byte arrives in order."""

    async def main() -> None:
        payload = random.randbytes(8 << 20)
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        paused: list[int] = []

        async def send(writer: asyncio.StreamWriter) -> None:
            for start in range(0, len(payload), 100_000):
                writer.write(payload[start : start + 100_000])
                paused.append(writer.transport.get_write_buffer_size())
                await writer.drain()

        async def receive(reader: asyncio.StreamReader, slow: bool) -> bytes:
            received = bytearray()
            while len(received) < len(payload):
                chunk = await reader.read(65536)
                assert chunk, "end of stream before all data"
                assert len(chunk) <= 65536
                received += chunk
                if slow and len(received) < 1 << 20:
                    await asyncio.sleep(0.001)
            return bytes(received)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got, _ = await asyncio.gather(receive(reader, True), send(writer))
            done.set_result(got)
            writer.close()

        server, port = await serving(handler, bytestream=True)
        async with server:
            reader, writer = await sdasyncio.open_connection("127.0.0.1", port, bytestream=True)
            got, _ = await asyncio.gather(receive(reader, True), send(writer))
            assert got == payload
            assert await done == payload
            assert max(paused) > 64 * 1024  # the writer ran ahead of the peer and was held back
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    run(main)


def test_read_returns_what_has_arrived() -> None:
    """The Stream contract in both modes: a read returns as soon as some data has arrived."""

    async def main() -> None:
        for bytestream in (True, False):
            server, port = await serving(echo, bytestream=bytestream)
            async with server:
                reader, writer = await sdasyncio.open_connection("127.0.0.1", port, bytestream=bytestream)
                writer.write(framed(b"abc"))
                assert await asyncio.wait_for(reader.read(65536), 5) in (framed(b"abc"), framed(b"abc")[:4])
                writer.close()
                await writer.wait_closed()

    run(main)


def test_close_is_end_of_stream_after_every_byte() -> None:
    async def main() -> None:
        payload = random.randbytes(3 << 20)

        async def send_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(payload)
            writer.close()  # the writes still go, then the end of the stream
            await writer.wait_closed()

        server, port = await serving(send_and_close, bytestream=True)
        async with server:
            reader, writer = await sdasyncio.open_connection("127.0.0.1", port, bytestream=True)
            assert await reader.read() == payload
            assert reader.at_eof()
            await asyncio.sleep(0)
            assert writer.transport.is_closing()  # no half-close: the peer's end ends it
            writer.write(b"after")  # goes nowhere, as on a closed asyncio transport
            writer.close()
            writer.close()  # idempotent
            await writer.wait_closed()

    run(main)


def test_abort_drops_unsent_data() -> None:
    async def main() -> None:
        lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        class Lost(asyncio.Protocol):
            def connection_lost(self, exc: BaseException | None) -> None:
                lost.set_result(exc)

        server, port = await serving(echo)
        async with server:
            transport, _ = await sdasyncio.create_connection(Lost, "127.0.0.1", port)
            transport.write(framed(bytes(100_000)) * 20)
            transport.abort()
            assert transport.is_closing()
            assert await lost is None

    run(main)


def test_connect_errors() -> None:
    async def main() -> None:
        port = free_port()
        with pytest.raises(ConnectionRefusedError) as info:
            await sdasyncio.open_connection("127.0.0.1", port)
        assert info.value.errno == errno.ECONNREFUSED
        with pytest.raises(OSError):
            await sdasyncio.open_connection("no-such-host.invalid", port)

    run(main)


def test_cancelling_a_connect_to_a_silent_peer() -> None:
    """A TCP server that never answers MPA: cancelling (or timing out) the
    connect ends it at once, and nothing is left behind."""

    async def main() -> None:
        accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append((reader, writer))

        tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sdasyncio.open_connection("127.0.0.1", port), 0.5)
        assert time.monotonic() - start < 2
        task = asyncio.ensure_future(sdasyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(accepted) == 2
        for reader, writer in accepted:  # each attempt was given up: its TCP connection closed
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"MPA ID Req Frame")
            writer.close()
        tcp.close()
        await tcp.wait_closed()

    run(main)


def test_cancelled_read_keeps_the_connection_usable() -> None:
    async def main() -> None:
        server, port = await serving(echo)
        async with server:
            reader, writer = await sdasyncio.open_connection("127.0.0.1", port)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.1)
            writer.write(framed(b"still here"))
            assert await read_message(reader) == b"still here"
            with pytest.raises(RuntimeError, match="already waiting"):  # one reader at a time
                await asyncio.gather(reader.read(1), reader.read(1))
            writer.close()
            await writer.wait_closed()

    run(main)


def test_hundred_concurrent_connections() -> None:
    async def main() -> None:
        server, port = await serving(echo)
        async with server:

            async def client(i: int) -> None:
                reader, writer = await sdasyncio.open_connection("127.0.0.1", port)
                writer.write(framed(b"%d" % i * 100))
                assert await read_message(reader) == b"%d" % i * 100
                writer.close()
                await writer.wait_closed()

            await asyncio.gather(*(client(i) for i in range(100)))

    run(main)


def test_server_lifecycle() -> None:
    async def main() -> None:
        connected = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            await echo(reader, writer)

        server = await sdasyncio.start_server(handler, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        (listening,) = server.sockets
        assert listening.proto == IPPROTO_SMBDIRECT
        assert listening.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN) == 1
        port = listening.getsockname()[1]
        forever = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.05)
        assert server.is_serving()
        reader, writer = await sdasyncio.open_connection("127.0.0.1", port)
        await connected.wait()
        server.close()
        with pytest.raises(asyncio.CancelledError):  # at once, not when the connection ends
            await asyncio.wait_for(forever, 5)
        assert server.sockets == ()
        # wait_closed waits for the connections it accepted (as asyncio 3.12+).
        closed = asyncio.ensure_future(server.wait_closed())
        writer.write(framed(b"open still"))
        assert await read_message(reader) == b"open still"
        assert not closed.done()
        writer.close()
        await asyncio.wait_for(closed, 10)
        with pytest.raises(ConnectionRefusedError):
            await sdasyncio.open_connection("127.0.0.1", port)

    run(main)


def test_a_protocol_factory_and_close_clients() -> None:
    async def main() -> None:
        events: list[str] = []

        class Upper(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport
                events.append("made")

            def data_received(self, data: bytes) -> None:
                self.transport.write(data.upper())

            def connection_lost(self, exc: BaseException | None) -> None:
                events.append(f"lost {exc}")

        server = await sdasyncio.create_server(Upper, "127.0.0.1", 0, bytestream=True)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await sdasyncio.open_connection("127.0.0.1", port, bytestream=True)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"HELLO"
        server.close_clients()
        assert await reader.read() == b""
        server.close()
        await server.wait_closed()
        assert events == ["made", "lost None"]
        writer.close()

    run(main)


# ---- the socket for the loop's sock_* methods ----------------------------------------------------------


@pytest.mark.parametrize("bytestream", [False, True], ids=["framed", "bytestream"])
def test_loop_sock_methods(bytestream: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)  # asyncio then checks that the sockets are non-blocking
        with sdasyncio.socket(bytestream=bytestream) as listener, sdasyncio.socket(bytestream=bytestream) as client:
            assert listener.gettimeout() == 0.0
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname())
            server, address = await accepting
            with server:
                assert address == client.getsockname()
                assert server.gettimeout() == 0.0
                payload = random.randbytes(150_000)
                sending = asyncio.ensure_future(loop.sock_sendall(client, framed(payload)))
                if bytestream:
                    received = bytearray()
                    while len(received) < len(payload) + 4:
                        received += await loop.sock_recv(server, 1 << 20)
                    assert received == framed(payload)
                else:
                    (length,) = struct.unpack(">I", await loop.sock_recv(server, 4))
                    buffer = bytearray(length)
                    assert await loop.sock_recv_into(server, buffer) == length
                    assert buffer == payload
                await sending
                client.close()
                assert await loop.sock_recv(server, 4) == b""

    run(main)


def test_loop_sock_connect_refused() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with sdasyncio.socket() as sock:
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.sock_connect(sock, ("127.0.0.1", free_port()))
            assert info.value.errno == errno.ECONNREFUSED
            assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PROTOCOL) == IPPROTO_SMBDIRECT

    run(main)


def test_socket_refuses_other_protocols() -> None:
    with pytest.raises(OSError) as info:
        sdasyncio.socket(proto=stdlib_socket.IPPROTO_UDP)
    assert info.value.errno == errno.EPROTONOSUPPORT


# ---- the trio API from asyncio ------------------------------------------------------------------------


def test_require_trio_names_the_asyncio_front_door() -> None:
    async def under_asyncio() -> None:
        assert asyncio_running()
        with pytest.raises(RuntimeError, match=r"called from asyncio: use smbdirect_socket\.asyncio"):
            require_trio("open_smbdirect_stream")

    run(under_asyncio)
    assert not asyncio_running()
    with pytest.raises(RuntimeError, match=r"must be called under trio\.run"):
        require_trio("open_smbdirect_stream")

    async def under_trio() -> None:
        require_trio("open_smbdirect_stream")

    trio.run(under_trio)
