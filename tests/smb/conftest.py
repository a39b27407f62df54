"""A real Samba smbd and the gateway in front of it, shared by the SMB client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smbdirect_socket.smb.gateway import Gateway, gateway_thread
from smbdirect_socket.smb.samba import SambaServer, samba_available, samba_processes, samba_server


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    reason = samba_available()
    if reason is not None:
        pytest.skip(reason)
    with samba_server() as server:
        yield server
    left = samba_processes(server)
    assert not left, f"processes of the stopped Samba still run: {left}"


@pytest.fixture(scope="session")
def gateway(samba: SambaServer) -> Iterator[tuple[Gateway, tuple[str, int]]]:
    relay = Gateway(samba.address)
    with gateway_thread(relay) as address:
        yield relay, address
