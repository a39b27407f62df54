"""DDP (RFC 5041) and RDMAP (RFC 5040) headers, and the Terminate message.

A DDP segment is what one FPDU carries: a tagged header (RDMA Write, Read
Response) or an untagged one (the Send family, Read Request, Terminate),
then payload.  Headers are big-endian.  :func:`parse_segment` checks what
belongs to these layers and raises :class:`TerminateError` carrying the
Terminate to send back, so the queue pair answers every fault the same way.
"""

from __future__ import annotations

import enum
import struct

import attrs

from ...layout import Layout
from ..base import Buffer

__all__ = [
    "Layer",
    "Op",
    "ReadRequest",
    "Segment",
    "Terminate",
    "TerminateError",
    "encode_read_request",
    "encode_tagged",
    "encode_untagged",
    "opcode_of",
    "parse_segment",
]

TAGGED = 0x8000
LAST = 0x4000
DDP_VERSION = 1
RDMAP_VERSION = 1
VERSIONS = (DDP_VERSION << 8) | (RDMAP_VERSION << 6)  # 0x0140
VERSION_MASK = 0x03C0
OPCODE_MASK = 0x000F

QN_SEND = 0
QN_READ_REQUEST = 1
QN_TERMINATE = 2

#: Headers after the MPA length, big-endian.
TAGGED_LAYOUT = Layout("Tagged", (("control", "H"), ("stag", "I"), ("offset", "Q")), "!")
#: ``word``: the STag to invalidate for the Send-with-Invalidate ops, else 0.
UNTAGGED_LAYOUT = Layout(
    "Untagged", (("control", "H"), ("word", "I"), ("queue", "I"), ("msn", "I"), ("message_offset", "I")), "!"
)
READ_REQUEST_LAYOUT = Layout(
    "ReadRequest",
    (("sink_stag", "I"), ("sink_offset", "Q"), ("size", "I"), ("source_stag", "I"), ("source_offset", "Q")),
    "!",
)

_CONTROL = struct.Struct("!H")
_TAGGED = TAGGED_LAYOUT.struct
_UNTAGGED = UNTAGGED_LAYOUT.struct
_READ_REQUEST = READ_REQUEST_LAYOUT.struct
TAGGED_HEADER = _TAGGED.size
UNTAGGED_HEADER = _UNTAGGED.size
READ_REQUEST_SIZE = _READ_REQUEST.size


class Op(enum.IntEnum):
    """RDMAP opcodes."""

    WRITE = 0
    READ_REQUEST = 1
    READ_RESPONSE = 2
    SEND = 3
    SEND_INVALIDATE = 4
    SEND_SE = 5
    SEND_SE_INVALIDATE = 6
    TERMINATE = 7


SEND_OPS = frozenset({Op.SEND, Op.SEND_INVALIDATE, Op.SEND_SE, Op.SEND_SE_INVALIDATE})
TAGGED_OPS = frozenset({Op.WRITE, Op.READ_RESPONSE})


class Layer(enum.IntEnum):
    RDMAP = 0
    DDP = 1
    LLP = 2


# Error types and codes (RFC 5040 7.1, RFC 5041 7.2, RFC 5044 8).
RDMAP_LOCAL_CATASTROPHIC = 0
RDMAP_REMOTE_PROTECTION = 1
RDMAP_REMOTE_OPERATION = 2
RDMAP_INVALID_STAG = 0x00
RDMAP_BASE_BOUNDS = 0x01
RDMAP_ACCESS_RIGHTS = 0x02
RDMAP_INVALID_VERSION = 0x05
RDMAP_UNEXPECTED_OPCODE = 0x06
RDMAP_REMOTE_STREAM_CATASTROPHIC = 0x07
RDMAP_CANNOT_INVALIDATE = 0x09
RDMAP_UNSPECIFIED = 0xFF

DDP_LOCAL_CATASTROPHIC = 0
DDP_TAGGED = 1
DDP_UNTAGGED = 2
DDP_TAGGED_INVALID_STAG = 0x00
DDP_TAGGED_BASE_BOUNDS = 0x01
DDP_TAGGED_INVALID_VERSION = 0x04
DDP_UNTAGGED_INVALID_QN = 0x01
DDP_UNTAGGED_NO_BUFFER = 0x02
DDP_UNTAGGED_INVALID_MSN = 0x03
DDP_UNTAGGED_INVALID_MO = 0x04
DDP_UNTAGGED_TOO_LONG = 0x05
DDP_UNTAGGED_INVALID_VERSION = 0x06

