"""Run an unmodified Python program with its SMB connections over SMB-Direct.

    python -m smbdirect_socket.run [--ports 445,5445] [--hosts H,...] [--fallback]
                                   [--large-messages] [--bytestream]
                                   (script.py | -m module) [args ...]

Like ``smc_run`` or the rsocket preload library for C programs: the stdlib's
socket module is patched (:func:`smbdirect_socket.patch`) before the program
starts, so its stream connections to the chosen ports or hosts ride
SMB-Direct, and smbprotocol's and impacket's I/O sizes fit the connection.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Sequence

from .parameters import Parameters
from .patching import patch
from .tools.common import Parser, port

__all__ = ["main", "parser"]


def _ports(text: str) -> list[int]:
    return [port(number.strip()) for number in text.split(",") if number]


def parser(prog: str = "python -m smbdirect_socket.run") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    routes = p.add_mutually_exclusive_group()
    routes.add_argument("--ports", type=_ports, default=[445, 5445], help="ports that ride SMB-Direct (445,5445)")
    routes.add_argument("--all-ports", action="store_true", help="every stream connection rides SMB-Direct")
    p.add_argument("--hosts", default="", help="comma-separated hosts whose connections ride SMB-Direct")
    p.add_argument("--fallback", action="store_true", help="use TCP when SMB-Direct is refused")
    p.add_argument(
        "--large-messages",
        action="store_true",
        help="negotiate 8 MiB messages (peers of this project, e.g. the gateway)",
    )
    p.add_argument("--bytestream", action="store_true", help="byte-stream mode, for programs that are not SMB")
    p.add_argument("-m", dest="module", help="run a library module as a script")
    p.add_argument("program", nargs=argparse.REMAINDER, help="script.py [args ...] (or the module's args)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m smbdirect_socket.run") -> None:
    args = parser(prog).parse_args(argv)
    if args.module is None and not args.program:
        parser(prog).error("give a script or -m module")
    if args.module is None and not os.path.isfile(args.program[0]):
        parser(prog).exit(2, f"{prog}: can't open file {args.program[0]!r}: no such file\n")  # as python says it
    parameters = Parameters().with_large_messages() if args.large_messages else None
    hosts = [h for h in args.hosts.split(",") if h]
    with patch(
        None if args.all_ports else args.ports,
        hosts,
        fallback=args.fallback,
        bytestream=args.bytestream,
        parameters=parameters,
    ):
        if args.module is not None:
            sys.argv = [args.module, *args.program]
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args.program)
            # As `python script.py` does: the script's directory comes first on the
            # path, not the launcher's (a venv's bin/ holds impacket's smbclient.py).
            sys.path[0] = os.path.dirname(os.path.abspath(args.program[0]))
            runpy.run_path(args.program[0], run_name="__main__")


if __name__ == "__main__":
    main()
