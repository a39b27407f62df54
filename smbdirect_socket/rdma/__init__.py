"""The RDMA engine: one async interface, several providers.

Providers by name:

* ``"softiwarp"`` (:class:`~smbdirect_socket.rdma.soft.provider.SoftIwarpProvider`):
  software iWARP over TCP, the embedded default; runs on any machine and
  talks to Linux siw, iWARP NICs and other instances of this library.
* ``"verbs"`` (:class:`~smbdirect_socket.rdma.verbs.provider.VerbsProvider`): real
  RDMA devices (InfiniBand, RoCE, iWARP NICs, and Linux rxe and siw) through
  pyverbs and rdma_cm.

:func:`get_provider` with no name reads ``SMBDIRECT_PROVIDER`` from the
environment and falls back to ``"softiwarp"``.
"""

from __future__ import annotations

import os
from typing import Any

from .base import (
    Access,
    Completion,
    ConnectionRequest,
    Disconnected,
    Listener,
    MemoryRegion,
    Opcode,
    Provider,
    QueuePair,
    RdmaError,
    Status,
)

__all__ = [
    "Access",
    "Completion",
    "ConnectionRequest",
    "Disconnected",
    "Listener",
    "MemoryRegion",
    "Opcode",
    "Provider",
    "QueuePair",
    "RdmaError",
    "Status",
    "get_provider",
]

PROVIDERS = ("softiwarp", "verbs")


def get_provider(name: str | None = None, **options: Any) -> Provider:
    """The provider called ``name`` (default: ``$SMBDIRECT_PROVIDER`` or softiwarp)."""
    name = name or os.environ.get("SMBDIRECT_PROVIDER") or "softiwarp"
    if name == "softiwarp":
        from .soft.provider import SoftIwarpProvider

        return SoftIwarpProvider(**options)
    if name == "verbs":
        from .verbs.provider import VerbsProvider

        return VerbsProvider(**options)
    raise ValueError(f"unknown RDMA provider {name!r}; known: {', '.join(PROVIDERS)}")
