"""smbdirect-socket: the Linux kernel's IPPROTO_SMBDIRECT socket, for Python.

SMB-Direct ([MS-SMBD]) is the credit-based message protocol that carries SMB3
over RDMA.  This package gives it the socket interface the kernel keeps for
in-kernel users: ``socket(AF_INET, SOCK_STREAM, IPPROTO_SMBDIRECT)``.

The names below are loaded on first use, so importing a sans-IO module
(``smbdirect_socket.pdu``, ``.protocol``, ...) does not import trio, the
sockets or the RDMA engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .options import SMBDIRECT_BYTESTREAM
    from .parameters import Parameters
    from .patching import patch
    from .pdu import BufferDescriptorV1, DataTransferMessage, NegotiateRequest, NegotiateResponse
    from .protocol import Role, SMBDirectProtocol, State

# Each public name and the module that defines it.
_SOURCES = {
    "IPPROTO_SMBDIRECT": "constants",
    "SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE": "constants",
    "SMBDIRECT_IWARP_PORT": "constants",
    "SMBDIRECT_PORT": "constants",
    "SMBDIRECT_VERSION": "constants",
    "SOL_SMBDIRECT": "constants",
    "SMBDIRECT_BYTESTREAM": "options",
    "BufferDescriptorV1": "pdu",
    "DataTransferMessage": "pdu",
    "LocalProtocolError": "errors",
    "NegotiateRequest": "pdu",
    "NegotiateResponse": "pdu",
    "PDUError": "errors",
    "Parameters": "parameters",
    "ProtocolError": "errors",
    "RemoteProtocolError": "errors",
    "Role": "protocol",
    "SMBDirectProtocol": "protocol",
    "SMBDirectSocket": "blocking",
    "State": "protocol",
    "create_connection": "blocking",
    "create_server": "blocking",
    "patch": "patching",
    "socket": "blocking",
}

__all__ = [
    "IPPROTO_SMBDIRECT",
    "SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE",
    "SMBDIRECT_BYTESTREAM",
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


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
