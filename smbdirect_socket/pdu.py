"""The SMB-Direct wire codec ([MS-SMBD] 2.2).

Each PDU is a frozen attrs class whose fields are the spec's, in snake_case.
Construction range-checks every field (:class:`ValueError`); ``unpack``
checks the structure of a received buffer and raises :class:`PDUError`
naming the field and the rule, never ``IndexError`` or ``struct.error``.
Payloads are memoryviews into the received buffer: nothing is copied.
All integers are little-endian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .constants import (
    BUFFER_DESCRIPTOR_V1_SIZE,
    DATA_TRANSFER_DATA_OFFSET,
    DATA_TRANSFER_HEADER_SIZE,
    SMBDIRECT_VERSION,
)
from .errors import PDUError
from .layout import Layout

__all__ = [
    "BufferDescriptorV1",
    "DataTransferMessage",
    "NegotiateRequest",
    "NegotiateResponse",
]

Buffer = bytes | bytearray | memoryview

_T = TypeVar("_T")


def _unsigned(bits: int) -> Callable[[Any, attrs.Attribute[int], int], None]:
    limit = 1 << bits

    def check(_instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or not 0 <= value < limit:
            raise ValueError(f"{attribute.name} must be a u{bits}, got {value!r}")

    return check


u16 = _unsigned(16)
u32 = _unsigned(32)
u64 = _unsigned(64)


def _need(pdu: str, buffer: Buffer, size: int) -> None:
    if len(buffer) < size:
        raise PDUError(pdu, "length", f"{len(buffer)} bytes is shorter than the {size}-byte minimum")


def _pack(layout: Layout, pdu: object) -> bytes:
    return layout.struct.pack(*(getattr(pdu, name) for name in layout.names))


def _unpack(cls: type[_T], layout: Layout, buffer: Buffer) -> _T:
    _need(layout.name, buffer, layout.size)
    return cls(**layout.unpack(buffer))


NEGOTIATE_REQUEST = Layout(
    "NegotiateRequest",
    (
        ("min_version", "H"),
        ("max_version", "H"),
        ("reserved", "H"),
        ("credits_requested", "H"),
        ("preferred_send_size", "I"),
        ("max_receive_size", "I"),
        ("max_fragmented_size", "I"),
    ),
    "<",
)
NEGOTIATE_RESPONSE = Layout(
    "NegotiateResponse",
    (
        ("min_version", "H"),
        ("max_version", "H"),
        ("negotiated_version", "H"),
        ("reserved", "H"),
        ("credits_requested", "H"),
        ("credits_granted", "H"),
        ("status", "I"),
        ("max_read_write_size", "I"),
        ("preferred_send_size", "I"),
        ("max_receive_size", "I"),
        ("max_fragmented_size", "I"),
    ),
    "<",
)
DATA_TRANSFER = Layout(
    "DataTransferMessage",
    (
        ("credits_requested", "H"),
        ("credits_granted", "H"),
        ("flags", "H"),
        ("reserved", "H"),
        ("remaining_data_length", "I"),
        ("data_offset", "I"),
        ("data_length", "I"),
    ),
    "<",
)
#: What a batch of received data-transfer messages can break, by the code the
#: compiled core returns (its index); ``ok`` is no fault.
BATCH_FAULTS = (
    "ok",
    "length",
    "data_offset_alignment",
    "data_offset_overlap",
    "data_length",
    "no_credit",
    "credits_requested",
    "message_size",
    "receive_size",
    "credits_granted",
    "continuation",
)
BUFFER_DESCRIPTOR_V1 = Layout("BufferDescriptorV1", (("offset", "Q"), ("token", "I"), ("length", "I")), "<")


@attrs.frozen
class NegotiateRequest:
    """SMBDirect Negotiate Request, 20 bytes ([MS-SMBD] 2.2.1)."""

    credits_requested: int = attrs.field(validator=u16)
    preferred_send_size: int = attrs.field(validator=u32)
    max_receive_size: int = attrs.field(validator=u32)
    max_fragmented_size: int = attrs.field(validator=u32)
    min_version: int = attrs.field(default=SMBDIRECT_VERSION, validator=u16)
    max_version: int = attrs.field(default=SMBDIRECT_VERSION, validator=u16)
    reserved: int = attrs.field(default=0, validator=u16)

    def pack(self) -> bytes:
        return _pack(NEGOTIATE_REQUEST, self)

    @classmethod
    def unpack(cls, buffer: Buffer) -> NegotiateRequest:
        return _unpack(cls, NEGOTIATE_REQUEST, buffer)


@attrs.frozen
class NegotiateResponse:
    """SMBDirect Negotiate Response, 32 bytes ([MS-SMBD] 2.2.2)."""

    status: int = attrs.field(validator=u32)
    credits_requested: int = attrs.field(default=0, validator=u16)
    credits_granted: int = attrs.field(default=0, validator=u16)
    max_read_write_size: int = attrs.field(default=0, validator=u32)
    preferred_send_size: int = attrs.field(default=0, validator=u32)
    max_receive_size: int = attrs.field(default=0, validator=u32)
    max_fragmented_size: int = attrs.field(default=0, validator=u32)
    negotiated_version: int = attrs.field(default=SMBDIRECT_VERSION, validator=u16)
    min_version: int = attrs.field(default=SMBDIRECT_VERSION, validator=u16)
    max_version: int = attrs.field(default=SMBDIRECT_VERSION, validator=u16)
    reserved: int = attrs.field(default=0, validator=u16)

    def pack(self) -> bytes:
        return _pack(NEGOTIATE_RESPONSE, self)

    @classmethod
    def unpack(cls, buffer: Buffer) -> NegotiateResponse:
        return _unpack(cls, NEGOTIATE_RESPONSE, buffer)


def _check_data_offset(instance: DataTransferMessage, _attribute: object, value: int) -> None:
    u32(instance, _attribute, value)  # type: ignore[arg-type]
    if value % 8:
        raise ValueError(f"data_offset must be 8-byte aligned, got {value}")
    if len(instance.data) and value < DATA_TRANSFER_HEADER_SIZE:
        raise ValueError(f"data_offset {value} overlaps the 20-byte header")


@attrs.frozen
class DataTransferMessage:
    """SMBDirect Data Transfer Message ([MS-SMBD] 2.2.3).

    ``data_length`` is ``len(data)``; ``data_offset`` defaults to 24 (what Linux
    and Windows send) when there is data and to 0 when there is none.
    """

    credits_requested: int = attrs.field(validator=u16)
    credits_granted: int = attrs.field(validator=u16)
    flags: int = attrs.field(default=0, validator=u16)
    remaining_data_length: int = attrs.field(default=0, validator=u32)
    data: Buffer = attrs.field(default=b"", hash=False)
    data_offset: int = attrs.field(validator=_check_data_offset)
    reserved: int = attrs.field(default=0, validator=u16)

    @data_offset.default
    def _default_data_offset(self) -> int:
        return DATA_TRANSFER_DATA_OFFSET if len(self.data) else 0

    @property
    def data_length(self) -> int:
        return len(self.data)

    def pack(self) -> bytes:
        length = len(self.data)
        if length > 0xFFFFFFFF:
            raise ValueError("data_length must be a u32")
        header = _pack(DATA_TRANSFER, self)
        if not length:
            return header
        return b"".join((header, bytes(self.data_offset - DATA_TRANSFER_HEADER_SIZE), self.data))

    @classmethod
    def unpack(cls, buffer: Buffer) -> DataTransferMessage:
        requested, granted, flags, remaining, data, offset, reserved = _decode_data_transfer(buffer)
        return cls(requested, granted, flags, remaining, data, offset, reserved)


_DATA_HEADER = DATA_TRANSFER.struct
_PADDING = bytes(DATA_TRANSFER_DATA_OFFSET - DATA_TRANSFER_HEADER_SIZE)


def encode_data_transfer(
    credits_requested: int, credits_granted: int, flags: int, remaining: int, data: Buffer
) -> bytes:
    """Pack a Data Transfer Message with data at offset 24: the hot path of
    :class:`DataTransferMessage`, for callers whose fields are already in range."""
    if not data:
        return _DATA_HEADER.pack(credits_requested, credits_granted, flags, 0, remaining, 0, 0)
    header = _DATA_HEADER.pack(
        credits_requested, credits_granted, flags, 0, remaining, DATA_TRANSFER_DATA_OFFSET, len(data)
    )
    return b"".join((header, _PADDING, data))


def decode_data_transfer(buffer: Buffer) -> tuple[int, int, int, int, memoryview]:
    """Check and split a Data Transfer Message without building an object:
    ``(credits_requested, credits_granted, flags, remaining_data_length, data)``."""
    requested, granted, flags, remaining, data, _offset, _reserved = _decode_data_transfer(buffer)
    return requested, granted, flags, remaining, data


def _decode_data_transfer(buffer: Buffer) -> tuple[int, int, int, int, memoryview, int, int]:
    name = "DataTransferMessage"
    _need(name, buffer, DATA_TRANSFER_HEADER_SIZE)
    (requested, granted, flags, reserved, remaining, offset, length) = _DATA_HEADER.unpack_from(buffer)
    if offset % 8:
        raise PDUError(name, "data_offset", f"{offset} is not 8-byte aligned")
    if length:
        if offset < DATA_TRANSFER_HEADER_SIZE:
            raise PDUError(name, "data_offset", f"{offset} overlaps the 20-byte header")
        if offset + length > len(buffer):
            raise PDUError(
                name,
                "data_length",
                f"data_offset {offset} + data_length {length} exceeds the {len(buffer)}-byte message",
            )
    return requested, granted, flags, remaining, memoryview(buffer)[offset : offset + length], offset, reserved


@attrs.frozen
class BufferDescriptorV1:
    """One registered buffer of the peer ([MS-SMBD] 2.2.3.1), 16 bytes."""

    offset: int = attrs.field(validator=u64)
    token: int = attrs.field(validator=u32)
    length: int = attrs.field(validator=u32)

    def pack(self) -> bytes:
        return _pack(BUFFER_DESCRIPTOR_V1, self)

    @classmethod
    def unpack(cls, buffer: Buffer) -> BufferDescriptorV1:
        return _unpack(cls, BUFFER_DESCRIPTOR_V1, buffer)

    @classmethod
    def pack_list(cls, descriptors: list[BufferDescriptorV1]) -> bytes:
        return b"".join(d.pack() for d in descriptors)

    @classmethod
    def unpack_list(cls, buffer: Buffer) -> list[BufferDescriptorV1]:
        """Decode the descriptor array of an SMB2 READ/WRITE channel info."""
        if len(buffer) % BUFFER_DESCRIPTOR_V1_SIZE:
            raise PDUError(
                "BufferDescriptorV1",
                "length",
                f"{len(buffer)} bytes is not a multiple of {BUFFER_DESCRIPTOR_V1_SIZE}",
            )
        view = memoryview(buffer)
        return [
            cls.unpack(view[i : i + BUFFER_DESCRIPTOR_V1_SIZE]) for i in range(0, len(view), BUFFER_DESCRIPTOR_V1_SIZE)
        ]
