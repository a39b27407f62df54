"""Memory registrations of a software queue pair: tokens, bounds, rights.

Every remote access goes through :meth:`MemoryTable.lookup`, which checks the
token, the registration's validity, its access rights and its bounds before
it hands out a view of exactly the bytes asked for.  Nothing else in the
software provider touches registered memory on the peer's behalf.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable

from ..base import Access, MemoryRegion

__all__ = ["AccessFault", "MemoryAccessError", "MemoryTable", "SoftMemoryRegion"]


class AccessFault(enum.Enum):
    """Why a remote access was refused (maps to RFC 5040 error codes)."""

    INVALID_TOKEN = "invalid token"
    BASE_BOUNDS = "outside the registration"
    ACCESS_RIGHTS = "access rights violation"
    CANNOT_INVALIDATE = "token cannot be invalidated"


class MemoryAccessError(Exception):
    def __init__(self, fault: AccessFault, detail: str) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault


class SoftMemoryRegion(MemoryRegion):
    def __init__(self, table: MemoryTable, token: int, buffer: memoryview, access: Access, address: int) -> None:
        self._table = table
        self.token = token
        self.buffer = buffer
        self.access = access
        self.address = address
        self.length = len(buffer)
        self._valid = True

    @property
    def valid(self) -> bool:
        return self._valid

    def __repr__(self) -> str:
        state = "valid" if self._valid else "invalid"
        return f"<SoftMemoryRegion token=0x{self.token:08x} length={self.length} {self.access!r} {state}>"


class MemoryTable:
    """The registrations of one protection domain.

    Tokens are iWARP STags: a 24-bit index (random start, like siw) and an
    8-bit key that changes with each registration of the same index.
    """

    def __init__(self, randbelow: Callable[[int], int] = secrets.randbelow) -> None:
        self._regions: dict[int, SoftMemoryRegion] = {}
        self._randbelow = randbelow  # tests pass a seeded one, to get the same tokens twice
        self._next_index = randbelow(1 << 24)

    def register(self, buffer: memoryview, access: Access, address: int = 0) -> SoftMemoryRegion:
        view = memoryview(buffer).cast("B")
        if access & (Access.LOCAL_WRITE | Access.REMOTE_WRITE) and view.readonly:
            raise ValueError("a read-only buffer cannot be registered for writing")
        if address < 0 or address + len(view) > 1 << 64:
            raise ValueError("registration does not fit the 64-bit tagged offset space")
        while True:
            index = self._next_index
            self._next_index = (index + 1) % (1 << 24)
            token = (index << 8) | self._randbelow(256)
            if index and token >> 8 not in self._regions:
                break
        region = SoftMemoryRegion(self, token, view, Access(access), address)
        self._regions[token >> 8] = region
        return region

    @property
    def regions(self) -> dict[int, SoftMemoryRegion]:
        """The registrations by index (``token >> 8``), for the compiled fast path to look up."""
        return self._regions

    def deregister(self, region: SoftMemoryRegion) -> None:
        region._valid = False
        if self._regions.get(region.token >> 8) is region:
            del self._regions[region.token >> 8]

    def _find(self, token: int) -> SoftMemoryRegion:
        region = self._regions.get(token >> 8)
        if region is None or region.token != token:
            raise MemoryAccessError(AccessFault.INVALID_TOKEN, f"0x{token:08x} is not registered")
        if not region.valid:
            raise MemoryAccessError(AccessFault.INVALID_TOKEN, f"0x{token:08x} was invalidated")
        return region

    def lookup(self, token: int, address: int, length: int, access: Access) -> memoryview:
        """The registered bytes ``[address, address + length)`` of ``token``, if allowed."""
        region = self._find(token)
        if not region.access & access:
            raise MemoryAccessError(
                AccessFault.ACCESS_RIGHTS,
                f"0x{token:08x} does not allow {access.name.lower()}",  # type: ignore[union-attr]
            )
        start = address - region.address
        if start < 0 or length < 0 or start + length > region.length:
            raise MemoryAccessError(
                AccessFault.BASE_BOUNDS,
                f"[0x{address:x}, +{length}) is outside [0x{region.address:x}, +{region.length}) of 0x{token:08x}",
            )
        return region.buffer[start : start + length]

    def invalidate(self, token: int) -> SoftMemoryRegion:
        """Remote invalidation (send with invalidate)."""
        try:
            region = self._find(token)
        except MemoryAccessError as exc:
            raise MemoryAccessError(AccessFault.CANNOT_INVALIDATE, str(exc)) from None
        region._valid = False
        return region
