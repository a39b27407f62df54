"""smbdirect listen and smbdirect connect: stdin and stdout over SMB-Direct, like nc.

Framed (the kernel's default): each read from stdin (a line, on a terminal)
goes out as one message, its 4-byte big-endian length added; each message
received is written to stdout without its length.  --bytestream: bytes both
ways, as nc moves them over TCP.  listen --echo sends every message (or
byte) back, to every client at once, until Ctrl-C.

SMB-Direct has no half-close, so the end of stdin cannot be sent on its own:
as OpenBSD's nc, the command then keeps writing what arrives until the peer
closes; -q SECONDS closes that long after the end of stdin instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import struct
import sys
from functools import partial

import trio

from .. import trio as sdtrio
from ..constants import SMBDIRECT_IWARP_PORT
from ..parameters import Parameters
from ..rdma import get_provider
from .common import CommandError, Parser, address_type, describe, format_address, run_command

__all__ = ["add_connect", "add_listen"]

_LENGTH = struct.Struct(">I")
_CHUNK = 65536
# Errors of a peer that is not SMB-Direct at all (a TCP server on the port).
_NOT_SMBDIRECT = (errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPROTO)


def _add(commands: argparse._SubParsersAction[Parser], name: str, summary: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=summary, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-q",
        dest="quit_after",
        type=float,
        default=-1.0,
        metavar="SECONDS",
        help="after the end of stdin, close this long after (default: when the peer closes)",
    )
    parser.add_argument("--bytestream", action="store_true", help="a plain byte stream instead of framed messages")
    parser.add_argument("--large-messages", action="store_true", help="offer 8 MiB messages instead of Linux's sizes")
    parser.add_argument("--provider", default=None, help="RDMA provider (default: $SMBDIRECT_PROVIDER or softiwarp)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say who connects and how it ends, on stderr")
    parser.set_defaults(command_name=name)
    return parser


def add_listen(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = _add(commands, "listen", "accept SMB-Direct connections: stdin/stdout, or an echo server (like nc -l)")
    parser.add_argument(
        "address",
        nargs="?",
        type=address_type("0.0.0.0", SMBDIRECT_IWARP_PORT, listening=True),
        default=("0.0.0.0", SMBDIRECT_IWARP_PORT),
        metavar="[HOST:]PORT",
        help=f"where to listen (0.0.0.0:{SMBDIRECT_IWARP_PORT}; [::1]:PORT for IPv6; port 0 picks a free one)",
    )
    parser.add_argument("--echo", action="store_true", help="send back what each client sends, until Ctrl-C")
    parser.add_argument("-k", "--keep-listening", action="store_true", help="after a client leaves, accept the next")
    parser.set_defaults(command=_listen)


def add_connect(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = _add(commands, "connect", "connect to an SMB-Direct peer: stdin/stdout (like nc)")
    parser.add_argument(
        "address",
        type=address_type("", SMBDIRECT_IWARP_PORT),
        metavar="HOST[:PORT]",
        help=f"the peer (port {SMBDIRECT_IWARP_PORT} unless given; [::1]:PORT for IPv6)",
    )
    parser.set_defaults(command=_connect)


def _parameters(args: argparse.Namespace) -> Parameters:
    return Parameters().with_large_messages() if args.large_messages else Parameters()


def _log(args: argparse.Namespace, text: str) -> None:
    if args.verbose:
        print(f"smbdirect {args.command_name}: {text}", file=sys.stderr, flush=True)


# ---- stdin and stdout, in threads: they may be files, pipes or terminals -------------


async def _read_stdin(size: int) -> bytes:
    return await trio.to_thread.run_sync(os.read, sys.stdin.fileno(), size, abandon_on_cancel=True)


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(sys.stdout.fileno(), view) :]


async def _write_stdout(data: bytes) -> None:
    await trio.to_thread.run_sync(_write_all, data)


# ---- one connection -----------------------------------------------------------------


async def _send(sock: sdtrio.SMBDirectSocket, data: bytes) -> None:
    """One message (framed), or all of ``data`` (byte stream)."""
    if not sock.bytestream:
        await sock.send(_LENGTH.pack(len(data)) + data)
        return
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def _receive(sock: sdtrio.SMBDirectSocket) -> bytes | None:
    """The next message's body (framed), or what has arrived (byte stream); None at the end."""
    if sock.bytestream:
        return await sock.recv(_CHUNK) or None
    header = await sock.recv(_LENGTH.size)
    if not header:
        return None
    (length,) = _LENGTH.unpack(header)
    return await sock.recv(length) if length else b""


