"""Run unmodified programs over SMB-Direct by patching the stdlib's socket module.

:func:`patch` (a call, or a context manager) replaces ``socket.socket`` and
``socket.create_connection``:

* ``socket.socket(family, SOCK_STREAM, IPPROTO_SMBDIRECT)`` returns an
  :class:`~smbdirect_socket.SMBDirectSocket`;
* stream connections to a chosen port (445 and 5445 by default) or host ride
  SMB-Direct: ``create_connection`` returns an SMB-Direct socket, and a
  ``socket.socket`` becomes one when it connects there;
* every other socket is the stdlib's, untouched, and so is every socket
  connected inside a trio run: the engine's own TCP connections (the
  software provider's wire) and trio programs, which route with
  :class:`smbdirect_socket.trio.SMBDirectSocketFactory` instead.

``port_map`` sends a routed connection to another port: ``{445: 5445}``
takes a program's connections to 445 to an SMB-Direct listener on 5445
(the gateway, which needs no root there).  Each connection the patch sees
is logged at INFO on the ``smbdirect_socket.patching`` logger: where it
went, over SMB-Direct or TCP, and why.

With ``fallback=True`` a connection that SMB-Direct refuses (no listener,
or a peer that is not SMB-Direct) is made over TCP instead, within one
connect timeout and with a warning in the log; otherwise the refusal is the
program's error.
:mod:`smbdirect_socket.run` applies this to a whole program.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket as _stdlib_socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import trio

from . import blocking, stats
from .constants import IPPROTO_SMBDIRECT, SMBDIRECT_IWARP_PORT, SMBDIRECT_PORT
from .parameters import Parameters
from .rdma import Provider
from .routing import Route

__all__ = ["Patch", "Route", "patch"]  # Route lives in routing, with the trio factory

log = logging.getLogger(__name__)

#: Errors that say nothing speaks SMB-Direct there: nothing listens, or what listens fails the handshake.
_NOT_SMBDIRECT = frozenset(
    (errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPROTO, errno.ETIMEDOUT, errno.EHOSTUNREACH)
)

_ORIGINAL_SOCKET = _stdlib_socket.socket
_ORIGINAL_CREATE_CONNECTION = _stdlib_socket.create_connection


_tcp_only = threading.local()  # set while the fallback connects: its sockets are not routed again


@contextlib.contextmanager
def _unrouted() -> Iterator[None]:
    _tcp_only.on = True
    try:
        yield
    finally:
        _tcp_only.on = False


def _why(route: Route, address: Any) -> str:
    """Why ``route`` takes ``address`` or not, in the words of ``run``'s options."""
    if route.ports is None:
        return "every port is routed"
    if address[1] in route.ports:
        return f"port {address[1]} is routed"
    if address[0] in route.hosts:
        return f"host {address[0]} is routed"
    ports = ",".join(str(number) for number in sorted(route.ports)) or "none"
    return f"port {address[1]} is not among the routed ports {ports}"


def _mapped(port_map: Mapping[int, int], address: Any) -> Any:
    """``address`` with its port mapped, the rest (IPv6 flow and scope) kept."""
    target = port_map.get(address[1])
    return address if target is None else (address[0], target, *address[2:])


def _log_route(route: Route, address: Any, target: Any, transport: str) -> None:
    why = _why(route, address)
    if target[1] != address[1]:
        why += f"; mapped to {target[1]}"
    log.info("%s:%s: %s (%s)", address[0], address[1], transport, why)


def _falls_back(route: Route, address: Any, exc: OSError) -> bool:
    """Whether this failure makes the connection TCP instead; says so when it does."""
    if not (route.fallback and exc.errno in _NOT_SMBDIRECT):
        return False
    log.warning("SMB-Direct to %s:%s failed (%s): falling back to TCP", address[0], address[1], exc.strerror or exc)
    return True


