"""Fit unmodified SMB clients' I/O sizes to an SMB-Direct connection.

Over SMB-Direct an SMB2 message travels inline only up to the connection's
max fragmented size (Linux peers reassemble 173910 bytes), but SMB clients
size READ, WRITE and transact requests by the server's SMB2 limits (often
8 MiB).  cifs.ko clamps its sizes to what the transport allows; this module
does the same for smbprotocol and impacket, on the client side, after the
SMB2 negotiate.  No SMB2 byte on the wire is rewritten.

One line, before the client connects::

    smbdirect_socket.smb.clients.fit_sizes()

:func:`smbdirect_socket.patch` and ``python -m smbdirect_socket.run`` do it
for you.  Connections that are not SMB-Direct keep their sizes.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import attrs

from ..blocking import SMBDirectSocket

__all__ = ["IoLimits", "fit_sizes", "io_limits"]

#: Room for the SMB2 header (64), the READ/WRITE body (48), a transform
#: header (52) and padding; I/O sizes are then rounded down to 4 KiB.
_SMB2_OVERHEAD = 1024
_PAGE = 4096


@attrs.frozen
class IoLimits:
    """The largest SMB2 read, write and transact payloads a connection carries inline."""

    read: int
    write: int
    transact: int


def _smbdirect_socket(sock: Any) -> SMBDirectSocket | None:
    if isinstance(sock, SMBDirectSocket):
        return sock
    inner = getattr(sock, "_smbdirect", None)  # a socket the patch routed to SMB-Direct
    return inner if isinstance(inner, SMBDirectSocket) else None


def io_limits(sock: Any) -> IoLimits | None:
    """The limits of ``sock``'s connection, or None if it is not SMB-Direct."""
    smbdirect = _smbdirect_socket(sock)
    if smbdirect is None:
        return None
    info = smbdirect.info()

    def payload(message_limit: int) -> int:
        return max(_PAGE, (message_limit - _SMB2_OVERHEAD) // _PAGE * _PAGE)

    read = payload(info.max_fragmented_receive_size)  # the READ response comes to us
    write = payload(info.max_fragmented_send_size)  # the WRITE request goes to the peer
    return IoLimits(read, write, min(read, write))


def _after(cls: Any, name: str, adjust: Callable[[Any], None]) -> None:
    """Make ``cls.name`` call ``adjust(self)`` after it returns (once, however often asked)."""
    method = getattr(cls, name)
    if getattr(method, "_fits_smbdirect", False):
        return

    @functools.wraps(method)
    def fitted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        adjust(self)
        return result

    fitted._fits_smbdirect = True  # type: ignore[attr-defined]
    setattr(cls, name, fitted)


def _fit_smbprotocol(module: Any) -> None:
    def adjust(connection: Any) -> None:
        limits = io_limits(getattr(connection.transport, "_sock", None))
        if limits is not None:
            connection.max_read_size = min(connection.max_read_size, limits.read)
            connection.max_write_size = min(connection.max_write_size, limits.write)
            connection.max_transact_size = min(connection.max_transact_size, limits.transact)

    _after(module.Connection, "connect", adjust)  # the negotiate happens inside connect()


def _fit_impacket(module: Any) -> None:
    def adjust(smb3: Any) -> None:
        limits = io_limits(smb3._NetBIOSSession.get_socket())
        if limits is not None:
            state = smb3._Connection
            state["MaxReadSize"] = min(state["MaxReadSize"], limits.read)
            state["MaxWriteSize"] = min(state["MaxWriteSize"], limits.write)
            state["MaxTransactSize"] = min(state["MaxTransactSize"], limits.transact)

    _after(module.SMB3, "negotiateSession", adjust)


def fit_sizes() -> list[str]:
    """Hook smbprotocol and impacket (those installed); returns the ones hooked."""
    hooked = []
    for name, fit in (("smbprotocol.connection", _fit_smbprotocol), ("impacket.smb3", _fit_impacket)):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        fit(module)
        hooked.append(name.partition(".")[0])
    return hooked
