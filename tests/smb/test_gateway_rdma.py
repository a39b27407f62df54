"""SMB2 READ and WRITE with Channel RDMA_V1(_INVALIDATE) through the gateway to Samba.

The client is smbprotocol's low-level API over our socket, unsigned (SMB
clients offload only unsigned I/O) on SMB 3.0.2; its READ and WRITE carry Buffer
Descriptor V1 lists of buffers registered with the socket's RDMA API, as
cifs.ko's do.  The gateway RDMA-reads the WRITE data, RDMA-writes the READ
data and answers the READ with DataLength 0 and DataRemaining n.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException
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

from smbdirect_socket import BufferDescriptorV1, Parameters, SMBDirectSocket, patch
from smbdirect_socket.gateway import Gateway
from smbdirect_socket.samba import SambaServer

SIZE = 1024 * 1024


class Client:
    def __init__(self, samba: SambaServer, address: tuple[str, int], name: str) -> None:
        host, port = address
        self.connection = Connection(uuid.uuid4(), host, port, require_signing=False)
        self.connection.connect(Dialects.SMB_3_0_2)  # 3.1.1 signs every tree connect
        self.session = Session(self.connection, samba.user, samba.password, require_encryption=False)
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{host}\{samba.share}")
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


@pytest.fixture
def client(samba: SambaServer, gateway: tuple[Gateway, tuple[str, int]]) -> Iterator[Client]:
    _, address = gateway
    with patch(ports=[address[1]], parameters=Parameters().with_large_messages()):
        client = Client(samba, address, f"rdma-{uuid.uuid4().hex[:8]}.bin")
        yield client
        client.close()


@pytest.mark.parametrize(
    "channel", [ReadWriteChannel.SMB2_CHANNEL_RDMA_V1, ReadWriteChannel.SMB2_CHANNEL_RDMA_V1_INVALIDATE]
)
def test_write_and_read_by_rdma(
    client: Client, samba: SambaServer, gateway: tuple[Gateway, tuple[str, int]], channel: ReadWriteChannel
) -> None:
    data = os.urandom(SIZE)
    reads_before = client.sock.info().rdma_reads
    assert client.rdma_write(data, channel) == SIZE
    assert (samba.path / client.file.file_name).read_bytes() == data
    sink = bytearray(SIZE)
    response, registration = client.rdma_read(sink, channel)
    assert response["data_length"].get_value() == 0  # no inline data
    assert response["data_remaining"].get_value() == SIZE  # it went by RDMA
    assert sink == data
    # _INVALIDATE: the response came as a send with invalidate of our token.
    assert registration.region.valid == (channel == ReadWriteChannel.SMB2_CHANNEL_RDMA_V1)
    info = client.sock.info()
    assert info.rdma_reads == reads_before  # the gateway did the RDMA, not us
    assert gateway[0].rdma_read_bytes >= SIZE and gateway[0].rdma_write_bytes >= SIZE
    assert info.messages_sent < 20  # 1 MiB each way, yet only small messages


def test_descriptors_shorter_than_the_write_get_an_error(client: Client) -> None:
    data = os.urandom(8192)
    registration = client.sock.register_buffer(data)
    short = BufferDescriptorV1(registration.descriptors[0].offset, registration.descriptors[0].token, 4096)
    with pytest.raises(SMBResponseException) as info:
        client.rdma_write(data, ReadWriteChannel.SMB2_CHANNEL_RDMA_V1, BufferDescriptorV1.pack_list([short]))
    assert info.value.status == 0xC000000D  # STATUS_INVALID_PARAMETER, as a server answers
    # The connection carries on.
    assert client.rdma_write(data, ReadWriteChannel.SMB2_CHANNEL_RDMA_V1) == 8192


def test_forged_token_ends_that_connection_only(
    samba: SambaServer, gateway: tuple[Gateway, tuple[str, int]], client: Client
) -> None:
    """The gateway's RDMA read of a token we never registered makes our engine
    terminate the connection (RC semantics); other clients carry on."""
    forged = BufferDescriptorV1.pack_list([BufferDescriptorV1(0x1000, 0xBADBAD, 4096)])
    with pytest.raises(SMBConnectionClosed):
        client.rdma_write(bytes(4096), ReadWriteChannel.SMB2_CHANNEL_RDMA_V1, forged)
    assert client.sock.info().state == 7  # closed
    _, address = gateway
    other = Client(samba, address, f"rdma-{uuid.uuid4().hex[:8]}.bin")
    assert other.rdma_write(b"still serving" * 400, ReadWriteChannel.SMB2_CHANNEL_RDMA_V1) == 5200
    other.close()