def _routed_socket_class(route: Route, port_map: Mapping[int, int]) -> type[_stdlib_socket.socket]:
    class RoutedSocket(_ORIGINAL_SOCKET):
        """A stdlib socket until it connects to a routed address; then SMB-Direct."""

        _smbdirect: blocking.SMBDirectSocket | None = None

        def __new__(cls, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> Any:
            if proto == IPPROTO_SMBDIRECT:
                family = _stdlib_socket.AF_INET if family == -1 else family
                kind = _stdlib_socket.SOCK_STREAM if type == -1 else type
                return blocking.SMBDirectSocket(
                    family, kind, proto, parameters=route.parameters, provider=route.provider
                )
            return super().__new__(cls, family, type, proto, fileno)  # type: ignore[call-arg]

        def connect(self, address: Any) -> None:
            if (
                self._smbdirect is not None
                or trio.lowlevel.in_trio_run()  # the engine's own TCP, and trio programs
                or getattr(_tcp_only, "on", False)
                or self.type != _stdlib_socket.SOCK_STREAM
                or self.family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6)
                or not isinstance(address, tuple)
            ):
                super().connect(address)
                return
            if route.takes(address):
                target = _mapped(port_map, address)
                try:
                    self._smbdirect = route.connect(target, self.family, self.gettimeout())
                    _ORIGINAL_SOCKET.close(self)  # the TCP descriptor is never used now
                    _log_route(route, address, target, "SMB-Direct")
                    stats.track(self._smbdirect, "run")
                    return
                except OSError as exc:
                    if not _falls_back(route, address, exc):
                        raise
                _log_route(route, address, address, "TCP, after SMB-Direct failed")
            else:
                _log_route(route, address, address, "TCP")
            super().connect(address)

        def connect_ex(self, address: Any) -> int:
            try:
                self.connect(address)
            except OSError as exc:
                return exc.errno or errno.EIO
            return 0

        def close(self) -> None:
            if self._smbdirect is not None:
                self._smbdirect.close()
            super().close()

        def __repr__(self) -> str:
            return repr(self._smbdirect) if self._smbdirect is not None else super().__repr__()

    def delegate(name: str) -> Any:
        stdlib_method = getattr(_ORIGINAL_SOCKET, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self._smbdirect is not None:
                return getattr(self._smbdirect, name)(*args, **kwargs)
            return stdlib_method(self, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = stdlib_method.__doc__
        return method

    for name in (
        "send",
        "sendall",
        "sendmsg",
        "recv",
        "recv_into",
        "recvmsg",
        "recvmsg_into",
        "setsockopt",
        "getsockopt",
        "settimeout",
        "gettimeout",
        "setblocking",
        "getblocking",
        "shutdown",
        "fileno",
        "getsockname",
        "getpeername",
    ):
        setattr(RoutedSocket, name, delegate(name))
    return RoutedSocket


class Patch:
    """The stdlib's socket module, patched; undo with :meth:`undo` or by leaving ``with``."""

    def __init__(self, route: Route, port_map: Mapping[int, int] | None = None) -> None:
        self.route = route
        #: Destination port -> the port its SMB-Direct connection goes to.
        self.port_map: dict[int, int] = dict(port_map or {})
        self._socket_class = _routed_socket_class(route, self.port_map)
        self._active = False

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: Any = _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: Any = None,
        *,
        all_errors: bool = False,
    ) -> Any:
        """``socket.create_connection``, over SMB-Direct for routed addresses."""
        if not self.route.takes(address):
            _log_route(self.route, address, address, "TCP")
            with _unrouted():  # logged once, not again by the socket it makes
                return _ORIGINAL_CREATE_CONNECTION(address, timeout, source_address, all_errors=all_errors)
        requested, address = address, _mapped(self.port_map, address)
        if self.route.fallback:
            try:
                sock = self._first_smbdirect(address, timeout, source_address)
            except OSError as exc:
                if not _falls_back(self.route, address, exc):
                    raise
                _log_route(self.route, requested, requested, "TCP, after SMB-Direct failed")
                with _unrouted():
                    return _ORIGINAL_CREATE_CONNECTION(requested, timeout, source_address, all_errors=all_errors)
        else:
            options: dict[str, Any] = {}
            if timeout is not _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                options["timeout"] = timeout
            sock = blocking.create_connection(
                address,
                source_address=source_address,
                all_errors=all_errors,
                bytestream=self.route.bytestream,
                parameters=self.route.parameters,
                provider=self.route.provider,
                **options,
            )
        self.route.sockets.add(sock)
        _log_route(self.route, requested, address, "SMB-Direct")
        stats.track(sock, "run")
        return sock

    def _first_smbdirect(self, address: tuple[str, int], timeout: Any, source: Any) -> blocking.SMBDirectSocket:
        """SMB-Direct to the first of the host's addresses that takes it, within one connect timeout.

        Only a refusal moves on to the next address: a peer that answered in
        another protocol, or stayed silent until the timeout, is the host
        telling that it does not speak SMB-Direct, and trying its other
        addresses would only make the fallback wait for more timeouts.
        """
        if timeout is _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
            timeout = _stdlib_socket.getdefaulttimeout()
        found = _stdlib_socket.getaddrinfo(address[0], address[1], 0, _stdlib_socket.SOCK_STREAM)
        refused: OSError | None = None
        for family, _, _, _, sockaddr in found:
            try:
                return self.route.connect(sockaddr, family, timeout, source)
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    raise
                refused = refused or exc
        raise refused or OSError(errno.EHOSTUNREACH, f"getaddrinfo gave no address for {address[0]!r}")

    def apply(self) -> Patch:
        """Patch the ``socket`` module (``RuntimeError`` if it is patched already); returns the patch."""
        if _stdlib_socket.socket is not _ORIGINAL_SOCKET:
            raise RuntimeError("the socket module is already patched")
        _stdlib_socket.socket = self._socket_class  # type: ignore[misc]
        _stdlib_socket.create_connection = self.create_connection  # type: ignore[assignment]
        self._active = True
        return self

    def undo(self) -> None:
        """Put the ``socket`` module back as it was."""
        if self._active:
            _stdlib_socket.socket = _ORIGINAL_SOCKET  # type: ignore[misc]
            _stdlib_socket.create_connection = _ORIGINAL_CREATE_CONNECTION
            self._active = False

    def __enter__(self) -> Patch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def patch(
    ports: Iterable[int] | None = (SMBDIRECT_PORT, SMBDIRECT_IWARP_PORT),
    hosts: Iterable[str] = (),
    *,
    fallback: bool = False,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
    fit_smb_clients: bool = True,
    port_map: Mapping[int, int] | None = None,
) -> Patch:
    """Patch the socket module now; returns a :class:`Patch` usable as a context manager.

    ``ports`` None routes every port; ``parameters`` apply to each SMB-Direct
    connection (for example ``Parameters().with_large_messages()`` towards the
    gateway).  ``fit_smb_clients`` applies :func:`smbdirect_socket.smb.clients.fit_sizes`.
    ``port_map`` (destination port -> SMB-Direct port) routes its ports too,
    and connects them to the mapped port.
    """
    if fit_smb_clients:
        from .smb.clients import fit_sizes  # the SMB part, only when asked for

        fit_sizes()
    port_map = dict(port_map or {})
    for source, target in port_map.items():
        if not (0 < source < 65536 and 0 < target < 65536):
            raise ValueError(f"port_map {source}={target}: ports are 1-65535")
    routed = None if ports is None else frozenset(ports) | port_map.keys()
    route = Route(routed, frozenset(hosts), fallback, bytestream, parameters, provider)
    return Patch(route, port_map).apply()
