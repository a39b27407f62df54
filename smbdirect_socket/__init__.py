"""smbdirect-socket: the Linux kernel's IPPROTO_SMBDIRECT socket, for Python.

SMB-Direct ([MS-SMBD]) is the credit-based message protocol that carries SMB3
over RDMA.  This package gives it the socket interface the kernel keeps for
in-kernel users: ``socket(AF_INET, SOCK_STREAM, IPPROTO_SMBDIRECT)``.
"""

from .blocking import SMBDirectSocket, create_connection, create_server, socket
from .constants import (
    IPPROTO_SMBDIRECT,
    SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE,
    SMBDIRECT_IWARP_PORT,
    SMBDIRECT_PORT,
    SMBDIRECT_VERSION,
    SOL_SMBDIRECT,
)
from .errors import LocalProtocolError, PDUError, ProtocolError, RemoteProtocolError
from .parameters import Parameters
from .patching import patch
from .pdu import BufferDescriptorV1, DataTransferMessage, NegotiateRequest, NegotiateResponse
from .protocol import Role, SMBDirectProtocol, State

__all__ = [
    "IPPROTO_SMBDIRECT",
    "SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE",
    "SMBDIRECT_IWARP_PORT",
    "SMBDIRECT_PORT",
    "SMBDIRECT_VERSION",
    "SOL_SMBDIRECT",
    "BufferDescriptorV1",
    "DataTransferMessage",
    "LocalProtocolError",
    "NegotiateRequest",
    "NegotiateResponse",
    "PDUError",
    "Parameters",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "SMBDirectProtocol",
    "SMBDirectSocket",
    "State",
    "create_connection",
    "create_server",
    "patch",
    "socket",
]

__version__ = "0.1.0"