LLP_MPA = 0
MPA_SHORT_ULPDU = 0x03  # siw: a ULPDU too short for its header


@attrs.frozen
class Terminate:
    """An RDMAP Terminate: who found what, and the offending header."""

    layer: Layer
    error_type: int
    error_code: int
    #: The offending DDP header as received (its first two bytes: the segment
    #: payload length), and for a Read Request the RDMAP header too.
    ddp_header: bytes = b""
    rdmap_header: bytes = b""

    def describe(self) -> str:
        return f"layer {self.layer.name} type {self.error_type} code 0x{self.error_code:02x}"

    def pack(self, *, siw_layout: bool = False) -> bytes:
        """The Terminate payload; ``siw_layout`` packs the control word as Linux siw does on x86."""
        m = 1 if self.ddp_header else 0
        d = 1 if self.ddp_header else 0
        r = 1 if self.rdmap_header else 0
        if siw_layout:
            first = (self.error_type << 4) | self.layer
            flags = m | (d << 1) | (r << 2)
        else:
            first = (self.layer << 4) | self.error_type
            flags = (m << 7) | (d << 6) | (r << 5)
        return bytes((first, self.error_code, flags, 0)) + self.ddp_header + self.rdmap_header

    @classmethod
    def unpack(cls, payload: bytes | memoryview, *, siw_layout: bool = False) -> Terminate:
        """Decode either layout: the flags byte tells which when a header is quoted;
        without one the layouts look alike, and ``siw_layout`` decides."""
        if len(payload) < 4:
            raise ValueError(f"Terminate of {len(payload)} bytes is shorter than its 4-byte control field")
        first, code, flags = payload[0], payload[1], payload[2]
        siw = bool(flags & 0x07) and not flags & 0xE0 if flags else siw_layout
        layer, error_type = (first & 0x0F, first >> 4) if siw else (first >> 4, first & 0x0F)
        has_ddp = bool(flags & 0x02) if siw else bool(flags & 0x40)
        has_rdmap = bool(flags & 0x04) if siw else bool(flags & 0x20)
        rest = bytes(payload[4:])
        ddp = b""
        rdmap = b""
        if has_ddp and len(rest) >= 2:
            tagged = len(rest) >= 4 and rest[2] & 0x80
            size = 2 + (TAGGED_HEADER if tagged else UNTAGGED_HEADER)
            ddp, rest = rest[:size], rest[size:]
        if has_rdmap:
            rdmap = rest[:READ_REQUEST_SIZE]
        try:
            layer_enum = Layer(layer)
        except ValueError:
            raise ValueError(f"Terminate names layer {layer}, not RDMAP, DDP or LLP") from None
        return cls(layer_enum, error_type, code, ddp, rdmap)


class TerminateError(Exception):
    """A fault found in a received segment: send ``terminate`` and close."""

    def __init__(self, message: str, terminate: Terminate) -> None:
        super().__init__(f"{message} ({terminate.describe()})")
        self.terminate = terminate


@attrs.frozen
class ReadRequest:
    sink_token: int
    sink_offset: int
    size: int
    source_token: int
    source_offset: int


class Segment:
    """A parsed DDP segment: a few fields and a view of the payload."""

    __slots__ = (
        "_header_size",
        "_raw",
        "invalidate_token",
        "last",
        "message_offset",
        "msn",
        "offset",
        "op",
        "payload",
        "queue",
        "token",
    )

    def __init__(self, op: Op, last: bool, raw: memoryview, header_size: int) -> None:
        self.op = op
        self.last = last
        self.payload = raw[header_size:]
        self._raw = raw
        self._header_size = header_size
        self.token = self.offset = 0  # tagged
        self.queue = self.msn = self.message_offset = self.invalidate_token = 0  # untagged

    @property
    def header(self) -> bytes:
        """The header as a Terminate quotes it: the payload length first."""
        return _quoted(self._raw, self._header_size)


def tagged_header(op: Op, last: bool, token: int, offset: int) -> bytes:
    return _TAGGED.pack(TAGGED | (LAST if last else 0) | VERSIONS | op, token, offset)


def untagged_header(op: Op, last: bool, queue: int, msn: int, message_offset: int, word: int = 0) -> bytes:
    return _UNTAGGED.pack((LAST if last else 0) | VERSIONS | op, word, queue, msn, message_offset)


def encode_tagged(op: Op, last: bool, token: int, offset: int, payload: bytes | memoryview) -> bytes:
    return tagged_header(op, last, token, offset) + bytes(payload)


