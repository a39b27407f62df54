"""Run an unmodified Python program with its SMB connections over SMB-Direct.

    python -m smbdirect_socket.run [--ports 445,5445] [--hosts H,...] [--map 445=5445]
                                   [--fallback] [--large-messages] [--bytestream]
                                   [-v] [--stat] (script.py | -m module) [args ...]

Like ``smc_run`` or the rsocket preload library for C programs: the stdlib's
socket module is patched (:func:`smbdirect_socket.patch`) before the program
starts, so its stream connections to the chosen ports or hosts ride
SMB-Direct, and smbprotocol's and impacket's I/O sizes fit the connection.
``--map 445=5445`` sends the connections to 445 to an SMB-Direct listener on
5445 (the gateway without root); ``-v`` logs each connection on stderr,
SMB-Direct or TCP and why; ``--stat`` answers ``smbdirect stat``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import runpy
import sys
from collections.abc import Sequence

from . import stats
from .parameters import Parameters
from .patching import patch
from .tools.common import Parser, port

__all__ = ["main", "parser"]


def _ports(text: str) -> list[int]:
    return [port(number.strip()) for number in text.split(",") if number]


def _mapping(text: str) -> tuple[int, int]:
    """``PORT=PORT``: the port a program connects to, and the SMB-Direct port it reaches."""
    source, equals, target = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"expected PORT=PORT such as 445=5445, got {text!r}")
    return port(source.strip()), port(target.strip())


def _port_map(pairs: list[tuple[int, int]], prog: str) -> dict[int, int]:
    chosen: dict[int, int] = {}
    for source, target in pairs:
        if chosen.get(source, target) != target:
            parser(prog).error(f"argument --map: port {source} is mapped to both {chosen[source]} and {target}")
        chosen[source] = target
    return chosen


def _verbose() -> None:
    """The package's log on stderr at INFO, apart from whatever the program does with its own."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("smbdirect run: %(message)s"))
    package = logging.getLogger("smbdirect_socket")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False  # once, even if the program logs to stderr too


def parser(prog: str = "python -m smbdirect_socket.run") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    routes = p.add_mutually_exclusive_group()
    routes.add_argument("--ports", type=_ports, default=[445, 5445], help="ports that ride SMB-Direct (445,5445)")
    routes.add_argument("--all-ports", action="store_true", help="every stream connection rides SMB-Direct")
    p.add_argument("--hosts", default="", help="comma-separated hosts whose connections ride SMB-Direct")
    p.add_argument(
        "--map",
        type=_mapping,
        action="append",
        default=[],
        metavar="PORT=PORT",
        help="connections to the first port ride SMB-Direct to the second (445=5445: the gateway without root); "
        "repeatable",
    )
    p.add_argument("--fallback", action="store_true", help="use TCP when SMB-Direct is refused")
    p.add_argument(
        "--large-messages",
        action="store_true",
        help="negotiate 8 MiB messages (peers of this project, e.g. the gateway)",
    )
    p.add_argument("--bytestream", action="store_true", help="byte-stream mode, for programs that are not SMB")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="log each connection on stderr: SMB-Direct or TCP, and why"
    )
    p.add_argument(
        "--stat", action="store_true", help=f"answer `smbdirect stat` on {stats.runtime_dir()}/PID.sock while it runs"
    )
    p.add_argument("-m", dest="module", help="run a library module as a script")
    p.add_argument("program", nargs=argparse.REMAINDER, help="script.py [args ...] (or the module's args)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m smbdirect_socket.run") -> None:
    args = parser(prog).parse_args(argv)
    if args.module is None and not args.program:
        parser(prog).error("give a script or -m module")
    if args.module is None and not os.path.isfile(args.program[0]):
        parser(prog).exit(2, f"{prog}: can't open file {args.program[0]!r}: no such file\n")  # as python says it
    port_map = _port_map(args.map, prog)
    parameters = Parameters().with_large_messages() if args.large_messages else None
    hosts = [h for h in args.hosts.split(",") if h]
    if args.verbose:
        _verbose()
    with contextlib.ExitStack() as stack:
        if args.stat:
            try:
                program = f"-m {args.module}" if args.module is not None else args.program[0]
                server = stack.enter_context(stats.serve(name=f"{prog.removeprefix('python -m ')} {program}"))
            except OSError as exc:
                parser(prog).exit(1, f"{prog}: cannot answer statistics: {exc.strerror or exc}\n")
            if args.verbose:
                logging.getLogger(__name__).info("statistics on %s (smbdirect stat)", server.path)
        stack.enter_context(
            patch(
                None if args.all_ports else args.ports,
                hosts,
                fallback=args.fallback,
                bytestream=args.bytestream,
                parameters=parameters,
                port_map=port_map,
            )
        )
        if args.verbose:
            _describe(args, port_map)
        if args.module is not None:
            sys.argv = [args.module, *args.program]
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args.program)
            # As `python script.py` does: the script's directory comes first on the
            # path, not the launcher's (a venv's bin/ holds impacket's smbclient.py).
            sys.path[0] = os.path.dirname(os.path.abspath(args.program[0]))
            runpy.run_path(args.program[0], run_name="__main__")


def _describe(args: argparse.Namespace, port_map: dict[int, int]) -> None:
    """What is routed, once, before the program's own connections."""
    routed = "every port" if args.all_ports else "ports " + ",".join(str(n) for n in sorted({*args.ports, *port_map}))
    if args.hosts:
        routed += f", hosts {args.hosts}"
    details = [f"{source} to {target}" for source, target in sorted(port_map.items())]
    sizes = "8 MiB messages" if args.large_messages else "Linux's message sizes"
    mode = "byte stream" if args.bytestream else "framed"
    logging.getLogger(__name__).info(
        "SMB-Direct for %s%s; %s, %s%s",
        routed,
        f" (mapped: {', '.join(details)})" if details else "",
        sizes,
        mode,
        ", TCP when refused" if args.fallback else "",
    )


if __name__ == "__main__":
    main()
