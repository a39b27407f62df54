"""A socket's lifecycle: its states and every transition, in one table.

Like h11's ``_state.py``: a socket is in exactly one :class:`SocketState`,
and :func:`transition` is the only way to leave it.  A call the state does
not allow gets the errno the kernel's socket gives for it (``EISCONN``,
``EALREADY``, ``EBADF``, ...), so the sockets need no checks of their own.

The connection underneath has its own state (it may end at any time, when
the peer leaves); a connected socket reports ``established`` while its
connection is up and ``closed`` once it ended.
"""

from __future__ import annotations

import enum
import errno

from .errors import socket_error

__all__ = ["SocketState", "transition"]


class SocketState(enum.Enum):
    """Where a socket is in its life; the value is what ``repr`` shows."""

    NEW = "new"
    BOUND = "bound"  # an address to listen on or connect from
    CONNECTING = "connecting"  # RDMA connect and SMB-Direct negotiation under way
    CONNECTED = "established"  # a connection, up or since ended
    SHUT_DOWN = "shut down"  # the connection was ended by shutdown()
    LISTENING = "listening"
    CLOSED = "closed"  # close(): the socket is gone

    def code(self, connection_up: bool = True) -> int:
        """The ``state`` that ``SMBDIRECT_INFO`` reports: TCP's numbers (1
        established, 2 SYN_SENT, 7 closed, 10 listening), 0 for a socket that
        has not connected or listened yet."""
        if self is SocketState.CONNECTED and not connection_up:
            return _CODES[SocketState.CLOSED]
        return _CODES[self]


_CODES = {
    SocketState.NEW: 0,
    SocketState.BOUND: 0,
    SocketState.CONNECTING: 2,
    SocketState.CONNECTED: 1,
    SocketState.SHUT_DOWN: 7,
    SocketState.LISTENING: 10,
    SocketState.CLOSED: 7,
}

_S = SocketState
#: (state, event) -> the next state.  Any pair not here is refused.
_TRANSITIONS: dict[tuple[SocketState, str], SocketState] = {
    (_S.NEW, "bind"): _S.BOUND,
    (_S.NEW, "connect"): _S.CONNECTING,
    (_S.BOUND, "connect"): _S.CONNECTING,  # from the bound address
    (_S.BOUND, "listen"): _S.LISTENING,
    (_S.LISTENING, "listen"): _S.LISTENING,  # again: nothing changes
    (_S.CONNECTING, "connected"): _S.CONNECTED,
    (_S.CONNECTING, "connect failed"): _S.NEW,  # the error waits in SO_ERROR; connect may be tried again
    (_S.NEW, "accepted"): _S.CONNECTED,  # a socket accept() made
    (_S.CONNECTED, "shutdown"): _S.SHUT_DOWN,  # any how: there is no half-close
    (_S.SHUT_DOWN, "shutdown"): _S.SHUT_DOWN,
    **{(state, "close"): _S.CLOSED for state in SocketState},
}

#: Why a call is refused, by event, for the states that have a reason of their own.
_REFUSALS: dict[str, dict[SocketState, tuple[int, str]]] = {
    "bind": {
        state: (errno.EINVAL, "socket is already bound")
        for state in (_S.BOUND, _S.CONNECTING, _S.CONNECTED, _S.SHUT_DOWN, _S.LISTENING)
    },
    "connect": {
        _S.CONNECTING: (errno.EALREADY, "a connect is already in progress"),
        _S.CONNECTED: (errno.EISCONN, "socket is already connected"),
        _S.SHUT_DOWN: (errno.EISCONN, "socket is already connected"),
        _S.LISTENING: (errno.EINVAL, "a listening socket cannot connect"),
    },
    "listen": {
        _S.NEW: (errno.EDESTADDRREQ, "bind() before listen()"),
        **{
            state: (errno.EINVAL, "a connected socket cannot listen")
            for state in (_S.CONNECTING, _S.CONNECTED, _S.SHUT_DOWN)
        },
    },
}


def transition(state: SocketState, event: str) -> SocketState:
    """The state after ``event`` (a call, or the end of a connect), or the kernel's error."""
    following = _TRANSITIONS.get((state, event))
    if following is not None:
        return following
    if state is SocketState.CLOSED:
        raise socket_error(errno.EBADF, "socket is closed")
    code, message = _REFUSALS.get(event, {}).get(state, (errno.ENOTCONN, "socket is not connected"))
    raise socket_error(code, message)