def encode_untagged(
    op: Op, last: bool, queue: int, msn: int, message_offset: int, payload: bytes | memoryview, word: int = 0
) -> bytes:
    return untagged_header(op, last, queue, msn, message_offset, word) + bytes(payload)


def encode_read_request(msn: int, request: ReadRequest) -> bytes:
    body = _READ_REQUEST.pack(
        request.sink_token, request.sink_offset, request.size, request.source_token, request.source_offset
    )
    return encode_untagged(Op.READ_REQUEST, True, QN_READ_REQUEST, msn, 0, body)


def decode_read_request(payload: bytes | memoryview) -> ReadRequest:
    return ReadRequest(*_READ_REQUEST.unpack_from(payload))


_OPS = tuple(Op)
_QUEUES = {Op.READ_REQUEST: QN_READ_REQUEST, Op.TERMINATE: QN_TERMINATE}


def _quoted(segment: memoryview, header_size: int) -> bytes:
    """The offending header as a Terminate quotes it: the payload length first."""
    size = min(header_size, len(segment))
    return struct.pack("!H", max(len(segment) - header_size, 0)) + bytes(segment[:size])


def opcode_of(segment_start: Buffer) -> int | None:
    """The RDMAP opcode of a segment from its first bytes (unchecked), or None
    while its control field has not all arrived."""
    if len(segment_start) < _CONTROL.size:
        return None
    (control,) = _CONTROL.unpack_from(segment_start)
    return int(control & OPCODE_MASK)


def parse_segment(segment: memoryview) -> Segment:
    """Decode one DDP segment, checking versions, opcode, queue and sizes."""
    if len(segment) < 2:
        raise TerminateError("DDP segment without a control field", Terminate(Layer.LLP, LLP_MPA, MPA_SHORT_ULPDU))
    (control,) = _CONTROL.unpack_from(segment)
    tagged = bool(control & TAGGED)
    if (control >> 8) & 0x3 != DDP_VERSION:
        code = DDP_TAGGED_INVALID_VERSION if tagged else DDP_UNTAGGED_INVALID_VERSION
        raise TerminateError(
            f"DDP version {(control >> 8) & 0x3} is not 1",
            Terminate(Layer.DDP, DDP_TAGGED if tagged else DDP_UNTAGGED, code),
        )
    if (control >> 6) & 0x3 != RDMAP_VERSION:
        raise TerminateError(
            f"RDMAP version {(control >> 6) & 0x3} is not 1",
            Terminate(Layer.RDMAP, RDMAP_REMOTE_OPERATION, RDMAP_INVALID_VERSION),
        )
    opcode = control & OPCODE_MASK
    if opcode > Op.TERMINATE:
        raise TerminateError(
            f"RDMAP opcode {opcode} is unknown", Terminate(Layer.RDMAP, RDMAP_REMOTE_OPERATION, RDMAP_UNEXPECTED_OPCODE)
        )
    op = _OPS[opcode]
    last = bool(control & LAST)
    header_size = TAGGED_HEADER if tagged else UNTAGGED_HEADER
    if len(segment) < header_size or tagged != (op in TAGGED_OPS):
        raise TerminateError(
            f"{op.name} segment of {len(segment)} bytes with a {'tagged' if tagged else 'untagged'} header",
            Terminate(Layer.LLP, LLP_MPA, MPA_SHORT_ULPDU),
        )
    parsed = Segment(op, last, segment, header_size)
    if tagged:
        _, parsed.token, parsed.offset = _TAGGED.unpack_from(segment)
        return parsed
    _, parsed.invalidate_token, parsed.queue, parsed.msn, parsed.message_offset = _UNTAGGED.unpack_from(segment)
    expected_queue = _QUEUES.get(op, QN_SEND)
    if parsed.queue != expected_queue and op is not Op.READ_REQUEST:
        raise TerminateError(
            f"{op.name} on queue {parsed.queue}, expected {expected_queue}",
            Terminate(Layer.DDP, DDP_UNTAGGED, DDP_UNTAGGED_INVALID_QN, parsed.header),
        )
    if op is Op.READ_REQUEST and len(parsed.payload) != READ_REQUEST_SIZE:
        raise TerminateError(
            f"Read Request with {len(parsed.payload)} bytes of payload, expected {READ_REQUEST_SIZE}",
            Terminate(Layer.RDMAP, RDMAP_REMOTE_OPERATION, RDMAP_UNSPECIFIED, parsed.header),
        )
    return parsed
