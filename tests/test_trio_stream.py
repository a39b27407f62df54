"""The trio streams of open_smbdirect_stream and serve_smbdirect keep trio's Stream
contract in both modes; the trio API called from asyncio names the front door to use."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import struct
from functools import partial

import pytest
import trio
import trio.testing

from smbdirect_socket import SOL_SMBDIRECT
from smbdirect_socket import options as opt
from smbdirect_socket import trio as sdtrio
from smbdirect_socket.routing import SMBDirectSocketFactory


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def stream_pair(bytestream: bool) -> tuple[sdtrio.SMBDirectStream, sdtrio.SMBDirectStream]:
    listeners = await sdtrio.open_smbdirect_listeners(0, host="127.0.0.1", bytestream=bytestream)
    port = listeners[0].socket.getsockname()[1]
    accepted: list[sdtrio.SMBDirectStream] = []
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            accepted.append(await listeners[0].accept())

        nursery.start_soon(accept)
        client = await sdtrio.open_smbdirect_stream("127.0.0.1", port, bytestream=bytestream)
    await listeners[0].aclose()
    return client, accepted[0]


async def test_stream_conformance_of_the_helpers_streams_in_bytestream_mode() -> None:
    # Framed streams carry only length-framed bytes, which trio's generic checks do not send.
    await trio.testing.check_two_way_stream(partial(stream_pair, True), None)


async def test_framed_receive_some_returns_what_has_arrived() -> None:
    client, server = await stream_pair(bytestream=False)
    message = framed(bytes(range(100)))
    await client.send_all(message)
    with trio.fail_after(5):
        assert await server.receive_some(65536) == message  # not a wait for 65,536 bytes
    # Two messages waiting: one read never runs into the next.
    await client.send_all(framed(b"first"))
    await client.send_all(framed(b"second"))
    with trio.fail_after(5):
        while not server.socket.is_readable():
            await trio.sleep(0.001)
        assert await server.receive_some() == framed(b"first")
        assert await server.receive_some() == framed(b"second")
    # Small reads walk the same bytes, the header included.
    await client.send_all(framed(b"abcdef"))
    got = b""
    with trio.fail_after(5):
        while len(got) < 10:
            got += await server.receive_some(3)
    assert got == framed(b"abcdef")
    # Half a header read: the rest still makes the socket readable.
    await client.send_all(framed(b"gh"))
    with trio.fail_after(5):
        assert await server.receive_some(2) == b"\x00\x00"
    assert server.socket.is_readable()
    with trio.fail_after(5):
        assert await server.receive_some() == b"\x00\x02gh"
    # The socket underneath keeps the kernel's exact reads.
    await client.send_all(framed(b"exact"))
    with trio.fail_after(5):
        assert await server.socket.recv(4) == struct.pack(">I", 5)
        assert await server.socket.recv(5) == b"exact"
    await client.aclose()
    with trio.fail_after(5):
        assert await server.receive_some() == b""
    await server.aclose()


async def test_a_usual_echo_server_echoes_framed_messages_of_every_size() -> None:
    async def echo(stream: sdtrio.SMBDirectStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    rng = random.Random(18)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(sdtrio.serve_smbdirect, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = await sdtrio.open_smbdirect_stream("127.0.0.1", port)
        sizes = [1, 100, 4096, 65531, 65532, 65533, 170_000, 7]  # up to the max fragmented send size
        with trio.fail_after(30):
            for size in sizes:
                payload = rng.randbytes(size)
                await client.send_all(framed(payload))
                # A client that knows nothing of the framing but how to send it.
                got = b""
                while len(got) < size + 4:
                    chunk = await client.receive_some(65536)
                    assert chunk, "the echo ended early"
                    got += chunk
                assert hashlib.sha256(got).digest() == hashlib.sha256(framed(payload)).digest()
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_framed_send_all_takes_the_stream_in_any_pieces() -> None:
    client, server = await stream_pair(bytestream=False)
    stream = framed(b"one") + framed(b"two" * 1000) + framed(b"three")
    pieces = [stream[:2], stream[2:9], stream[9:3000], stream[3000:]]
    for piece in pieces:
        await client.send_all(piece)
    got = b""
    with trio.fail_after(5):
        while len(got) < len(stream):
            got += await server.receive_some()
    assert got == stream
    await client.aclose()
    await server.aclose()


async def test_framed_send_all_of_plain_bytes_is_the_sockets_einval() -> None:
    client, server = await stream_pair(bytestream=False)
    with pytest.raises(trio.BrokenResourceError) as info:
        await client.send_all(b"hello, world")
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.EINVAL
    assert "SMBDIRECT_BYTESTREAM" in str(info.value)
    await client.aclose()
    await server.aclose()


async def test_the_streams_are_socket_streams_in_interface() -> None:
    client, server = await stream_pair(bytestream=True)
    assert isinstance(client.socket, sdtrio.SMBDirectSocket)
    assert client.getsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_BYTESTREAM) == 1
    await client.send_all(b"bytes")
    with trio.fail_after(5):
        assert await server.receive_some(100) == b"bytes"
    await client.send_eof()
    with trio.fail_after(5):
        assert await server.receive_some(100) == b""
    await client.aclose()
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some(10)


async def test_a_routed_framed_socket_in_an_smbdirect_stream() -> None:
    listeners = await sdtrio.open_smbdirect_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    factory = SMBDirectSocketFactory(ports=frozenset({port}), bytestream=False)
    previous = trio.socket.set_custom_socket_factory(factory)
    try:
        async with trio.open_nursery() as nursery:
            accepted: list[sdtrio.SMBDirectStream] = []

            async def accept() -> None:
                accepted.append(await listeners[0].accept())

            nursery.start_soon(accept)
            tcp_style = await trio.open_tcp_stream("127.0.0.1", port)
    finally:
        trio.socket.set_custom_socket_factory(previous)
    client = sdtrio.SMBDirectStream(tcp_style.socket)
    await client.send_all(framed(b"routed"))
    with trio.fail_after(5):
        assert await accepted[0].receive_some() == framed(b"routed")
    await accepted[0].send_all(framed(b"back"))
    with trio.fail_after(5):
        assert await client.receive_some() == framed(b"back")
    await client.aclose()
    await accepted[0].aclose()
    await listeners[0].aclose()


async def _ignore(stream: sdtrio.SMBDirectStream) -> None:
    await stream.aclose()


@pytest.mark.parametrize(
    "call",
    [
        lambda: sdtrio.open_smbdirect_stream("127.0.0.1", 9),
        lambda: sdtrio.open_smbdirect_listeners(0, host="127.0.0.1"),
        lambda: sdtrio.serve_smbdirect(_ignore, 0, host="127.0.0.1"),
        lambda: sdtrio.socket().connect(("127.0.0.1", 9)),
        lambda: sdtrio.socket().bind(("127.0.0.1", 0)),
    ],
    ids=["open_smbdirect_stream", "open_smbdirect_listeners", "serve_smbdirect", "connect", "bind"],
)
def test_the_trio_api_from_asyncio_names_the_asyncio_front_door(call: object) -> None:
    async def main() -> None:
        await call()  # type: ignore[operator]

    with pytest.raises(RuntimeError) as info:
        asyncio.run(main())
    message = str(info.value)
    assert "asyncio" in message and "smbdirect_socket.asyncio" in message and "\n" not in message
