"""``SOL_SMBDIRECT`` socket options: this project's extension.

The kernel's ``IPPROTO_SMBDIRECT`` socket defines no options yet (every
``setsockopt`` there fails with ``EOPNOTSUPP``), so these numbers are this
project's own.  There is one option per field of the kernel's
``struct smbdirect_socket_parameters`` (an ``int``), one for the whole
structure in the kernel's packed layout (64 bytes), one that switches
framing, and a read-only statistics option in the spirit of ``TCP_INFO``.

Parameters may be set before ``connect`` or ``listen`` (afterwards
``EISCONN``, or ``EINVAL`` on a listener) and are inherited by accepted
sockets.
"""

from __future__ import annotations

import struct
from typing import ClassVar

import attrs

from ._wire import COMPILED
from .lifecycle import SocketState
from .parameters import Parameters

__all__ = [
    "PARAMETER_OPTIONS",
    "SMBDIRECT_BYTESTREAM",
    "SMBDIRECT_INFO",
    "SMBDIRECT_PARAMETERS",
    "SocketInfo",
]

# One option per Parameters field, numbered in the kernel structure's order.
SMBDIRECT_FLAGS = 1
SMBDIRECT_RESOLVE_ADDR_TIMEOUT_MSEC = 2
SMBDIRECT_RESOLVE_ROUTE_TIMEOUT_MSEC = 3
SMBDIRECT_RDMA_CONNECT_TIMEOUT_MSEC = 4
SMBDIRECT_NEGOTIATE_TIMEOUT_MSEC = 5
SMBDIRECT_INITIATOR_DEPTH = 6
SMBDIRECT_RESPONDER_RESOURCES = 7
SMBDIRECT_RECV_CREDIT_MAX = 8
SMBDIRECT_SEND_CREDIT_TARGET = 9
SMBDIRECT_MAX_SEND_SIZE = 10
SMBDIRECT_MAX_FRAGMENTED_SEND_SIZE = 11
SMBDIRECT_MAX_RECV_SIZE = 12
SMBDIRECT_MAX_FRAGMENTED_RECV_SIZE = 13
SMBDIRECT_MAX_READ_WRITE_SIZE = 14
SMBDIRECT_MAX_FRMR_DEPTH = 15
SMBDIRECT_KEEPALIVE_INTERVAL_MSEC = 16
SMBDIRECT_KEEPALIVE_TIMEOUT_MSEC = 17
#: The whole ``struct smbdirect_socket_parameters`` (bytes, 64).
SMBDIRECT_PARAMETERS = 32
#: Read-only statistics, :class:`SocketInfo` layout (bytes).
SMBDIRECT_INFO = 33
#: 0 (default): the kernel's framing, a 4-byte length per message.
#: 1: a plain byte stream, for programs that are not length-framed.
SMBDIRECT_BYTESTREAM = 34

#: Option number -> Parameters field name.
PARAMETER_OPTIONS: dict[int, str] = {
    number: field.name for number, field in enumerate(attrs.fields(Parameters), start=SMBDIRECT_FLAGS)
}

#: The ``state`` numbers of :class:`SocketInfo`, by the name ``repr`` shows.
STATE_CODES: dict[str, int] = {state.value: state.code() for state in SocketState}


@attrs.frozen
class SocketInfo:
    """What ``getsockopt(SOL_SMBDIRECT, SMBDIRECT_INFO, SocketInfo.size)`` returns.

    ``state`` uses TCP's numbers (1 established, 7 closed, 10 listening, 2
    while RDMA connects and SMB-Direct negotiates), 0 before any of these.  Sizes are the
    negotiated ones (0 before negotiation); counters count since connect.
    ``compiled`` is 1 when the compiled wire core runs (``_wire.COMPILED``),
    0 on the pure-Python path.
    """

    state: int
    send_credits: int
    receive_credits: int
    receive_credit_target: int
    max_send_size: int
    max_receive_size: int
    max_fragmented_send_size: int
    max_fragmented_receive_size: int
    max_read_write_size: int
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    fragments_sent: int
    fragments_received: int
    keepalives_sent: int
    credit_messages_sent: int
    rdma_reads: int
    rdma_writes: int
    errors: int
    compiled: int = int(COMPILED)

    layout: ClassVar = struct.Struct("=9I11QI")
    size: ClassVar = layout.size

    def pack(self) -> bytes:
        """The option's bytes (:attr:`layout`)."""
        return self.layout.pack(*attrs.astuple(self))

    @classmethod
    def unpack(cls, buffer: bytes) -> SocketInfo:
        """Decode the option's bytes."""
        return cls(*cls.layout.unpack(buffer[: cls.size]))
