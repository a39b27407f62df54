"""Exceptions of the protocol core.

Like h11, the core tells apart who broke the rules: the peer
(:class:`RemoteProtocolError`, the connection is terminated) or the local
caller (:class:`LocalProtocolError`, nothing is sent and the connection lives
on).  Each carries the errno a kernel socket would report for it, so
:func:`socket_error` turns it, or an engine error, into the stdlib's
``OSError`` without a table.
"""

from __future__ import annotations

import errno as _errno
import os as _os

_PACKAGE = __name__.split(".")[0]


class ProtocolError(Exception):
    """Base class of every SMB-Direct protocol error.

    ``errno`` is what a kernel ``IPPROTO_SMBDIRECT`` socket would report.
    """

    errno: int = _errno.ECONNABORTED

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class PDUError(ProtocolError):
    """A buffer is not a valid SMB-Direct PDU: ``field`` broke ``rule``."""

    def __init__(self, pdu: str, field: str, rule: str) -> None:
        super().__init__(f"{pdu}.{field}: {rule}")
        self.pdu = pdu
        self.field = field
        self.rule = rule


class RemoteProtocolError(ProtocolError):
    """The peer broke [MS-SMBD]; the connection is terminated."""


class LocalProtocolError(ProtocolError):
    """The caller misused the protocol object; nothing was sent."""

    errno = _errno.EINVAL


def socket_error(error: BaseException | int, message: str = "") -> OSError:
    """The ``OSError`` a kernel socket would give: the one translation every front door uses.

    ``error`` is an errno (with ``message``) or an error of the protocol or
    the engine, which carries its errno from where it was raised
    (``ECONNABORTED`` when it carries none).  The stdlib picks the subclass
    from the errno (``BlockingIOError`` for ``EAGAIN``, ``TimeoutError`` for
    ``ETIMEDOUT``, ``ConnectionResetError``, ...), so callers see the
    exceptions a TCP socket raises and none of this package's own classes;
    an ``OSError`` of the stdlib's passes through unchanged.
    """
    if isinstance(error, int):
        return OSError(error, message or _os.strerror(error))
    if isinstance(error, OSError) and not type(error).__module__.startswith(_PACKAGE):
        return error
    code = getattr(error, "errno", None) or _errno.ECONNABORTED
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return OSError(code, f"{message}: {text}" if message else text)