async def _pipe(sock: sdtrio.SMBDirectSocket, quit_after: float) -> None:
    """stdin to the peer and the peer to stdout, until the peer closes (or ``-q``)."""
    # A message may carry at most the negotiated max fragmented send size.
    size = _CHUNK if sock.bytestream else min(sock.info().max_fragmented_send_size, 1 << 20)

    async with trio.open_nursery() as nursery:

        async def from_stdin() -> None:
            while data := await _read_stdin(size):
                await _send(sock, data)
            if quit_after >= 0:
                await trio.sleep(quit_after)
                nursery.cancel_scope.cancel()

        nursery.start_soon(from_stdin)
        while (data := await _receive(sock)) is not None:
            await _write_stdout(data)
        nursery.cancel_scope.cancel()


async def _echo(sock: sdtrio.SMBDirectSocket) -> None:
    while (data := await _receive(sock)) is not None:
        await _send(sock, data)


# ---- the commands ---------------------------------------------------------------------


def _socket(args: argparse.Namespace, family: int) -> sdtrio.SMBDirectSocket:
    sock = sdtrio.socket(family, provider=get_provider(args.provider), parameters=_parameters(args))
    sock.bytestream = args.bytestream
    return sock


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _mode(args: argparse.Namespace) -> str:
    return "byte stream" if args.bytestream else "framed: a 4-byte length before each message"


async def _serve(args: argparse.Namespace) -> None:
    listener = _socket(args, _family(args.address[0]))
    try:
        await listener.bind(args.address)
        listener.listen()
    except OSError as exc:
        raise CommandError(f"cannot listen on {format_address(args.address)}: {describe(exc)}") from None
    what = "echoing" if args.echo else "listening"
    print(f"smbdirect listen: {what} on {format_address(listener.getsockname())} ({_mode(args)})", file=sys.stderr)
    sys.stderr.flush()

    async def handle(sock: sdtrio.SMBDirectSocket, peer: str) -> None:
        _log(args, f"connection from {peer}")
        try:
            with sock:
                await (_echo(sock) if args.echo else _pipe(sock, args.quit_after))
        except OSError as exc:
            if not args.echo:
                raise
            _log(args, f"{peer}: {describe(exc)}")  # one client's failure ends only its connection
        else:
            _log(args, f"{peer} closed")

    with listener:
        async with trio.open_nursery() as nursery:
            while True:
                sock, peer = await listener.accept()
                if args.echo:
                    nursery.start_soon(handle, sock, format_address(peer))
                    continue
                await handle(sock, format_address(peer))
                if not args.keep_listening:
                    return


async def _dial(args: argparse.Namespace) -> None:
    host, port = args.address
    address = format_address(args.address)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CommandError(f"{address}: {describe(exc)}") from None
    error: OSError | None = None
    for family, _, _, _, resolved in infos:
        sock = _socket(args, family)
        try:
            await sock.connect(resolved)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        core = "compiled wire core" if sock.info().compiled else "pure-Python wire path"
        _log(args, f"connected to {format_address(resolved)} ({_mode(args)}; {core})")
        with sock:
            await _pipe(sock, args.quit_after)
        return
    assert error is not None
    hint = ""
    if error.errno in _NOT_SMBDIRECT and "smbdirect gateway" not in str(error):  # the error may name it
        hint = " (is it an SMB-Direct peer? a TCP SMB server needs `smbdirect gateway` in front of it)"
    raise CommandError(f"cannot connect to {address}: {describe(error)}{hint}")


def _listen(args: argparse.Namespace) -> int:
    return run_command("smbdirect listen", partial(trio.run, _serve, args))


def _connect(args: argparse.Namespace) -> int:
    return run_command("smbdirect connect", partial(trio.run, _dial, args))
