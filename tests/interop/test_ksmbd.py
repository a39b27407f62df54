"""Unmodified SMB clients over our blocking socket, straight to the kernel's ksmbd on siw.

No gateway: the software iWARP provider speaks MPA/DDP/RDMAP to siw, and
ksmbd's own SMB-Direct (fs/smb/server/transport_rdma.c) is the peer.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator

import pytest

from smbdirect_socket import SMBDirectSocket, create_connection, patch
from smbdirect_socket.smb_clients import io_limits

SIW = os.environ.get("RDMA_VM_SIW_ADDR", "")
USER = os.environ.get("RDMA_VM_SMB_USER", "")
PASSWORD = os.environ.get("RDMA_VM_SMB_PASS", "")
SHARE = os.environ.get("RDMA_VM_SMB_SHARE", "")
SIZE = 4 * 1024 * 1024

pytestmark = pytest.mark.skipif(not USER, reason="ksmbd is not running in this guest")


def connect_when_listening() -> SMBDirectSocket:
    deadline = time.monotonic() + 30
    while True:
        try:
            return create_connection((SIW, 5445), timeout=30)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def smbclient_session() -> Iterator[object]:
    import smbclient

    yield smbclient
    smbclient.reset_connection_cache()


def test_negotiated_with_ksmbd() -> None:
    """Both sides' parameters: ours as sent, ksmbd's as Linux sets them."""
    with connect_when_listening() as sock:
        info = sock.info()
        assert info.state == 1  # established
        assert info.max_send_size == 1364  # min(ours, ksmbd's max receive size)
        assert info.max_fragmented_send_size > 131072  # what ksmbd reassembles
        assert info.max_fragmented_receive_size == 173910  # what we told ksmbd
        assert 0 < info.send_credits <= 255
        limits = io_limits(sock)
        assert limits is not None and limits.read < 173910


def test_smbprotocol_writes_and_reads_back_four_mib(smbclient_session: object) -> None:
    import smbclient

    connect_when_listening().close()
    data = os.urandom(SIZE)
    with patch(ports=[5445]) as patched:
        smbclient.register_session(SIW, username=USER, password=PASSWORD, port=5445)
        path = rf"\\{SIW}\{SHARE}\smbprotocol.bin"
        with smbclient.open_file(path, mode="wb", port=5445) as remote:
            remote.write(data)
        with smbclient.open_file(path, mode="rb", port=5445) as remote:
            back = remote.read()
        assert list(patched.route.sockets), "the connection did not ride SMB-Direct"
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


def test_impacket_lists_shares_and_reads_a_file() -> None:
    from impacket.smbconnection import SMBConnection

    connect_when_listening().close()
    content = os.urandom(SIZE // 2 + 5)
    with patch(ports=[5445]):
        connection = SMBConnection(SIW, SIW, sess_port=5445, timeout=60)
        connection.login(USER, PASSWORD)
        assert SHARE in [share["shi1_netname"][:-1] for share in connection.listShares()]
        connection.putFile(SHARE, "impacket.bin", io.BytesIO(content).read)
        received = io.BytesIO()
        connection.getFile(SHARE, "impacket.bin", received.write)
        connection.logoff()
        connection.close()
    assert received.getvalue() == content
