"""What every subcommand shares: addresses and ports, and ending in one line.

A command ends like the tools it imitates: a usage error exits 2 (argparse),
a failed connection or an address that cannot be used prints one line and
exits 1 (``nc``), and Ctrl-C exits 130 (128 + SIGINT) without a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "CommandError",
    "Parser",
    "address_type",
    "describe",
    "format_address",
    "port",
    "run_command",
]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT


class CommandError(Exception):
    """Ends a command with this one line and exit status 1."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (still exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port(text: str, lowest: int = 1) -> int:
    """A port number from ``lowest`` to 65535 (argparse's error otherwise)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number")
    value = int(text)
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range ({lowest}-65535)")
    return value


def address_type(default_host: str, default_port: int, *, listening: bool = False) -> Callable[[str], tuple[str, int]]:
    """An argparse type for ``HOST:PORT``, ``[IPV6]:PORT``, ``IPV6``, ``HOST`` (the
    default port) and, when listening, ``PORT`` alone (0 picks a free one)."""

    def parse(text: str) -> tuple[str, int]:
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise argparse.ArgumentTypeError(f"expected [IPV6]:PORT, got {text!r}")
            number = rest[1:] or str(default_port)
        elif text.count(":") == 1:
            host, _, number = text.partition(":")
        elif listening and text.isdigit():
            host, number = "", text
        else:  # a host name, an IPv4 address or a bare IPv6 address
            host, number = text, str(default_port)
        return (host or default_host, port(number, 0 if listening else 1))

    return parse


def format_address(address: tuple[object, ...]) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(exc: OSError) -> str:
    """An OSError as one line, without ``[Errno N]``: the system's words for its
    errno when the library's text only wraps them, else the library's text."""
    text = exc.strerror or str(exc)
    if exc.errno is not None and text.endswith(os.strerror(exc.errno)):
        text = os.strerror(exc.errno)
    if exc.filename is not None:
        text = f"{exc.filename}: {text}"
    return text


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; Ctrl-C and OS errors (also inside trio's exception groups)
    end in at most one line with nc's exit statuses, anything else stays a bug."""
    try:
        return body() or 0
    except BaseException as exc:
        group = exc if isinstance(exc, BaseExceptionGroup) else BaseExceptionGroup("", [exc])
        if group.subgroup(KeyboardInterrupt) is not None:
            return EXIT_INTERRUPTED
        expected, unexpected = group.split((OSError, CommandError))
        if expected is None or unexpected is not None:
            raise
        first: BaseException = expected
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"{prog}: {describe(first) if isinstance(first, OSError) else first}", file=sys.stderr)
        return EXIT_ERROR
