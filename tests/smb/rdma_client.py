"""An SMB2 client that does READ and WRITE with Channel RDMA_V1(_INVALIDATE).

The requests are :mod:`smbdirect_socket.smb.rdma_io`'s, as cifs.ko sends
them; each registers its buffer with the socket's RDMA API for the call.
"""

from __future__ import annotations

import contextlib
from typing import Any

from smbprotocol.exceptions import SMBConnectionClosed
from smbprotocol.open import ReadWriteChannel, SMB2ReadResponse, SMB2WriteResponse

from smbdirect_socket import SMBDirectSocket
from smbdirect_socket.smb.rdma_io import Server, charged_for, open_file, rdma_read_request, rdma_write_request

__all__ = ["Client", "Server"]


class Client:
    def __init__(self, server: Server, address: tuple[str, int], name: str) -> None:
        self.connection, self.session, self.tree, self.file = open_file(server, address, name)
        self.sock: SMBDirectSocket = self.connection.transport._sock
        assert isinstance(self.sock, SMBDirectSocket)

    def call(self, request: Any, payload: int = 0) -> Any:
        with charged_for(self.connection, payload) if payload else contextlib.nullcontext():
            sent = self.connection.send(request, self.session.session_id, self.tree.tree_connect_id)
        return self.connection.receive(sent)

    def rdma_write(self, data: bytes, channel: ReadWriteChannel, descriptors: bytes | None = None) -> int:
        registration = self.sock.register_buffer(data)
        request = rdma_write_request(self.file.file_id, 0, len(data), channel, descriptors or registration.pack())
        response = SMB2WriteResponse()
        response.unpack(self.call(request, len(data))["data"].get_value())
        self.sock.deregister_buffer(registration)
        return int(response["count"].get_value())

    def rdma_read(self, into: bytearray, channel: ReadWriteChannel) -> tuple[SMB2ReadResponse, Any]:
        registration = self.sock.register_buffer(into, writable=True)
        request = rdma_read_request(self.file.file_id, 0, len(into), channel, registration.pack())
        response = SMB2ReadResponse()
        response.unpack(self.call(request)["data"].get_value())
        return response, registration

    def close(self) -> None:
        with contextlib.suppress(SMBConnectionClosed):  # a test may have killed it
            self.file.close()
        self.connection.disconnect()
