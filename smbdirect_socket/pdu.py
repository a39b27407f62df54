"""The SMB-Direct wire codec ([MS-SMBD] 2.2).

Each PDU is a frozen attrs class whose fields are the spec's, in snake_case.
Construction range-checks every field (:class:`ValueError`); ``unpack``
checks the structure of a received buffer and raises :class:`PDUError`
naming the field and the rule, never ``IndexError`` or ``struct.error``.
Payloads are memoryviews into the received buffer: nothing is copied.
All integers are little-endian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import attrs

from ._wire import core as _core
from .constants import (
    BUFFER_DESCRIPTOR_V1_SIZE,
    DATA_TRANSFER_DATA_OFFSET,
    DATA_TRANSFER_HEADER_SIZE,
    SMB_DIRECT_RESPONSE_REQUESTED,
    SMBDIRECT_VERSION,
)
from .errors import PDUError, ProtocolError, RemoteProtocolError
from .layout import Layout

__all__ = [
    "BufferDescriptorV1",
    "DataTransferMessage",
    "NegotiateRequest",
    "NegotiateResponse",
    "ReceiveLimits",
    "ReceiveState",
    "ReceivedBatch",
    "check_data_transfers",
    "encode_data_transfer_list",
    "encode_data_transfers",
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
        """The PDU's 20 bytes."""
        return _pack(NEGOTIATE_REQUEST, self)

    @classmethod
    def unpack(cls, buffer: Buffer) -> NegotiateRequest:
        """Decode a Negotiate Request (``PDUError`` naming the field that breaks a rule)."""
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
        """The PDU's 32 bytes."""
        return _pack(NEGOTIATE_RESPONSE, self)

    @classmethod
    def unpack(cls, buffer: Buffer) -> NegotiateResponse:
        """Decode a Negotiate Response (``PDUError`` naming the field that breaks a rule)."""
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
        """The PDU: its header, padding to the data offset, and the data."""
        length = len(self.data)
        if length > 0xFFFFFFFF:
            raise ValueError("data_length must be a u32")
        header = _pack(DATA_TRANSFER, self)
        if not length:
            return header
        return b"".join((header, bytes(self.data_offset - DATA_TRANSFER_HEADER_SIZE), self.data))

    @classmethod
    def unpack(cls, buffer: Buffer) -> DataTransferMessage:
        """Decode a Data Transfer Message (``PDUError`` naming the field that breaks a rule)."""
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
        """The descriptor's 16 bytes."""
        return _pack(BUFFER_DESCRIPTOR_V1, self)

    @classmethod
    def unpack(cls, buffer: Buffer) -> BufferDescriptorV1:
        """Decode one descriptor."""
        return _unpack(cls, BUFFER_DESCRIPTOR_V1, buffer)

    @classmethod
    def pack_list(cls, descriptors: list[BufferDescriptorV1]) -> bytes:
        """The descriptor array of an SMB2 READ/WRITE channel info."""
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


# ---- batches: the N fragments of a message, a batch of received messages ------------


def encode_data_transfers(
    credits_requested: int, credits_granted: int, flags: int, message: Buffer, start: int, count: int, chunk: int
) -> bytes:
    """Up to ``count`` Data Transfer Messages carrying ``message[start:]`` in pieces of
    ``chunk`` bytes, in one buffer: the first grants ``credits_granted``, the rest 0,
    each says how much of the message is left after it.  The caller decides the count
    and the grant (its credits); each message is ``24 + len(piece)`` bytes."""
    if _core is not None:
        encoded: bytes = _core.encode_data_transfers(
            credits_requested, credits_granted, flags, message, start, count, chunk
        )
        return encoded
    view = memoryview(message).cast("B")
    if not 0 <= start < len(view) or count < 1 or chunk < 1 or len(view) - start > 0xFFFFFFFF:
        raise ValueError("data-transfer batch arguments out of range")
    return b"".join(_fragments(credits_requested, credits_granted, flags, view, start, count, chunk))


def _fragments(
    credits_requested: int, credits_granted: int, flags: int, view: memoryview, start: int, count: int, chunk: int
) -> list[bytes]:
    """The pure-Python batch encoding, once its arguments are checked."""
    pdus = []
    for i in range(count):
        end = min(start + chunk, len(view))
        granted = credits_granted if i == 0 else 0
        pdus.append(encode_data_transfer(credits_requested, granted, flags, len(view) - end, view[start:end]))
        start = end
        if start == len(view):
            break
    return pdus


