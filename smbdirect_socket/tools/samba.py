"""smbdirect samba: a throwaway Samba to try SMB clients against, optionally behind the gateway.

It is the tests' own Samba (smbdirect_socket.smb.samba): smbd on 127.0.0.1
with one writable share in a temporary directory.  For trying things only,
never for real files: it runs as root, anyone with its credentials may write
the share, and the share is deleted when it stops (Ctrl-C, SIGTERM, SIGHUP).
It needs root and Debian's samba package.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import subprocess
import sys
from functools import partial

import trio

from .. import stats
from ..constants import SMBDIRECT_IWARP_PORT
from ..rdma import get_provider
from ..smb.gateway import serve_gateway
from ..smb.samba import SambaServer, samba_available, samba_server
from .common import CommandError, Parser, address_type, describe, format_address, run_command

__all__ = ["add_samba"]

_NOTICE = """\
smbdirect samba: a THROWAWAY Samba for trying things, never for real files: it runs
  as root, anyone with these credentials may write its share, and the share and
  everything in it are deleted when it stops."""


def add_samba(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = commands.add_parser(
        "samba",
        help="a throwaway Samba (as root) to try SMB clients against, optionally behind the gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--share", default="share", help="the share's name (share)")
    parser.add_argument("--password", default="smbdirect-Pa55", help="root's password for SMB (smbdirect-Pa55)")
    parser.add_argument(
        "--gateway",
        nargs="?",
        type=address_type("127.0.0.1", SMBDIRECT_IWARP_PORT, listening=True),
        const=("127.0.0.1", SMBDIRECT_IWARP_PORT),
        metavar="[HOST:]PORT",
        help=f"also put the gateway in front of it, listening for SMB-Direct (127.0.0.1:{SMBDIRECT_IWARP_PORT})",
    )
    parser.add_argument("--provider", default=None, help="the gateway's RDMA provider")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the gateway's sessions (INFO), on stderr")
    parser.set_defaults(command=_samba)


def _describe_server(server: SambaServer) -> str:
    return "\n".join(
        [
            f"  SMB over TCP  {format_address(server.address)}",
            f"  share         \\\\{server.host}\\{server.share}  (directory {server.path})",
            f"  user          {server.user}",
            f"  password      {server.password}",
        ]
    )


async def _serve(args: argparse.Namespace, server: SambaServer) -> None:
    """The gateway, if asked for, until Ctrl-C, SIGTERM or SIGHUP (those two end it with status 0)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            if args.gateway is not None:
                serve = partial(serve_gateway, server.address, args.gateway, provider=get_provider(args.provider))
                try:
                    address = await nursery.start(serve)
                except OSError as exc:
                    raise CommandError(f"cannot listen on {format_address(args.gateway)}: {describe(exc)}") from None
                print(f"  SMB-Direct    {format_address(address)}  (the gateway, 8 MiB messages)", flush=True)
                with contextlib.suppress(OSError):  # statistics are a convenience here, not a reason to fail
                    statistics = stats.serve(name="smbdirect samba --gateway")
                    nursery.start_soon(_close_at_end, statistics)
                    print(f"  statistics    {statistics.path}  (smbdirect stat)", flush=True)
            print("Ctrl-C stops it.", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _close_at_end(server: stats.StatServer) -> None:
    try:
        await trio.sleep_forever()
    finally:
        server.close()


def _run(args: argparse.Namespace) -> None:
    reason = samba_available()
    if reason is not None:
        raise CommandError(f"cannot start Samba: {reason}")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(samba_server(args.share, args.password))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            raise CommandError(f"cannot start Samba: {exc}") from None
        print(_NOTICE, flush=True)
        print(_describe_server(server), flush=True)
        try:
            trio.run(_serve, args, server)
        finally:
            print("smbdirect samba: stopped; the share is deleted", file=sys.stderr, flush=True)


def _samba(args: argparse.Namespace) -> int:
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run_command("smbdirect samba", partial(_run, args))
