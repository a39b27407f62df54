"""Which connections ride SMB-Direct, and the sockets that pick at connect time.

One check (:func:`routed`: a port in ``ports``, every port when it is None,
or a host in ``hosts``) serves both ways of choosing:

* :class:`Route`, what :func:`smbdirect_socket.patch` routes for stdlib
  programs (blocking sockets);
* :class:`SMBDirectSocketFactory`, for
  ``trio.socket.set_custom_socket_factory``: the stream sockets trio makes
  become SMB-Direct or TCP at their first connect or bind.
"""

from __future__ import annotations

import errno
import socket as _stdlib_socket
import weakref
from typing import Any

import attrs
import trio

from . import blocking
from .constants import SMBDIRECT_IWARP_PORT, SMBDIRECT_PORT, SOL_SMBDIRECT
from .errors import socket_error
from .options import SMBDIRECT_BYTESTREAM
from .parameters import Parameters
from .rdma import Provider
from .trio import SMBDirectSocket, StreamSocketBase, configure

__all__ = ["Route", "SMBDirectSocketFactory", "routed"]

Address = tuple[Any, ...]


def routed(ports: frozenset[int] | None, hosts: frozenset[str], address: Any) -> bool:
    """Does a connection to ``address`` ride SMB-Direct?"""
    if not isinstance(address, tuple) or len(address) < 2:
        return False
    return (ports is None or address[1] in ports) or address[0] in hosts


@attrs.frozen
class Route:
    """Which connections ride SMB-Direct, and how."""

    ports: frozenset[int] | None = frozenset({SMBDIRECT_PORT, SMBDIRECT_IWARP_PORT})  #: None: every port
    hosts: frozenset[str] = frozenset()
    fallback: bool = False
    bytestream: bool = False
    parameters: Parameters | None = None
    provider: Provider | None = None
    #: The SMB-Direct sockets connected through this route (while they live).
    sockets: weakref.WeakSet[blocking.SMBDirectSocket] = attrs.field(factory=weakref.WeakSet, eq=False)

    def takes(self, address: Any) -> bool:
        """Does a connection to ``address`` ride SMB-Direct on this route?"""
        return routed(self.ports, self.hosts, address)

    def connect(
        self, address: tuple[Any, ...], family: int, timeout: float | None, source: Address | None = None
    ) -> blocking.SMBDirectSocket:
        """An SMB-Direct socket connected to ``address`` as this route says (closed if that fails)."""
        sock = blocking.SMBDirectSocket(family, parameters=self.parameters, provider=self.provider)
        try:
            sock.settimeout(timeout)
            if source is not None:
                sock.bind(source)
            if self.bytestream:
                sock.setsockopt(SOL_SMBDIRECT, SMBDIRECT_BYTESTREAM, 1)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self.sockets.add(sock)
        return sock


@attrs.define
class SMBDirectSocketFactory(trio.abc.SocketFactory):
    """For ``trio.socket.set_custom_socket_factory``: SMB-Direct for chosen ports or hosts.

    Stream sockets trio creates (``open_tcp_stream``, ``open_tcp_listeners``,
    ``serve_tcp``) decide when they connect or bind: an address whose port is
    in ``ports`` (None: every port) or whose host is in ``hosts`` rides
    SMB-Direct, in byte-stream mode unless ``bytestream`` is False; any other
    address gets an ordinary TCP socket.  Other sockets are never touched.
    """

    ports: frozenset[int] | None = frozenset({SMBDIRECT_PORT, SMBDIRECT_IWARP_PORT})
    hosts: frozenset[str] = frozenset()
    bytestream: bool = True
    parameters: Parameters | None = None
    provider: Provider | None = None

    def routes(self, address: Address) -> bool:
        """Does a socket bound or connected to ``address`` ride SMB-Direct?"""
        return routed(self.ports, self.hosts, address)

    def socket(
        self,
        family: int | None = None,
        type: int | None = None,
        proto: int | None = None,
    ) -> trio.socket.SocketType:
        """A trio socket: for a stream socket, one that becomes SMB-Direct or TCP at its first
        connect or bind, as its address is routed; any other kind, a plain trio socket.
        """
        family = _stdlib_socket.AF_INET if family is None else family
        kind = _stdlib_socket.SOCK_STREAM if type is None else type
        if kind != _stdlib_socket.SOCK_STREAM or family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
            return trio.socket.from_stdlib_socket(_stdlib_socket.socket(family, kind, proto or 0))
        return _RoutedSocket(self, family, proto or 0)


class _RoutedSocket(StreamSocketBase, trio.socket.SocketType):
    """A stream socket that becomes SMB-Direct or TCP at its first connect or bind.

    Options set before then are remembered and applied to the socket chosen.
    """

    def __init__(self, factory: SMBDirectSocketFactory, family: int, proto: int) -> None:
        self._factory = factory
        self._family = family
        self._proto = proto
        self._options: list[tuple[int, int, Any]] = []
        self._chosen: trio.socket.SocketType | None = None

    def _choose(self, address: Address) -> trio.socket.SocketType:
        if self._chosen is None:
            chosen: trio.socket.SocketType
            if self._factory.routes(address):
                sock = SMBDirectSocket(self._family, provider=self._factory.provider)
                configure(sock, self._factory.bytestream, self._factory.parameters)
                chosen = sock
            else:
                stdlib = _stdlib_socket.socket(self._family, _stdlib_socket.SOCK_STREAM, self._proto)
                chosen = trio.socket.from_stdlib_socket(stdlib)
            for level, name, value in self._options:
                chosen.setsockopt(level, name, value)
            self._chosen = chosen
        return self._chosen

    def _socket(self) -> trio.socket.SocketType:
        if self._chosen is None:
            raise socket_error(errno.ENOTCONN, "socket is neither connected nor bound yet")
        return self._chosen

    @property
    def proto(self) -> int:
        return self._chosen.proto if self._chosen is not None else self._proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._chosen is not None and self._chosen.did_shutdown_SHUT_WR

    async def connect(self, address: Address) -> None:
        await self._choose(address).connect(address)

    async def bind(self, address: Address) -> None:
        await self._choose(address).bind(address)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if self._chosen is None:
            self._options.append((level, optname, value))
        else:
            self._chosen.setsockopt(level, optname, value)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        return (
            self._socket().getsockopt(level, optname, buflen) if buflen else self._socket().getsockopt(level, optname)
        )

    def listen(self, backlog: int = 10) -> None:
        self._socket().listen(backlog)

    async def accept(self) -> tuple[trio.socket.SocketType, Address]:
        return await self._socket().accept()

    async def send(self, data: Any, flags: int = 0) -> int:
        return await self._socket().send(data, flags)

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return await self._socket().recv(bufsize, flags)

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return await self._socket().recv_into(buffer, nbytes, flags)

    async def wait_writable(self) -> None:
        await self._socket().wait_writable()

    def is_readable(self) -> bool:
        return self._socket().is_readable()

    def getsockname(self) -> Address:
        return tuple(self._socket().getsockname())

    def getpeername(self) -> Address:
        return tuple(self._socket().getpeername())

    def fileno(self) -> int:
        return self._chosen.fileno() if self._chosen is not None else -1

    def shutdown(self, flag: int) -> None:
        self._socket().shutdown(flag)

    def close(self) -> None:
        if self._chosen is not None:
            self._chosen.close()
