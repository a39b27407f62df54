"""An SMB2 client that does READ and WRITE with Channel RDMA_V1(_INVALIDATE).

smbprotocol's low-level API over our socket, unsigned (SMB clients offload
only unsigned I/O) on SMB 3.0.2; its READ and WRITE carry Buffer Descriptor
V1 lists of buffers registered with the socket's RDMA API, as cifs.ko's do.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Protocol

from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import SMBConnectionClosed
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ReadWriteChannel,
    ShareAccess,
    SMB2ReadRequest,
    SMB2ReadResponse,
    SMB2WriteRequest,
    SMB2WriteResponse,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from smbdirect_socket import SMBDirectSocket

__all__ = ["Client", "Server"]


class Server(Protocol):
    """Where to log in: a Samba server of the tests, ksmbd in the guest."""

    user: str
    password: str
    share: str


class Client:
    def __init__(self, server: Server, address: tuple[str, int], name: str) -> None:
        host, port = address
        self.connection = Connection(uuid.uuid4(), host, port, require_signing=False)
        self.connection.connect(Dialects.SMB_3_0_2)  # 3.1.1 signs every tree connect
        self.session = Session(self.connection, server.user, server.password, require_encryption=False)
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{host}\{server.share}")
        self.tree.connect()
        self.file = Open(self.tree, name)
        self.file.create(
            ImpersonationLevel.Impersonation,
            FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
            0,
            ShareAccess.FILE_SHARE_READ,
            CreateDisposition.FILE_OVERWRITE_IF,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
        )
        self.sock: SMBDirectSocket = self.connection.transport._sock
        assert isinstance(self.sock, SMBDirectSocket)

    def call(self, request: Any, payload: int = 0) -> Any:
        connection = self.connection
        charge = connection._calculate_credit_charge
        if payload:  # an RDMA WRITE is charged for the bytes in its buffers, as cifs.ko does
            connection._calculate_credit_charge = lambda message: (payload - 1) // 65536 + 1
        try:
            sent = connection.send(request, self.session.session_id, self.tree.tree_connect_id)
        finally:
            connection._calculate_credit_charge = charge
        return connection.receive(sent)

    def rdma_write(self, data: bytes, channel: ReadWriteChannel, descriptors: bytes | None = None) -> int:
        registration = self.sock.register_buffer(data)
        request = SMB2WriteRequest()
        request["offset"] = 0
        request["file_id"] = self.file.file_id
        request["channel"] = channel
        request["remaining_bytes"] = len(data)  # Length 0: the data is in our buffer
        request["data_offset"] = 0  # and no inline data at all, as cifs.ko sends it (ksmbd insists)
        request["buffer_channel_info"] = descriptors or registration.pack()
        response = SMB2WriteResponse()
        response.unpack(self.call(request, len(data))["data"].get_value())
        self.sock.deregister_buffer(registration)
        return int(response["count"].get_value())

    def rdma_read(self, into: bytearray, channel: ReadWriteChannel) -> tuple[SMB2ReadResponse, Any]:
        registration = self.sock.register_buffer(into, writable=True)
        request = SMB2ReadRequest()
        request["length"] = len(into)
        request["offset"] = 0
        request["file_id"] = self.file.file_id
        request["channel"] = channel
        request["buffer"] = registration.pack()
        response = SMB2ReadResponse()
        response.unpack(self.call(request)["data"].get_value())
        return response, registration

    def close(self) -> None:
        with contextlib.suppress(SMBConnectionClosed):  # a test may have killed it
            self.file.close()
        self.connection.disconnect()
