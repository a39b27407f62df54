"""Memory of the verbs provider: registered slots for sends and receives, regions for the peer."""

from __future__ import annotations

import collections
import contextlib
import ctypes
from typing import Any

from ..base import Access, MemoryRegion
from .loader import load_pyverbs

__all__ = ["SMALLEST_SLOT", "Slot", "SlotPool", "VerbsMemoryRegion", "buffer_address", "register_region"]

SMALLEST_SLOT = 4096
#: Slots are registered this many bytes at a time (one memory region for many
#: slots): a connection's receive window grows a buffer a message, and a
#: registration per buffer would cost a system call and a page pinning each.
REGISTRATION_CHUNK = 256 * 1024


def buffer_address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class Slot:
    """A registered buffer of ours, for sends and receives: a part of one registration."""

    __slots__ = ("address", "mr", "view")

    def __init__(self, mr: Any, view: memoryview, address: int) -> None:
        self.mr = mr
        self.view = view
        self.address = address

    @property
    def size(self) -> int:
        return len(self.view)


class SlotPool:
    """Registered slots in power-of-two sizes, reused (registration is the costly part)."""

    def __init__(self, pd: Any) -> None:
        self._pd = pd
        self._free: dict[int, list[Slot]] = collections.defaultdict(list)
        self._regions: list[Any] = []

    def take(self, size: int) -> Slot:
        size = max(SMALLEST_SLOT, 1 << max(size - 1, 0).bit_length())
        free = self._free[size]
        if not free:
            self._register(size, free)
        return free.pop()

    def _register(self, size: int, free: list[Slot]) -> None:
        """Register a chunk of slots of ``size`` bytes at once."""
        count = max(1, REGISTRATION_CHUNK // size)
        view = memoryview(bytearray(count * size))
        address = buffer_address(view)
        mr = load_pyverbs()["mr"].MR(self._pd, len(view), Access.LOCAL_WRITE, address=address)
        self._regions.append(mr)
        free.extend(Slot(mr, view[i * size : (i + 1) * size], address + i * size) for i in reversed(range(count)))

    def give(self, slot: Slot) -> None:
        self._free[slot.size].append(slot)

    def close(self) -> None:
        for mr in self._regions:
            mr.close()
        self._regions.clear()
        self._free.clear()


class VerbsMemoryRegion(MemoryRegion):
    """A memory region registered for the peer: token is the rkey, address the virtual address."""

    def __init__(self, mr: Any, view: memoryview, access: Access, address: int) -> None:
        self.mr: Any = mr
        self.view = view  # keeps the buffer alive and its size fixed while registered
        self.token = mr.rkey
        self.address = address
        self.length = len(view)
        self.access = access
        self.invalidated = False  # by the peer's send with invalidate
        #: The type 2 memory window the peer addresses instead, where the device has them.
        self.window: Any = None

    @property
    def valid(self) -> bool:
        return self.mr is not None and not self.invalidated

    def close(self) -> None:
        if self.window is not None:
            with contextlib.suppress(Exception):
                self.window.close()
            self.window = None
        if self.mr is not None:
            self.mr.close()
            self.mr = None
            self.view.release()

    def __repr__(self) -> str:
        return f"<VerbsMemoryRegion token=0x{self.token:08x} length={self.length} {self.access!r}>"


def register_region(pd: Any, buffer: memoryview, access: Access) -> VerbsMemoryRegion:
    """Register ``buffer`` in place, or a copy of it when it is read-only."""
    view = memoryview(buffer).cast("B")
    if view.readonly or not view.contiguous:
        view = memoryview(bytearray(view))
    if not len(view):
        raise ValueError("cannot register an empty buffer")
    address = buffer_address(view)
    mr = load_pyverbs()["mr"].MR(pd, len(view), int(access), address=address)
    return VerbsMemoryRegion(mr, view, access, address)