def encode_data_transfer_list(
    credits_requested: int,
    credits_granted: int,
    flags: int,
    message: Buffer,
    start: int,
    count: int,
    chunk: int,
) -> list[bytes]:
    """The messages of :func:`encode_data_transfers`, each in a ``bytes`` of its own:
    what a sender hands out one per posted send, with no large buffer to allocate
    and nothing to slice out of one."""
    if _core is not None:
        encoded: list[bytes] = _core.encode_data_transfer_list(
            credits_requested, credits_granted, flags, message, start, count, chunk
        )
        return encoded
    view = memoryview(message).cast("B")
    if not 0 <= start < len(view) or count < 1 or chunk < 1 or len(view) - start > 0xFFFFFFFF:
        raise ValueError("data-transfer batch arguments out of range")
    if not (0 <= credits_requested <= 0xFFFF and 0 <= credits_granted <= 0xFFFF and 0 <= flags <= 0xFFFF):
        raise ValueError("data-transfer batch arguments out of range")
    return _fragments(credits_requested, credits_granted, flags, view, start, count, chunk)


@attrs.define
class ReceiveState:
    """What a batch of received messages changes: credits both ways, reassembly, counters."""

    #: Credits granted to the peer and not yet used by a message.
    granted: int
    #: Credits the peer granted us.
    send_credits: int
    #: Bytes due to finish the message being reassembled.
    message_remaining: int = 0
    #: Receives the peer last asked to have posted (at most the limit).
    receive_target: int = 1
    #: A message asked for a prompt reply.
    response_requested: bool = False
    fragments: int = 0
    messages: int = 0
    bytes: int = 0

    def as_tuple(self) -> tuple[int, int, int, int, bool, int, int, int]:
        return attrs.astuple(self)


class ReceiveLimits(NamedTuple):
    """The negotiated limits a batch of received messages is checked against."""

    max_fragmented_size: int
    max_receive_size: int
    recv_credit_max: int


class ReceivedBatch(NamedTuple):
    """The messages applied (all, or those before ``error``), and their payloads,
    as pieces one after another: piece ``i`` ends at ``ends[i]`` (so the first
    ``gathered`` bytes of the caller's buffer hold them), and ``totals[i]`` is the
    size of the message it starts, else 0.  When nothing was gathered (no buffer
    given), ``payloads`` holds a memoryview of each piece where it lies in its
    message."""

    applied: int
    gathered: int
    ends: list[int]
    totals: list[int]
    error: ProtocolError | None
    payloads: list[memoryview] | None = None

    @property
    def pieces(self) -> list[tuple[int, int]]:
        """``(length, total)`` of each piece."""
        starts = [0, *self.ends]
        return [(end - start, total) for start, end, total in zip(starts, self.ends, self.totals, strict=False)]


_new_batch = tuple.__new__  # a ReceivedBatch without NamedTuple's Python-level __new__


def _batch_error(code: int, size: int, a: int, b: int, c: int) -> ProtocolError:
    """The error today's parser and protocol raise for a batch fault (``BATCH_FAULTS[code]``)."""
    name = "DataTransferMessage"
    fault = BATCH_FAULTS[code]
    if fault == "length":
        return PDUError(name, "length", f"{a} bytes is shorter than the {b}-byte minimum")
    if fault == "data_offset_alignment":
        return PDUError(name, "data_offset", f"{a} is not 8-byte aligned")
    if fault == "data_offset_overlap":
        return PDUError(name, "data_offset", f"{a} overlaps the 20-byte header")
    if fault == "data_length":
        return PDUError(name, "data_length", f"data_offset {a} + data_length {b} exceeds the {c}-byte message")
    if fault == "no_credit":
        return RemoteProtocolError("peer sent a message without holding a credit")
    if fault == "credits_requested":
        return RemoteProtocolError(f"{name}.credits_requested: must not be 0")
    if fault == "message_size":
        return RemoteProtocolError(
            f"{name}.remaining_data_length: message of {a} bytes exceeds the max fragmented receive size {b}"
        )
    if fault == "receive_size":
        return RemoteProtocolError(f"{name}.length: {a}-byte message exceeds the max receive size {b}")
    if fault == "credits_granted":
        return RemoteProtocolError(f"{name}.credits_granted: peer granted {a} credits in all")
    return RemoteProtocolError(
        f"{name}.remaining_data_length: {a} + data_length {b} does not continue the message ({c} bytes due)"
    )


