"""A private Samba ``smbd`` on a loopback port, for tests, the demo and benchmarks.

Samba has no SMB-Direct; the gateway (:mod:`smbdirect_socket.smb.gateway`) puts
it behind one.  :func:`samba_server` starts ``smbd`` from a temporary
directory with its own configuration, user and share, waits until it
listens, and stops it afterwards.  It needs Debian's ``samba`` package and
root (smbd switches users for file access).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = ["SambaServer", "samba_available", "samba_server"]

_CONFIG = """\
[global]
    smb ports = {port}
    interfaces = lo
    bind interfaces only = yes
    disable netbios = yes
    server role = standalone server
    private dir = {state}/private
    lock directory = {state}/lock
    state directory = {state}/state
    cache directory = {state}/cache
    pid directory = {state}/pid
    ncalrpc dir = {state}/ncalrpc
    log file = {state}/log.%m
    passdb backend = tdbsam:{state}/passdb.tdb
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes

[{share}]
    path = {path}
    read only = no
    force user = root
"""


@attrs.frozen
class SambaServer:
    host: str
    port: int
    user: str
    password: str
    share: str
    path: Path  #: the share's directory on this machine

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


def samba_available() -> str | None:
    """None when :func:`samba_server` can run here, else why not."""
    if shutil.which("smbd", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        return "Samba's smbd is not installed (Debian package 'samba')"
    if os.geteuid() != 0:
        return "smbd must be started by root"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(address: tuple[str, int], process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smbd exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"smbd did not listen on {address[0]}:{address[1]} within {timeout} s")


@contextlib.contextmanager
def samba_server(share: str = "share", password: str = "smbdirect-Pa55", timeout: float = 30) -> Iterator[SambaServer]:
    """Run smbd on 127.0.0.1 with one writable share; yields how to reach it."""
    reason = samba_available()
    if reason is not None:
        raise RuntimeError(reason)
    smbd = shutil.which("smbd", path=os.environ.get("PATH", "") + ":/usr/sbin")
    assert smbd is not None
    state = Path(tempfile.mkdtemp(prefix="smbdirect-samba-"))
    try:
        path = state / "share"
        for directory in ("private", "lock", "state", "cache", "pid", "ncalrpc", "share"):
            (state / directory).mkdir()
        port = _free_port()
        config = state / "smb.conf"
        config.write_text(_CONFIG.format(port=port, state=state, share=share, path=path))
        subprocess.run(
            ["smbpasswd", "-c", str(config), "-s", "-a", "root"],
            input=f"{password}\n{password}\n".encode(),
            check=True,
            capture_output=True,
        )
        with open(state / "smbd.out", "wb") as log:
            process = subprocess.Popen(
                [smbd, "-s", str(config), "--foreground", "--no-process-group", "--debug-stdout"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # smbd signals its whole process group when it stops
            )
        try:
            _wait_listening(("127.0.0.1", port), process, timeout)
            yield SambaServer("127.0.0.1", port, "root", password, share, path)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(state, ignore_errors=True)
