"""Protocol numbers, wire constants and the Linux defaults of SMB-Direct.

The socket-level numbers are those of the Linux kernel's in-kernel
``IPPROTO_SMBDIRECT`` socket; the wire constants come from [MS-SMBD] 2.2.
"""

from __future__ import annotations

import enum
from typing import Final

#: Third argument of ``socket(AF_INET or AF_INET6, SOCK_STREAM, ...)``.
IPPROTO_SMBDIRECT: Final = 257
#: Level of SMB-Direct control messages and of this project's socket options.
SOL_SMBDIRECT: Final = 289
#: The only cmsg type: ``_IOW('S', 0x20, u32 remote_token)``; sends the message
#: with "send with invalidate" of the peer's memory token.
SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE: Final = 0x40045320

#: SMB-Direct port on InfiniBand and RoCE.
SMBDIRECT_PORT: Final = 445
#: SMB-Direct port on iWARP (Linux clients try it first).
SMBDIRECT_IWARP_PORT: Final = 5445

#: The one protocol version [MS-SMBD] defines.
SMBDIRECT_VERSION: Final = 0x0100

#: Data transfer flag: the peer asks for a prompt reply (keepalive).
SMB_DIRECT_RESPONSE_REQUESTED: Final = 0x0001

#: Size of a Negotiate Request on the wire.
NEGOTIATE_REQUEST_SIZE: Final = 20
#: Size of a Negotiate Response on the wire.
NEGOTIATE_RESPONSE_SIZE: Final = 32
#: Size of a Data Transfer Message header without padding.
DATA_TRANSFER_HEADER_SIZE: Final = 20
#: Where Linux and Windows put the data of a Data Transfer Message.
DATA_TRANSFER_DATA_OFFSET: Final = 24
#: Size of a Buffer Descriptor V1.
BUFFER_DESCRIPTOR_V1_SIZE: Final = 16

#: Smallest MaxReceiveSize a peer may announce ([MS-SMBD] 3.1.5.6/3.1.5.7).
MIN_RECEIVE_SIZE: Final = 128
#: Smallest MaxFragmentedSize a peer may announce.
MIN_FRAGMENTED_SIZE: Final = 131072


class NTStatus(enum.IntEnum):
    """The NTSTATUS values a Negotiate Response carries."""

    SUCCESS = 0x00000000
    NOT_SUPPORTED = 0xC00000BB


# Linux defaults of ``struct smbdirect_socket_parameters`` (new kernel sockets).
DEFAULT_RESOLVE_ADDR_TIMEOUT_MSEC: Final = 5000
DEFAULT_RESOLVE_ROUTE_TIMEOUT_MSEC: Final = 5000
DEFAULT_RDMA_CONNECT_TIMEOUT_MSEC: Final = 5000
DEFAULT_NEGOTIATE_TIMEOUT_MSEC: Final = 120_000
DEFAULT_INITIATOR_DEPTH: Final = 1
DEFAULT_RESPONDER_RESOURCES: Final = 1
DEFAULT_RECV_CREDIT_MAX: Final = 255
DEFAULT_SEND_CREDIT_TARGET: Final = 255
DEFAULT_MAX_SEND_SIZE: Final = 1364
DEFAULT_MAX_FRAGMENTED_SEND_SIZE: Final = 1024 * 1024
DEFAULT_MAX_RECV_SIZE: Final = 1364
DEFAULT_MAX_FRAGMENTED_RECV_SIZE: Final = 1364 * 255 // 2  # 173910
DEFAULT_MAX_READ_WRITE_SIZE: Final = 0
#: What a server offers when max_read_write_size is 0 (ksmbd's "smbd max io size").
SERVER_MAX_READ_WRITE_SIZE: Final = 8 * 1024 * 1024
DEFAULT_MAX_FRMR_DEPTH: Final = 2048
DEFAULT_KEEPALIVE_INTERVAL_MSEC: Final = 120_000
DEFAULT_KEEPALIVE_TIMEOUT_MSEC: Final = 5000

#: ``flags``: use only the InfiniBand/RoCE port (445).
SMBDIRECT_FLAG_PORT_RANGE_ONLY_IB: Final = 0x1
#: ``flags``: use only the iWARP port (5445).
SMBDIRECT_FLAG_PORT_RANGE_ONLY_IW: Final = 0x2
SMBDIRECT_FLAG_PORT_RANGE_MASK: Final = 0x3
