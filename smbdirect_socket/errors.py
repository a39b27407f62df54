"""Exceptions of the protocol core.

Like h11, the core tells apart who broke the rules: the peer
(:class:`RemoteProtocolError`, the connection is terminated) or the local
caller (:class:`LocalProtocolError`, nothing is sent and the connection lives
on).  Each carries the errno a kernel socket would report for it, so the
socket layers can turn it into the stdlib's ``OSError`` without a table.
"""

from __future__ import annotations

import errno as _errno


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
