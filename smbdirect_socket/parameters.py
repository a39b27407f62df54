"""Connection parameters: the kernel's ``struct smbdirect_socket_parameters``.

One attrs class with every field of the kernel structure, Linux's defaults,
and the ranges [MS-SMBD] allows.  :meth:`Parameters.pack` and
:meth:`Parameters.unpack` use the kernel's packed layout in host byte order,
so the whole structure can travel through one socket option.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import attrs

from . import constants as c
from .errors import PDUError

__all__ = ["LARGE_MESSAGE_SIZE", "Parameters"]

#: 8 MiB of SMB2 READ or WRITE data (what Samba offers) and room for its headers.
LARGE_MESSAGE_SIZE = 8 * 1024 * 1024 + 64 * 1024
#: The fragment size two of this project's sockets use for large messages.
LARGE_FRAGMENT_SIZE = 64 * 1024


def _between(low: int, high: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be in [{low}, {high}], got {value!r}")

    return check


_U32 = 0xFFFFFFFF


def _check_flags(_instance: object, _attribute: object, value: int) -> None:
    if not isinstance(value, int) or value & ~c.SMBDIRECT_FLAG_PORT_RANGE_MASK or value < 0:
        raise ValueError(f"flags may only hold PORT_RANGE_ONLY_IB/IW (0x3), got {value!r}")
    if value == c.SMBDIRECT_FLAG_PORT_RANGE_MASK:
        raise ValueError("flags cannot ask for both only-IB and only-iWARP ports")


@attrs.frozen
class Parameters:
    """Tunables of one SMB-Direct connection (sizes in bytes, times in ms).

    ``max_read_write_size`` 0 means "take the peer's"; ``keepalive_interval_msec``
    0 disables keepalives.  The ``max_*_send_size`` fields are upper bounds; the
    negotiated values are in :class:`smbdirect_socket.protocol.Negotiated`.
    """

    flags: int = attrs.field(default=0, validator=_check_flags)
    resolve_addr_timeout_msec: int = attrs.field(
        default=c.DEFAULT_RESOLVE_ADDR_TIMEOUT_MSEC, validator=_between(1, _U32)
    )
    resolve_route_timeout_msec: int = attrs.field(
        default=c.DEFAULT_RESOLVE_ROUTE_TIMEOUT_MSEC, validator=_between(1, _U32)
    )
    rdma_connect_timeout_msec: int = attrs.field(
        default=c.DEFAULT_RDMA_CONNECT_TIMEOUT_MSEC, validator=_between(1, _U32)
    )
    negotiate_timeout_msec: int = attrs.field(default=c.DEFAULT_NEGOTIATE_TIMEOUT_MSEC, validator=_between(1, _U32))
    initiator_depth: int = attrs.field(default=c.DEFAULT_INITIATOR_DEPTH, validator=_between(0, 255))
    responder_resources: int = attrs.field(default=c.DEFAULT_RESPONDER_RESOURCES, validator=_between(0, 255))
    recv_credit_max: int = attrs.field(default=c.DEFAULT_RECV_CREDIT_MAX, validator=_between(3, 0xFFFF))
    send_credit_target: int = attrs.field(default=c.DEFAULT_SEND_CREDIT_TARGET, validator=_between(3, 0xFFFF))
    max_send_size: int = attrs.field(default=c.DEFAULT_MAX_SEND_SIZE, validator=_between(c.MIN_RECEIVE_SIZE, _U32))
    max_fragmented_send_size: int = attrs.field(
        default=c.DEFAULT_MAX_FRAGMENTED_SEND_SIZE, validator=_between(c.MIN_FRAGMENTED_SIZE, _U32)
    )
    max_recv_size: int = attrs.field(default=c.DEFAULT_MAX_RECV_SIZE, validator=_between(c.MIN_RECEIVE_SIZE, _U32))
    max_fragmented_recv_size: int = attrs.field(
        default=c.DEFAULT_MAX_FRAGMENTED_RECV_SIZE, validator=_between(c.MIN_FRAGMENTED_SIZE, _U32)
    )
    max_read_write_size: int = attrs.field(default=c.DEFAULT_MAX_READ_WRITE_SIZE, validator=_between(0, _U32))
    max_frmr_depth: int = attrs.field(default=c.DEFAULT_MAX_FRMR_DEPTH, validator=_between(1, _U32))
    keepalive_interval_msec: int = attrs.field(default=c.DEFAULT_KEEPALIVE_INTERVAL_MSEC, validator=_between(0, _U32))
    keepalive_timeout_msec: int = attrs.field(default=c.DEFAULT_KEEPALIVE_TIMEOUT_MSEC, validator=_between(1, _U32))

    #: The kernel's ``__packed`` layout, host byte order: 64 bytes.
    layout: ClassVar = struct.Struct("=Q4I4H8I")

    def pack(self) -> bytes:
        """The kernel's 64-byte ``struct smbdirect_socket_parameters``."""
        return self.layout.pack(*attrs.astuple(self))

    @classmethod
    def unpack(cls, buffer: bytes | bytearray | memoryview) -> Parameters:
        """Decode the kernel layout; a bad size or value raises an error naming it."""
        if len(buffer) != cls.layout.size:
            raise PDUError("Parameters", "length", f"must be {cls.layout.size} bytes, got {len(buffer)}")
        return cls(*cls.layout.unpack(buffer))

    def replace(self, **changes: int) -> Parameters:
        """These parameters with the fields named changed (checked as in the constructor)."""
        return attrs.evolve(self, **changes)

    def with_large_messages(self, size: int = LARGE_MESSAGE_SIZE) -> Parameters:
        """These parameters with ``size``-byte messages and 64 KiB fragments.

        Linux reassembles at most 173910 bytes from 1364-byte fragments; SMB
        servers size READ and WRITE up to 8 MiB.  When both ends are this
        project's sockets (a client and the gateway), they can agree on
        messages that large, carried in 64 KiB fragments (64 receive buffers,
        4 MiB a connection), so such I/O travels inline and cheaply.
        """
        return self.replace(
            max_fragmented_send_size=size,
            max_fragmented_recv_size=size,
            max_send_size=LARGE_FRAGMENT_SIZE,
            max_recv_size=LARGE_FRAGMENT_SIZE,
            recv_credit_max=64,
            send_credit_target=64,
        )
