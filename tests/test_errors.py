"""One translation of protocol and engine errors into the stdlib's OSError."""

from __future__ import annotations

import errno
import socket as stdlib_socket

import pytest
import trio

from smbdirect_socket.errors import LocalProtocolError, PDUError, RemoteProtocolError, socket_error
from smbdirect_socket.rdma import Disconnected, RdmaError
from tests.test_trio_socket import connected_pair, framed


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.EAGAIN, BlockingIOError),
        (errno.ETIMEDOUT, TimeoutError),
        (errno.ECONNREFUSED, ConnectionRefusedError),
        (errno.EPIPE, BrokenPipeError),
        (errno.EINVAL, OSError),
    ],
)
def test_an_errno_becomes_the_stdlib_class(code: int, kind: type[OSError]) -> None:
    error = socket_error(code, "what happened")
    assert type(error) is kind and error.errno == code and error.strerror == "what happened"
    assert socket_error(code).strerror  # the system's words when none are given


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (RdmaError(errno.ECONNRESET, "peer reset"), ConnectionResetError, errno.ECONNRESET),
        (Disconnected(errno.ECONNRESET, "peer closed"), ConnectionResetError, errno.ECONNRESET),
        (RdmaError(errno.ECONNREFUSED, "rejected"), ConnectionRefusedError, errno.ECONNREFUSED),
        (RemoteProtocolError("credit overrun"), ConnectionAbortedError, errno.ECONNABORTED),
        (LocalProtocolError("closed locally", errno=errno.EPIPE), BrokenPipeError, errno.EPIPE),
        (PDUError("Parameters", "length", "must be 64 bytes"), ConnectionAbortedError, errno.ECONNABORTED),
        (ValueError("anything else"), ConnectionAbortedError, errno.ECONNABORTED),
    ],
)
def test_protocol_and_engine_errors_carry_their_errno(error: Exception, kind: type[OSError], code: int) -> None:
    translated = socket_error(error)
    assert type(translated) is kind and translated.errno == code
    assert str(error.args[-1]) in str(translated)


def test_the_stdlib_errors_pass_through() -> None:
    for error in (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), stdlib_socket.gaierror(-2, "unknown")):
        assert socket_error(error) is error


async def test_a_closed_peer_gives_the_stdlib_exceptions() -> None:
    client, server = await connected_pair()
    server.close()
    with pytest.raises(OSError) as info, trio.fail_after(10):
        while True:
            await client.send(framed(b"x" * 1000))
    assert type(info.value).__module__ == "builtins"  # never the engine's own classes
    assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)
    client.close()
