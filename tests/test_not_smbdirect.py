"""A peer that is not SMB-Direct, or a misuse: errors that name the cause and the fix.

The peers are real TCP servers on loopback that do not speak iWARP.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket as stdlib_socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from smbdirect_socket import SOL_SMBDIRECT, Parameters, _wire
from smbdirect_socket import options as opt
from smbdirect_socket import trio as sdtrio
from tests.test_trio_socket import connected_pair, framed

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _serve(handler: Handler, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname())
    await trio.serve_listeners(handler, listeners)


async def _http(stream: trio.SocketStream) -> None:
    """A web server's answer to anything it does not understand."""
    await stream.receive_some(1024)
    await stream.send_all(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await stream.aclose()


async def _echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):  # the client resets what it did not read
        async for data in stream:
            await stream.send_all(data)


async def _silent(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def _peer(nursery: trio.Nursery, handler: Handler) -> tuple[str, int]:
    address: tuple[str, int] = await nursery.start(_serve, handler)
    return address


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def _connect(address: tuple[str, int], parameters: Parameters | None = None) -> OSError:
    sock = sdtrio.socket(parameters=parameters)
    with pytest.raises(OSError) as info, trio.fail_after(10):
        await sock.connect(address)
    sock.close()
    return info.value


async def test_a_peer_answering_non_mpa_bytes_is_named_at_once(nursery: trio.Nursery) -> None:
    host, port = await _peer(nursery, _http)
    with trio.fail_after(2):  # recognised from the answer, not by a timeout
        error = await _connect((host, port))
    assert error.errno == errno.EPROTO
    assert error.strerror == (
        f"the peer at {host}:{port} answered with non-MPA bytes (b'HTTP/1.0 400 Bad'): it is a plain TCP "
        "service, not SMB-Direct/iWARP; for a TCP SMB server put `smbdirect gateway` in front of it"
    )


async def test_a_peer_echoing_the_mpa_request_is_named(nursery: trio.Nursery) -> None:
    host, port = await _peer(nursery, _echo)
    error = await _connect((host, port))
    assert error.errno == errno.EPROTO
    assert error.strerror == (
        f"the peer at {host}:{port} echoed our MPA request: it is a plain TCP service, not SMB-Direct/iWARP; "
        "for a TCP SMB server put `smbdirect gateway` in front of it"
    )


async def test_a_silent_peer_times_out_with_the_cause(nursery: trio.Nursery) -> None:
    host, port = await _peer(nursery, _silent)
    parameters = Parameters(rdma_connect_timeout_msec=300)
    started = trio.current_time()
    error = await _connect((host, port), parameters)
    assert trio.current_time() - started >= 0.3  # the connect timeout is kept
    assert isinstance(error, TimeoutError) and error.errno == errno.ETIMEDOUT
    assert error.strerror == (
        f"RDMA connect to {host}:{port} timed out: no MPA reply: the peer accepted TCP but does not speak "
        "iWARP/SMB-Direct; for a TCP SMB server put `smbdirect gateway` in front of it"
    )


async def test_nothing_listening_is_still_refused() -> None:
    probe = stdlib_socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()
    error = await _connect(address)
    assert error.errno == errno.ECONNREFUSED


async def test_a_plain_tcp_client_is_logged_by_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    listener = sdtrio.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = await trio.open_tcp_stream(*listener.getsockname())
    await client.send_all(b"\x00\x00\x00\x44\xfeSMB" + bytes(64))  # an SMB2 client over TCP, say
    with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
        assert await client.receive_some(1024) == b""  # closed (reset: bytes unread) without an answer, as siw
    await client.aclose()
    listener.close()
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "smbdirect_socket.rdma.soft.provider",
            logging.INFO,
            "client 127.0.0.1: not MPA (a plain TCP client? use `smbdirect run` or patch())",
        )
    ]


async def test_an_over_size_message_names_fit_sizes_and_large_messages() -> None:
    client, server = await connected_pair()
    with pytest.raises(OSError) as info:
        await client.send(framed(bytes(173911)))
    assert (info.value.errno, info.value.strerror) == (
        errno.EMSGSIZE,
        "message of 173911 bytes exceeds the negotiated max fragmented send size 173910; for an SMB client call "
        "smbdirect_socket.smb.clients.fit_sizes() (patch() and run do), or negotiate larger messages: "
        "Parameters().with_large_messages(), `smbdirect run --large-messages`",
    )
    client.close()
    server.close()


async def test_the_statistics_say_whether_the_compiled_core_runs() -> None:
    client, server = await connected_pair()
    decoded = opt.SocketInfo.unpack(client.getsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_INFO, opt.SocketInfo.size))
    assert decoded.compiled == client.info().compiled == int(_wire.COMPILED)
    assert opt.SocketInfo.size == 128
    client.close()
    server.close()
