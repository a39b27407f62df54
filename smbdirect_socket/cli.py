"""The ``smbdirect`` command: ``listen``, ``connect``, ``bench``, ``samba``, ``gateway``, ``run`` and ``stat``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial

import attrs
import trio

from . import __version__, run, stats
from .constants import SMBDIRECT_IWARP_PORT
from .parameters import Parameters
from .rdma import get_provider
from .smb.gateway import Gateway
from .smb.limits import GatewayLimits
from .tools import bench_plot
from .tools.bench import add_bench
from .tools.common import CommandError, Parser, address_type, describe, format_address, run_command
from .tools.netcat import add_connect, add_listen
from .tools.samba import add_samba
from .tools.stat import add_stat

__all__ = ["main", "parser"]


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """Bytes, with an optional K, M or G (powers of 1024)."""
    number, unit = text.rstrip("KMGkmg"), text[len(text.rstrip("KMGkmg")) :].upper()
    if not number.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 65536, 64K or 16M, got {text!r}")
    return int(number) * _UNITS[unit]


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """One flag per field of GatewayLimits (--max-connections, --rdma-bytes-total, ...)."""
    group = parser.add_argument_group("bounds (see docs/limits.md)")
    for field in attrs.fields(GatewayLimits):
        parse: Callable[[str], float] = _size if "bytes" in field.name else int
        metavar = "SIZE" if "bytes" in field.name else "N"
        if isinstance(field.default, float):
            parse, metavar = float, "SECONDS"
        group.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=parse,
            default=None,
            metavar=metavar,
            help=f"{field.metadata['help']} (default {field.default})",
        )


def _limits(args: argparse.Namespace) -> GatewayLimits:
    chosen = {field.name: getattr(args, field.name) for field in attrs.fields(GatewayLimits)}
    try:
        return GatewayLimits(**{name: value for name, value in chosen.items() if value is not None})
    except ValueError as exc:
        raise SystemExit(f"smbdirect gateway: {exc}") from None


def _add_gateway(commands: argparse._SubParsersAction[Parser]) -> None:
    p = commands.add_parser(
        "gateway",
        help="accept SMB-Direct and relay SMB2 to a TCP SMB server (Samba, Windows)",
        description="Accept SMB-Direct and relay SMB2 to a TCP SMB server.",
    )
    p.add_argument(
        "--listen",
        type=address_type("0.0.0.0", SMBDIRECT_IWARP_PORT, listening=True),
        default=("0.0.0.0", SMBDIRECT_IWARP_PORT),
        metavar="[HOST:]PORT",
        help=f"SMB-Direct address (0.0.0.0:{SMBDIRECT_IWARP_PORT})",
    )
    p.add_argument("--to", type=address_type("", 445), required=True, metavar="HOST[:PORT]", help="the SMB server")
    p.add_argument("--provider", default=None, help="RDMA engine provider (default: $SMBDIRECT_PROVIDER or softiwarp)")
    p.add_argument("--linux-sizes", action="store_true", help="the kernel's message sizes instead of 8 MiB messages")
    p.add_argument("-v", "--verbose", action="store_true", help="log each session and refusal (INFO)")
    p.add_argument(
        "--stat-socket",
        default=None,
        metavar="PATH",
        help=f"answer `smbdirect stat` there (default {stats.runtime_dir()}/PID.sock; 'none': not at all)",
    )
    _add_limits(p)
    p.set_defaults(command=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    limits = _limits(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    parameters = Parameters() if args.linux_sizes else Parameters().with_large_messages()
    gateway = Gateway(args.to, parameters, get_provider(args.provider), limits=limits)
    statistics: list[stats.StatServer] = []

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            try:
                address = await nursery.start(partial(gateway.serve, args.listen))
            except OSError as exc:
                raise CommandError(f"cannot listen on {format_address(args.listen)}: {describe(exc)}") from None
            print(f"smbdirect gateway: SMB-Direct {format_address(address)} -> TCP {format_address(args.to)}")
            if args.stat_socket != "none":
                try:
                    statistics.append(stats.serve(args.stat_socket))
                except OSError as exc:
                    raise CommandError(f"cannot answer statistics: {describe(exc)}") from None
                print(f"smbdirect gateway: statistics on {statistics[0].path} (smbdirect stat)")
            sys.stdout.flush()

    try:
        return run_command("smbdirect gateway", partial(trio.run, serve))
    finally:
        for server in statistics:
            server.close()


def parser() -> Parser:
    """The ``smbdirect`` command line, every subcommand included."""
    p = Parser(
        prog="smbdirect",
        description="SMB-Direct from userspace: try it, relay it, run programs over it.",
        epilog="Each command has its own --help. Ctrl-C exits 130; errors print one line and exit 1 (usage: 2).",
    )
    p.add_argument("--version", action="version", version=f"smbdirect-socket {__version__}")
    commands = p.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_listen(commands)
    add_connect(commands)
    add_bench(commands)
    add_samba(commands)
    _add_gateway(commands)
    add_stat(commands)
    # Listed here; parsed by run's own parser, which hands the rest to the program.
    commands.add_parser("run", add_help=False, help="run an unmodified Python program over SMB-Direct")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        run.main(argv[1:], prog="smbdirect run")
        return
    if argv[:2] == ["bench", "plot"]:  # its own parser: "plot" would otherwise be taken for a HOST
        raise SystemExit(bench_plot.main(argv[2:]))
    p = parser()
    if not argv:  # a usage error, as git and argparse treat it, but showing every command
        p.print_help(sys.stderr)
        raise SystemExit(2)
    args = p.parse_args(argv)
    raise SystemExit(args.command(args))


if __name__ == "__main__":
    main()
