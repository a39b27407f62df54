"""Unmodified smbprotocol and impacket over SMB-Direct, through the gateway to Samba."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator

import pytest
import smbclient
from impacket.smbconnection import SMBConnection

from smbdirect_socket import Parameters, patch
from smbdirect_socket.smb.clients import io_limits
from smbdirect_socket.smb.gateway import Gateway
from smbdirect_socket.smb.samba import SambaServer

FOUR_MIB = 4 * 1024 * 1024


@pytest.fixture(autouse=True)
def fresh_smbclient() -> Iterator[None]:
    yield
    smbclient.reset_connection_cache()


def smbprotocol_copy(samba: SambaServer, address: tuple[str, int], name: str) -> bytes:
    data = os.urandom(FOUR_MIB)
    host, port = address
    smbclient.register_session(host, username=samba.user, password=samba.password, port=port)
    path = rf"\\{host}\{samba.share}\{name}"
    with smbclient.open_file(path, mode="wb", port=port) as remote:
        remote.write(data)
    with smbclient.open_file(path, mode="rb", port=port) as remote:
        assert hashlib.sha256(remote.read()).digest() == hashlib.sha256(data).digest()
    return data


def test_smbprotocol_with_large_messages(samba: SambaServer, gateway: tuple[Gateway, tuple[str, int]]) -> None:
    relay, address = gateway
    served = relay.served
    with patch(ports=[address[1]], parameters=Parameters().with_large_messages()):
        data = smbprotocol_copy(samba, address, "large.bin")
    assert (samba.path / "large.bin").read_bytes() == data
    assert relay.served > served  # it really went through SMB-Direct


def test_smbprotocol_sizes_fitted_to_linux_defaults(
    samba: SambaServer, gateway: tuple[Gateway, tuple[str, int]]
) -> None:
    """With the kernel's default 173910-byte reassembly the client's sizes are clamped."""
    _, address = gateway
    with patch(ports=[address[1]]):
        data = smbprotocol_copy(samba, address, "linux-sizes.bin")
        connection = next(iter(smbclient._pool._SMB_CONNECTIONS.values()))  # type: ignore[attr-defined]
        limits = io_limits(connection.transport._sock)
        assert limits is not None and limits.read == connection.max_read_size < 173910
    assert (samba.path / "linux-sizes.bin").read_bytes() == data


def test_impacket(samba: SambaServer, gateway: tuple[Gateway, tuple[str, int]]) -> None:
    relay, address = gateway
    content = os.urandom(3 * 1024 * 1024 + 17)
    (samba.path / "impacket.bin").write_bytes(content)
    served = relay.served
    with patch(ports=[address[1]]):
        connection = SMBConnection(address[0], address[0], sess_port=address[1], timeout=30)
        connection.login(samba.user, samba.password)
        shares = [share["shi1_netname"][:-1] for share in connection.listShares()]
        assert samba.share in shares
        received = io.BytesIO()
        connection.getFile(samba.share, "impacket.bin", received.write)
        connection.putFile(samba.share, "impacket-upload.bin", io.BytesIO(content[::-1]).read)
        connection.logoff()
        connection.close()
    assert received.getvalue() == content
    assert (samba.path / "impacket-upload.bin").read_bytes() == content[::-1]
    assert relay.served > served