def check_data_transfers(
    pdus: Sequence[Buffer], into: Buffer | None, state: ReceiveState, limits: ReceiveLimits
) -> ReceivedBatch:
    """Check received Data Transfer Messages in order with the rules of the protocol
    (the same field and rule in the error), apply each to ``state`` and gather its
    payload into ``into``; stop at the first fault, which the result carries.

    With ``into`` None nothing is copied: the result's ``payloads`` are views of
    the payloads where they lie (worth it for large messages, whose copy costs
    more than the objects a view takes)."""
    if _core is not None:
        applied, gathered, ends, totals, payloads, values, fault = _core.check_data_transfers(
            pdus,
            into,
            (
                state.granted,
                state.send_credits,
                state.message_remaining,
                state.receive_target,
                state.response_requested,
                state.fragments,
                state.messages,
                state.bytes,
            ),
            limits,
        )
        (
            state.granted,
            state.send_credits,
            state.message_remaining,
            state.receive_target,
            state.response_requested,
            state.fragments,
            state.messages,
            state.bytes,
        ) = values
        error = None
        if fault is not None:
            code, index, a, b, c = fault
            error = _batch_error(code, len(pdus[index]), a, b, c)
        return _new_batch(ReceivedBatch, (applied, gathered, ends, totals, error, payloads))
    if into is not None and sum(map(len, pdus)) > len(into):
        raise ValueError("the gather buffer must hold every message of the batch")
    return _check_data_transfers(pdus, None if into is None else memoryview(into).cast("B"), state, limits)


def _check_data_transfers(
    pdus: Sequence[Buffer], into: memoryview | None, state: ReceiveState, limits: ReceiveLimits
) -> ReceivedBatch:
    """The pure-Python twin of the compiled check."""
    gathered = end = 0
    ends: list[int] = []
    totals: list[int] = []
    payloads: list[memoryview] | None = None if into is not None else []

    def fault(index: int, name: str, a: int = 0, b: int = 0, c: int = 0) -> ReceivedBatch:
        error = _batch_error(BATCH_FAULTS.index(name), len(pdus[index]), a, b, c)
        return ReceivedBatch(index, gathered, ends, totals, error, payloads)

    for index, pdu in enumerate(pdus):
        size = len(pdu)
        if size < DATA_TRANSFER_HEADER_SIZE:
            return fault(index, "length", size, DATA_TRANSFER_HEADER_SIZE)
        requested, granted, flags, _reserved, remaining, offset, length = _DATA_HEADER.unpack_from(pdu)
        if offset % 8:
            return fault(index, "data_offset_alignment", offset)
        if length:
            if offset < DATA_TRANSFER_HEADER_SIZE:
                return fault(index, "data_offset_overlap", offset)
            if offset + length > size:
                return fault(index, "data_length", offset, length, size)
        if state.granted == 0:
            return fault(index, "no_credit")
        state.granted -= 1
        if requested == 0:
            return fault(index, "credits_requested")
        total = length + remaining
        if total > limits.max_fragmented_size:
            return fault(index, "message_size", total, limits.max_fragmented_size)
        if size > limits.max_receive_size:
            return fault(index, "receive_size", size, limits.max_receive_size)
        state.receive_target = max(1, min(requested, limits.recv_credit_max))
        state.send_credits += granted
        if state.send_credits > 0xFFFF:
            return fault(index, "credits_granted", state.send_credits)
        if flags & SMB_DIRECT_RESPONSE_REQUESTED:
            state.response_requested = True
        state.fragments += 1
        if not length:
            continue
        starts = 0
        if state.message_remaining:
            if total != state.message_remaining:
                return fault(index, "continuation", remaining, length, state.message_remaining)
        else:
            starts = total
            state.messages += 1
        payload = memoryview(pdu).cast("B")[offset : offset + length]
        if payloads is None:
            assert into is not None
            into[gathered : gathered + length] = payload
            gathered += length
        else:
            payloads.append(payload)
        end += length
        ends.append(end)
        totals.append(starts)
        state.message_remaining = remaining
        state.bytes += length
    return ReceivedBatch(len(pdus), gathered, ends, totals, None, payloads)
