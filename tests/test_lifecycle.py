"""The socket lifecycle: one state, its transitions, and the kernel's errno for a refused call."""

from __future__ import annotations

import errno

import pytest
import trio

from smbdirect_socket import options as opt
from smbdirect_socket.connection import Connection
from smbdirect_socket.lifecycle import SocketState, transition
from smbdirect_socket.trio import socket
from tests.test_trio_socket import connected_pair, listening

S = SocketState


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.NEW, "bind", S.BOUND),
        (S.NEW, "connect", S.CONNECTING),
        (S.BOUND, "connect", S.CONNECTING),
        (S.BOUND, "listen", S.LISTENING),
        (S.LISTENING, "listen", S.LISTENING),
        (S.CONNECTING, "connected", S.CONNECTED),
        (S.CONNECTING, "connect failed", S.NEW),
        (S.NEW, "accepted", S.CONNECTED),
        (S.CONNECTED, "shutdown", S.SHUT_DOWN),
        *((state, "close", S.CLOSED) for state in SocketState),
    ],
)
def test_transitions(state: SocketState, event: str, after: SocketState) -> None:
    assert transition(state, event) is after


@pytest.mark.parametrize(
    ("state", "event", "code"),
    [
        (S.CONNECTING, "connect", errno.EALREADY),
        (S.CONNECTED, "connect", errno.EISCONN),
        (S.SHUT_DOWN, "connect", errno.EISCONN),
        (S.LISTENING, "connect", errno.EINVAL),
        (S.BOUND, "bind", errno.EINVAL),
        (S.CONNECTED, "bind", errno.EINVAL),
        (S.NEW, "listen", errno.EDESTADDRREQ),
        (S.CONNECTED, "listen", errno.EINVAL),
        (S.NEW, "shutdown", errno.ENOTCONN),
        (S.LISTENING, "shutdown", errno.ENOTCONN),
        *((S.CLOSED, event, errno.EBADF) for event in ("bind", "connect", "listen", "shutdown")),
    ],
)
def test_refused_calls_get_the_kernels_errno(state: SocketState, event: str, code: int) -> None:
    with pytest.raises(OSError) as info:
        transition(state, event)
    assert info.value.errno == code


def test_the_option_codes_derive_from_the_states() -> None:
    assert {state.value: state.code() for state in SocketState} == opt.STATE_CODES
    assert (S.CONNECTED.code(), S.CONNECTED.code(connection_up=False), S.LISTENING.code()) == (1, 7, 10)


async def test_a_socket_through_its_life() -> None:
    sock = socket()
    assert "state=new" in repr(sock) and sock.info().state == 0
    listener = await listening()
    assert "state=listening" in repr(listener) and listener.info().state == 10
    client, server = await connected_pair()
    assert "state=established" in repr(client) and client.info().state == 1
    client.shutdown(0)
    assert "state=shut down" in repr(client) and client.info().state == 7 and client.did_shutdown_SHUT_WR
    for each in (sock, listener, client, server):
        each.close()
        assert "state=closed" in repr(each) and each.fileno() == -1


async def test_a_cancelled_connect_leaves_the_socket_new() -> None:
    with trio.socket.socket() as silent:  # takes TCP connections and never answers MPA
        await silent.bind(("127.0.0.1", 0))
        silent.listen()
        sock = socket()
        with trio.move_on_after(0.2):
            await sock.connect(silent.getsockname())
        assert "state=new" in repr(sock)
        with pytest.raises(OSError) as info, trio.fail_after(10):
            await sock.connect(silent.getsockname())  # tried again: not EALREADY
        assert info.value.errno == errno.ETIMEDOUT
        sock.close()


def test_connections_the_loop_leaves_open_are_disconnected_when_it_ends() -> None:
    """trio.run returns while connections are up, or a moment after a close: each
    is still disconnected (its wire closed), not left to the garbage collector,
    where a verbs queue pair would keep its device from being removed."""

    async def main() -> list[int]:
        closed_client, closed_server = await connected_pair()
        open_client, open_server = await connected_pair()
        closed_client.close()  # returning at once: its background task is still running
        descriptors = [s.connection.qp.fileno() for s in (closed_server, open_client, open_server)]
        assert all(d >= 0 for d in descriptors)
        connections.extend(s.connection for s in (closed_client, closed_server, open_client, open_server))
        return descriptors

    connections: list[Connection] = []
    trio.run(main)
    assert [c.qp.fileno() for c in connections] == [-1, -1, -1, -1]
