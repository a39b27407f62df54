"""The Linux kernel's SMB client, cifs.ko, mounts through our gateway over siw and rxe.

cifs.ko reaches an RDMA server on port 5445 (then 445) whatever port it is
given, and ksmbd holds 5445 on every RDMA device while it runs; so these tests
stop ksmbd (they run late in the boot) and put Samba, which has no
SMB-Direct, behind the gateway on 5445.  cifs.ko speaks SMB-Direct to the
gateway (on siw0 with the software iWARP provider, on rxe0 with the verbs
provider), which relays SMB2 to Samba over TCP and does cifs.ko's RDMA
channel I/O itself: WRITE data is RDMA-read from cifs.ko's registered pages,
READ data RDMA-written into them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbdirect_socket.rdma import get_provider
from smbdirect_socket.smb.gateway import Gateway, gateway_thread
from smbdirect_socket.smb.samba import SambaServer, samba_available, samba_server

SIW = os.environ.get("RDMA_VM_SIW_ADDR", "")
RXE = os.environ.get("RDMA_VM_RXE_ADDR", "")
KSMBD_CONTROL = os.environ.get("RDMA_VM_KSMBD_CONTROL", "")

pytestmark = [
    pytest.mark.skipif(not KSMBD_CONTROL, reason="ksmbd is not running in this guest"),
    pytest.mark.skipif(samba_available() is not None, reason=str(samba_available())),
    pytest.mark.last(order=1),  # it stops ksmbd
]


@pytest.fixture(params=[(SIW, "softiwarp"), (RXE, "verbs")], ids=["softiwarp-siw", "verbs-rxe"])
def mounted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Gateway, SambaServer]]:
    address, provider = request.param
    subprocess.run([KSMBD_CONTROL, "--shutdown"], timeout=60)  # it may be stopped already
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with samba_server(timeout=120) as samba:
        gateway = Gateway(samba.address, provider=get_provider(provider))
        with gateway_thread(gateway, (address, 5445)):
            options = f"rdma,vers=3.1.1,username={samba.user},password={samba.password}"
            result = subprocess.run(
                ["mount", "-t", "cifs", f"//{address}/{samba.share}", str(mountpoint), "-o", options],
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert result.returncode == 0, result.stderr
            try:
                yield mountpoint, gateway, samba
            finally:
                subprocess.run(["umount", str(mountpoint)], timeout=120)


def test_cifs_writes_and_reads_back_eight_mib(mounted: tuple[Path, Gateway, SambaServer]) -> None:
    mountpoint, gateway, samba = mounted
    data = os.urandom(8 * 1024 * 1024)
    (mountpoint / "cifs.bin").write_bytes(data)
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    assert (mountpoint / "cifs.bin").read_bytes() == data
    assert (samba.path / "cifs.bin").read_bytes() == data  # what Samba stored
    debug = Path("/proc/fs/cifs/DebugData").read_text()
    assert "SMBDirect" in debug or "RDMA" in debug, debug
    assert gateway.served >= 1  # through the gateway, not some other server
    # Channel I/O: the gateway RDMA-read what cifs.ko wrote and RDMA-wrote what it read.
    assert gateway.rdma_read_bytes >= len(data) and gateway.rdma_write_bytes >= len(data)
