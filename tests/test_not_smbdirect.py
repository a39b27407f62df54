"""A peer that is not SMB-Direct, or a misuse: errors that name the cause and the fix.

The peers are real TCP servers on loopback that do not speak iWARP.
"""

from __future__ import annotations

import contextlib
import errno
import socket as stdlib_socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from smbdirect_socket import Parameters
from smbdirect_socket import trio as sdtrio

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
