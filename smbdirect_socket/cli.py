"""The ``smbdirect`` command: ``smbdirect gateway`` and ``smbdirect run``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial

import attrs
import trio

from . import run
from .parameters import Parameters
from .rdma import get_provider
from .smb.gateway import Gateway
from .smb.limits import GatewayLimits

__all__ = ["main"]


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


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


def _gateway(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(
        prog="smbdirect gateway", description="Accept SMB-Direct and relay SMB2 to a TCP SMB server."
    )
    p.add_argument("--listen", type=_address, default=("0.0.0.0", 5445), help="SMB-Direct address (0.0.0.0:5445)")
    p.add_argument("--to", type=_address, required=True, help="the TCP SMB server, HOST:PORT")
    p.add_argument("--provider", default=None, help="RDMA engine provider (default: $SMBDIRECT_PROVIDER or softiwarp)")
    p.add_argument("--linux-sizes", action="store_true", help="the kernel's message sizes instead of 8 MiB messages")
    p.add_argument("-v", "--verbose", action="store_true")
    _add_limits(p)
    args = p.parse_args(argv)
    limits = _limits(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    parameters = Parameters() if args.linux_sizes else Parameters().with_large_messages()
    gateway = Gateway(args.to, parameters, get_provider(args.provider), limits=limits)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(partial(gateway.serve, args.listen))
            print(f"smbdirect gateway: SMB-Direct {address[0]}:{address[1]} -> TCP {args.to[0]}:{args.to[1]}")

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[Sequence[str]], None]] = {
        "gateway": _gateway,
        "run": partial(run.main, prog="smbdirect run"),
    }
    if not argv or argv[0] not in commands:
        print("usage: smbdirect {gateway,run} ...", file=sys.stderr)
        raise SystemExit(2)
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
