"""SMB2 READ and WRITE with Channel RDMA_V1(_INVALIDATE), built with smbprotocol as cifs.ko sends them.

smbprotocol's low-level API, unsigned (SMB clients offload only unsigned
I/O) on SMB 3.0.2.  An RDMA READ or WRITE carries the Buffer Descriptor V1
list of buffers the client registered with the socket's RDMA API
(:meth:`~smbdirect_socket.SMBDirectSocket.register_buffer`), and is charged
credits for the bytes in them.  The tests and the gateway benchmark drive
the gateway and ksmbd with these; needs smbprotocol.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from smbprotocol.connection import Connection, Dialects
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ReadWriteChannel,
    ShareAccess,
    SMB2ReadRequest,
    SMB2WriteRequest,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

__all__ = ["Server", "charged_for", "open_file", "rdma_read_request", "rdma_write_request"]


class Server(Protocol):
    """Where to log in: a Samba server of the tests, ksmbd in the guest."""

    @property
    def user(self) -> str: ...

    @property
    def password(self) -> str: ...

    @property
    def share(self) -> str: ...


def open_file(server: Server, address: tuple[str, int], name: str) -> tuple[Connection, Session, TreeConnect, Open]:
    """Log in unsigned on SMB 3.0.2 (3.1.1 signs every tree connect) and open ``name`` for reading and writing."""
    host, port = address
    connection = Connection(uuid.uuid4(), host, port, require_signing=False)
    connection.connect(Dialects.SMB_3_0_2)
    session = Session(connection, server.user, server.password, require_encryption=False)
    session.connect()
    tree = TreeConnect(session, rf"\\{host}\{server.share}")
    tree.connect()
    handle = Open(tree, name)
    handle.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        0,
        ShareAccess.FILE_SHARE_READ,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    return connection, session, tree, handle


def rdma_write_request(
    file_id: bytes, offset: int, length: int, channel: ReadWriteChannel, descriptors: bytes
) -> SMB2WriteRequest:
    """A WRITE of ``length`` bytes the server takes from the buffers ``descriptors`` names."""
    request = SMB2WriteRequest()
    request["offset"] = offset
    request["file_id"] = file_id
    request["channel"] = channel
    request["remaining_bytes"] = length  # Length 0: the data is in the client's buffers
    request["data_offset"] = 0  # and no inline data at all, as cifs.ko sends it (ksmbd insists)
    request["buffer_channel_info"] = descriptors
    return request


def rdma_read_request(
    file_id: bytes, offset: int, length: int, channel: ReadWriteChannel, descriptors: bytes
) -> SMB2ReadRequest:
    """A READ of ``length`` bytes the server puts into the buffers ``descriptors`` names."""
    request = SMB2ReadRequest()
    request["length"] = length
    request["offset"] = offset
    request["file_id"] = file_id
    request["channel"] = channel
    request["buffer"] = descriptors
    return request


@contextlib.contextmanager
def charged_for(connection: Any, payload: int) -> Iterator[None]:
    """Charge the requests sent meanwhile for ``payload`` bytes in the client's buffers, as
    cifs.ko does (smbprotocol charges for inline bytes only)."""
    charge = connection._calculate_credit_charge
    connection._calculate_credit_charge = lambda message: (payload - 1) // 65536 + 1
    try:
        yield
    finally:
        connection._calculate_credit_charge = charge
