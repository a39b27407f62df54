"""``python -m smbdirect_socket.smb.demo``: an unmodified SMB client copies a file over SMB-Direct.

Samba (which has no SMB-Direct) runs on loopback behind this project's
gateway.  smbprotocol, unchanged from PyPI, writes a file to the share and
reads it back over ``socket(AF_INET, SOCK_STREAM, IPPROTO_SMBDIRECT)`` on the
embedded software iWARP engine (real MPA/DDP/RDMAP, the wire Linux siw
speaks): :func:`smbdirect_socket.patch` sends its connection through
SMB-Direct.  The same copy then runs over plain TCP to the same Samba.

Without Samba (Debian package ``samba``, started as root) the demo copies
the file as SMB-style framed messages between two sockets instead.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

from ..blocking import SMBDirectSocket, create_connection, create_server
from ..parameters import Parameters
from ..patching import patch
from .gateway import Gateway, gateway_thread
from .samba import SambaServer, samba_available, samba_server

FILE_SIZE = 16 * 1024 * 1024
CHUNK = 1024 * 1024


class _Progress:
    def __init__(self, title: str, total: int) -> None:
        self.title, self.total, self.done = title, total, 0
        self.start = time.perf_counter()

    def __call__(self, amount: int) -> None:
        quarter = 4 * self.done // self.total
        self.done += amount
        bar = "#" * (30 * self.done // self.total)
        line = f"  {self.title:<6} [{bar:<30}] {self.done >> 20:3d} MiB {time.perf_counter() - self.start:5.2f} s"
        if sys.stdout.isatty():  # live, on one line
            print(f"\r{line}", end="\n" if self.done >= self.total else "", flush=True)
        elif 4 * self.done // self.total > quarter:
            print(line, flush=True)


def _smb_copy(
    samba: SambaServer,
    address: tuple[str, int],
    data: bytes,
    before_disconnect: Callable[[], object] | None = None,
) -> float:
    """Write ``data`` to the share with smbprotocol and read it back; seconds taken."""
    import smbclient  # smbprotocol's high-level API

    host, port = address
    smbclient.register_session(host, username=samba.user, password=samba.password, port=port)
    path = rf"\\{host}\{samba.share}\demo-{uuid.uuid4().hex[:8]}.bin"
    start = time.perf_counter()
    try:
        write = _Progress("write", len(data))
        with smbclient.open_file(path, mode="wb", port=port) as remote:
            for offset in range(0, len(data), CHUNK):
                write(remote.write(data[offset : offset + CHUNK]))
        read = _Progress("read", len(data))
        digest = hashlib.sha256()
        with smbclient.open_file(path, mode="rb", port=port) as remote:
            while chunk := remote.read(CHUNK):
                digest.update(chunk)
                read(len(chunk))
        elapsed = time.perf_counter() - start
        smbclient.remove(path, port=port)
    finally:
        if before_disconnect is not None:
            before_disconnect()
        smbclient.reset_connection_cache()
    if digest.digest() != hashlib.sha256(data).digest():
        raise SystemExit("the file read back differs from the file written")
    return elapsed


def _describe(sock: SMBDirectSocket) -> None:
    info = sock.info()
    print(
        f"  negotiated: {info.max_send_size}-byte sends, {info.max_fragmented_send_size}-byte messages out, "
        f"{info.max_fragmented_receive_size}-byte messages in"
    )
    print(
        f"  client sent {info.messages_sent} SMB2 messages in {info.fragments_sent} SMB-Direct fragments "
        f"and received {info.messages_received} in {info.fragments_received}; "
        f"{info.credit_messages_sent} credit grants, credits now {info.send_credits} out / "
        f"{info.receive_credits} granted"
    )


def smb_demo(samba: SambaServer) -> None:
    data = os.urandom(FILE_SIZE)
    mib = FILE_SIZE >> 20
    print(f"Samba on 127.0.0.1:{samba.port}; smbprotocol writes and reads back {mib} MiB.\n")
    print("Over TCP, straight to Samba:")
    tcp = _smb_copy(samba, samba.address, data)
    runs: list[tuple[str, Parameters, Parameters | None]] = [
        ("8 MiB messages (gateway and client both this project)", Parameters().with_large_messages(), None),
        ("the kernel's sizes (I/O sizes fitted to 173910-byte messages)", Parameters(), Parameters()),
    ]
    for title, gateway_parameters, client_parameters in runs:
        gateway = Gateway(samba.address, gateway_parameters)
        with gateway_thread(gateway) as address:
            print(f"\nOver SMB-Direct, gateway on {address[0]}:{address[1]}, {title}:")
            client_parameters = client_parameters or gateway_parameters
            seen: list[SMBDirectSocket] = []
            with patch(ports=[address[1]], parameters=client_parameters) as patched:
                keep = partial(seen.extend, patched.route.sockets)
                elapsed = _smb_copy(samba, address, data, keep)
            _describe(seen[0])
            print(
                f"  {2 * FILE_SIZE / elapsed / 1e6:.1f} MB/s vs {2 * FILE_SIZE / tcp / 1e6:.1f} MB/s over TCP "
                f"({tcp / elapsed:.2f}x), every byte checked"
            )


def framed_demo() -> None:
    """Without Samba: the file crosses as SMB-style framed messages between two sockets."""
    data = os.urandom(FILE_SIZE)
    message = 128 * 1024
    server = create_server(("127.0.0.1", 0))
    digest = hashlib.sha256()

    def serve() -> None:
        sock, _ = server.accept()
        with sock:
            while header := sock.recv(4):
                digest.update(sock.recv(struct.unpack(">I", header)[0]))
                sock.send(struct.pack(">I", 2) + b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    progress = _Progress("copy", len(data))
    with create_connection(server.getsockname()) as client:
        for offset in range(0, len(data), message):
            chunk = data[offset : offset + message]
            client.send(struct.pack(">I", len(chunk)) + chunk)
            assert client.recv(4) == struct.pack(">I", 2) and client.recv(2) == b"ok"
            progress(len(chunk))
        _describe(client)
    thread.join()
    server.close()
    elapsed = time.perf_counter() - progress.start
    intact = digest.digest() == hashlib.sha256(data).digest()
    print(f"  {FILE_SIZE / elapsed / 1e6:.1f} MB/s, every byte checked: {intact}")


def main() -> None:
    reason = samba_available()
    if reason is None:
        with samba_server() as samba:
            smb_demo(samba)
    else:
        print(f"({reason}: copying framed messages between two SMB-Direct sockets instead)\n")
        framed_demo()


if __name__ == "__main__":
    main()
