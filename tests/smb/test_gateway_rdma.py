"""SMB2 READ and WRITE with Channel RDMA_V1(_INVALIDATE) through the gateway to Samba.

The client (:mod:`.rdma_client`) registers its buffers with the socket's RDMA
API and sends their Buffer Descriptor V1 lists, as cifs.ko does.  The gateway
RDMA-reads the WRITE data, RDMA-writes the READ data and answers the READ
with DataLength 0 and DataRemaining n.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException
from smbprotocol.open import ReadWriteChannel

from smbdirect_socket import BufferDescriptorV1, Parameters, patch
from smbdirect_socket.smb.gateway import Gateway
from smbdirect_socket.smb.samba import SambaServer

from .rdma_client import Client

SIZE = 1024 * 1024


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
