"""Wire layouts declared once: each header's fields, in wire order, with their sizes.

A :class:`Layout` gives the :class:`struct.Struct` that packs and unpacks the
header and the offset of each field.  The PDU classes pack and unpack through
it, and the compiled wire core's offsets are generated from it
(``smbdirect_socket/_wire/gen_layout.py``), so the two cannot drift apart.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["Layout"]


class Layout:
    """Fields of one header, in wire order: ``(name, struct code)`` pairs."""

    def __init__(self, name: str, fields: Sequence[tuple[str, str]], byte_order: str) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.names = tuple(field for field, _ in self.fields)
        self.struct = struct.Struct(byte_order + "".join(code for _, code in self.fields))
        self.size = self.struct.size
        offsets = {}
        for index, (field, _) in enumerate(self.fields):
            prefix = "".join(code for _, code in self.fields[:index])
            offsets[field] = struct.calcsize(byte_order + prefix)
        self.offsets = offsets

    def pack(self, *values: int) -> bytes:
        return self.struct.pack(*values)

    def unpack(self, buffer: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, int]:
        """The fields by name."""
        return dict(zip(self.names, self.struct.unpack_from(buffer, offset), strict=True))
