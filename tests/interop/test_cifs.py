"""The Linux kernel's SMB client, cifs.ko, mounts through our gateway over siw.

cifs.ko speaks SMB-Direct on siw0 to the gateway (software iWARP provider),
which relays SMB2 to ksmbd's TCP listener and does cifs.ko's RDMA channel
I/O itself: WRITE data is RDMA-read from cifs.ko's registered pages, READ
data RDMA-written into them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbdirect_socket.gateway import Gateway, gateway_thread

SIW = os.environ.get("RDMA_VM_SIW_ADDR", "")
USER = os.environ.get("RDMA_VM_SMB_USER", "")
PASSWORD = os.environ.get("RDMA_VM_SMB_PASS", "")
SHARE = os.environ.get("RDMA_VM_SMB_SHARE", "")
SHARE_PATH = Path("/run/smbdirect-vm/share")
GATEWAY_PORT = 5446  # ksmbd's own SMB-Direct listener has 5445

pytestmark = pytest.mark.skipif(not USER, reason="ksmbd is not running in this guest")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, Gateway]]:
    gateway = Gateway(("127.0.0.1", 445))  # ksmbd over TCP
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with gateway_thread(gateway, (SIW, GATEWAY_PORT)):
        options = f"rdma,vers=3.1.1,port={GATEWAY_PORT},username={USER},password={PASSWORD},cache=none"
        result = subprocess.run(
            ["mount", "-t", "cifs", f"//{SIW}/{SHARE}", str(mountpoint), "-o", options],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, (
            result.stderr + subprocess.run(["dmesg"], capture_output=True, text=True).stdout[-3000:]
        )
        try:
            yield mountpoint, gateway
        finally:
            subprocess.run(["umount", str(mountpoint)], timeout=120)


def test_cifs_writes_and_reads_back_eight_mib(mounted: tuple[Path, Gateway]) -> None:
    mountpoint, gateway = mounted
    data = os.urandom(8 * 1024 * 1024)
    (mountpoint / "cifs.bin").write_bytes(data)
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    assert (mountpoint / "cifs.bin").read_bytes() == data
    assert (SHARE_PATH / "cifs.bin").read_bytes() == data  # what ksmbd stored
    debug = Path("/proc/fs/cifs/DebugData").read_text()
    assert "SMBDirect" in debug or "RDMA" in debug, debug
    assert gateway.served >= 1
