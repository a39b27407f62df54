"""Addresses: the walk over what getaddrinfo gives, and the bound TCP socket.

Shared by the sockets (``open_smbdirect_stream``, ``create_connection``,
``bind``) and the software provider (its TCP connect and listen), so each
is written once.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

__all__ = ["bound_tcp_socket", "connect_any"]

Address = tuple[Any, ...]


class Connectable(Protocol):
    async def connect(self, address: Any) -> None: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Connectable)


async def connect_any(
    host: str,
    port: int,
    make: Callable[[int], S],
    connect: Callable[[S, Address], Awaitable[None]] | None = None,
    *,
    family: int = 0,
    all_errors: bool = False,
) -> S:
    """A socket connected to the first address of ``host`` that takes it, in
    getaddrinfo's order.

    ``make(family)`` makes a socket for each address, ``connect(sock,
    address)`` (``sock.connect`` unless given) connects it; a socket that
    fails is closed.  When all fail, the first error is raised, as
    :func:`socket.create_connection` does, or an ``ExceptionGroup`` of them
    all with ``all_errors``.
    """
    infos = await trio.socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    errors: list[OSError] = []
    for found_family, _, _, _, address in infos:
        sock = make(found_family)
        try:
            await (sock.connect(address) if connect is None else connect(sock, address))
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            errors.append(exc)
            continue
        return sock
    if not errors:
        raise OSError(errno.EHOSTUNREACH, f"getaddrinfo gave no address for {host!r}")
    if all_errors:
        raise ExceptionGroup(f"connecting to {host}:{port} failed", errors)
    raise errors[0]


def bound_tcp_socket(family: int, address: Address) -> socket.socket:
    """A TCP socket bound to ``address`` with ``SO_REUSEADDR`` (and v6-only for
    AF_INET6, as the kernel's SMB-Direct sockets are); closed if binding fails."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
