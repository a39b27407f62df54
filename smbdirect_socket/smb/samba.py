"""A private Samba ``smbd`` on a loopback port, for tests, the demo and benchmarks.

Samba has no SMB-Direct; the gateway (:mod:`smbdirect_socket.smb.gateway`) puts
it behind one.  :func:`samba_server` starts ``smbd`` from a temporary
directory with its own configuration, user and share, waits until it
listens, and stops it afterwards.  It needs Debian's ``samba`` package and
root (smbd switches users for file access).

smbd starts helpers that leave its session (``samba-dcerpcd`` calls
``setsid()`` and starts ``rpcd_*`` workers), so stopping smbd alone leaves
them running.  smbd therefore runs under a small supervisor (this file run
as a script) that is a child subreaper: every process smbd starts is
re-parented to it when its own parent exits, and once smbd has stopped it
ends all of them before it exits itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

__all__ = ["SambaServer", "samba_available", "samba_processes", "samba_server"]

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
        command = [smbd, "-s", str(config), "--foreground", "--no-process-group", "--debug-stdout"]
        with open(state / "smbd.out", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-I", __file__, str(os.getpid()), *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_listening(("127.0.0.1", port), process, timeout)
            yield SambaServer("127.0.0.1", port, "root", password, share, path)
        finally:
            process.terminate()
            try:
                process.wait(_GRACE + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def samba_processes(server: SambaServer) -> list[int]:
    """The live processes of ``server``'s Samba (each names its configuration)."""
    config = str(server.path.parent / "smb.conf").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if config in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_GRACE = 5.0  # seconds the helpers get after SIGTERM before SIGKILL


def _children() -> list[int]:
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
                    found.append(int(entry.name))
    return found


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _supervise(parent: int, command: Sequence[str]) -> int:
    """Run ``command`` in a session of its own; when it ends, end everything it started."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # If the thread that started us dies, we get SIGTERM and stop as if asked.
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    if os.getppid() != parent:
        return 1
    main = os.posix_spawn(command[0], list(command), os.environ, setsid=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(main, signal.SIGTERM))
    if stopping:
        os.kill(main, signal.SIGTERM)
    while True:  # reap orphans as they come (they are ours now) until the main process ends
        pid, status = os.waitpid(-1, 0)
        if pid == main:
            break
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # its pid may be reused now
    deadline = time.monotonic() + _GRACE
    for _ in range(int(_GRACE * 20) + 100):  # bounded: SIGKILL after the grace, 50 ms apart
        _reap()
        left = _children()
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL)
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(_supervise(int(sys.argv[1]), sys.argv[2:]))
