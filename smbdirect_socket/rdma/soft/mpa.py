"""MPA (RFC 5044) with enhanced connection setup (RFC 6581): the iWARP LLP.

Two parts, both sans-IO:

* the connection setup frames (:class:`MpaFrame`, request and reply) and the
  responder's decision (:func:`answer_request`), as Linux siw makes it;
* FPDU framing: :func:`frame_fpdu` wraps one DDP segment with its length,
  pad and CRC32C, and :class:`FpduReader` cuts a TCP byte stream back into
  segments, checking the CRC when it is on.

The CRC is CRC32C (Castagnoli) over the FPDU up to the CRC field, stored
little-endian, which is what siw sends and accepts.
"""

from __future__ import annotations

import mmap
import struct
from typing import ClassVar

import attrs
import crc32c

from ..base import Buffer

__all__ = [
    "MAX_PRIVATE_DATA",
    "FpduReader",
    "MpaError",
    "MpaFrame",
    "Negotiation",
    "NotMpaError",
    "answer_request",
    "check_reply",
    "frame_fpdu",
    "reject_reply",
]

REQUEST_KEY = b"MPA ID Req Frame"
REPLY_KEY = b"MPA ID Rep Frame"

FLAG_MARKERS = 0x8000
FLAG_CRC = 0x4000
FLAG_REJECT = 0x2000
FLAG_ENHANCED = 0x1000  # RFC 6581: IRD/ORD words follow
REVISION_MASK = 0x00FF

# RFC 6581 IRD/ORD word bits.
IRD_P2P = 0x8000
IRD_SEND_RTR = 0x4000
ORD_WRITE_RTR = 0x8000
ORD_READ_RTR = 0x4000
DEPTH_MASK = 0x3FFF

#: Private data siw and rdma_cm carry at most (RDMA_MAX_PRIVATE_DATA).
MAX_PRIVATE_DATA = 256
#: IRD and ORD siw allows at most.
MAX_DEPTH = 128

# MPA error codes of a Terminate (layer LLP, type 0).
MPA_CRC_ERROR = 0x02
MPA_MARKER_ERROR = 0x03  # siw also uses it for a too-short ULPDU
MPA_INVALID_REQUEST_REPLY = 0x04
MPA_INSUFFICIENT_IRD = 0x06
MPA_NO_MATCHING_RTR = 0x07


class MpaError(Exception):
    """Connection setup failed; ``reply`` is what to send back, if anything."""

    def __init__(self, message: str, reply: MpaFrame | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class NotMpaError(MpaError):
    """The peer's first 16 bytes are not the MPA key expected: it speaks another protocol."""

    def __init__(self, key: bytes, expected: bytes) -> None:
        super().__init__(f"MPA key {key!r} is not {expected!r}")
        self.key = key
        #: The peer sent back our own request (an echo service, say).
        self.echoed = key == REQUEST_KEY and expected == REPLY_KEY


@attrs.frozen
class MpaFrame:
    """An MPA request or reply frame."""

    reply: bool
    revision: int = 2
    crc: bool = False
    markers: bool = False
    reject: bool = False
    #: RFC 6581 words; None for a v1 frame (or a v2 frame without Enhanced).
    ird: int | None = 0
    ord: int | None = 0
    private_data: bytes = b""

    header: ClassVar = struct.Struct("!16sHH")
    HEADER_SIZE: ClassVar = 20

    @property
    def enhanced(self) -> bool:
        return self.ird is not None

    def pack(self) -> bytes:
        bits = self.revision & REVISION_MASK
        bits |= FLAG_CRC if self.crc else 0
        bits |= FLAG_MARKERS if self.markers else 0
        bits |= FLAG_REJECT if self.reject else 0
        extra = b""
        if self.ird is not None:
            bits |= FLAG_ENHANCED
            extra = struct.pack("!HH", self.ird, self.ord or 0)
        body = extra + self.private_data
        if len(body) > MAX_PRIVATE_DATA + 4:
            raise ValueError(f"private data of {len(self.private_data)} bytes is too long")
        return self.header.pack(REPLY_KEY if self.reply else REQUEST_KEY, bits, len(body)) + body

    @classmethod
    def parse_header(cls, header: bytes, *, reply: bool) -> tuple[int, int]:
        """Check the 20-byte header; return (bits, PD_Length)."""
        key, bits, length = cls.header.unpack(header)
        expected = REPLY_KEY if reply else REQUEST_KEY
        if key != expected:
            raise NotMpaError(key, expected)
        revision = bits & REVISION_MASK
        if revision > 2:
            raise MpaError(f"MPA revision {revision} is not supported")
        if length > MAX_PRIVATE_DATA + 4:
            raise MpaError(f"MPA private data length {length} exceeds {MAX_PRIVATE_DATA + 4}")
        return bits, length

    @classmethod
    def unpack(cls, header: bytes, body: bytes, *, reply: bool) -> MpaFrame:
        bits, length = cls.parse_header(header, reply=reply)
        if len(body) != length:
            raise MpaError(f"MPA frame announces {length} bytes of private data, got {len(body)}")
        revision = bits & REVISION_MASK
        ird: int | None = None
        ord_: int | None = None
        if revision == 2 and bits & FLAG_ENHANCED:
            if length < 4:
                raise MpaError("MPA v2 enhanced frame without IRD/ORD words")
            ird, ord_ = struct.unpack_from("!HH", body)
            body = body[4:]
        return cls(
            reply=reply,
            revision=revision,
            crc=bool(bits & FLAG_CRC),
            markers=bool(bits & FLAG_MARKERS),
            reject=bool(bits & FLAG_REJECT),
            ird=ird,
            ord=ord_,
            private_data=bytes(body),
        )


@attrs.frozen
class Negotiation:
    """What connection setup settled: CRC, the depths, and the RTR to exchange."""

    crc: bool
    #: Reads we may have outstanding at the peer.
    ord: int
    #: Reads of ours the peer may have outstanding.
    ird: int
    #: "write", "read" or None: the zero-length RTR the initiator sends first.
    rtr: str | None = None


def reject_reply(request: MpaFrame, private_data: bytes = b"") -> MpaFrame:
    """The reply that refuses ``request``."""
    depth = 0 if request.enhanced else None
    return MpaFrame(reply=True, revision=request.revision, reject=True, ird=depth, ord=depth, private_data=private_data)


def answer_request(
    request: MpaFrame,
    private_data: bytes,
    *,
    initiator_depth: int,
    responder_resources: int,
    want_crc: bool = False,
) -> tuple[MpaFrame, Negotiation]:
    """The responder's reply to ``request``, decided as siw decides (relaxed IRD).

    Raises :class:`MpaError` carrying a reject reply for markers.
    """
    if request.markers:
        raise MpaError("peer asked for MPA markers", reply=reject_reply(request))
    crc = request.crc or want_crc
    if not request.enhanced:
        frame = MpaFrame(reply=True, revision=request.revision, crc=crc, ird=None, ord=None, private_data=private_data)
        return frame, Negotiation(crc=crc, ord=initiator_depth, ird=responder_resources)
    peer_ird = (request.ird or 0) & DEPTH_MASK
    peer_ord = (request.ord or 0) & DEPTH_MASK
    our_ord = min(initiator_depth, peer_ird, MAX_DEPTH)
    our_ird = min(max(responder_resources, peer_ord), MAX_DEPTH)
    ird_word, ord_word, rtr = our_ird, our_ord, None
    if (request.ird or 0) & IRD_P2P:
        offered = request.ord or 0
        rtr = "read" if offered & ORD_READ_RTR and not offered & ORD_WRITE_RTR else "write"
        ird_word |= IRD_P2P
        ord_word |= ORD_WRITE_RTR if rtr == "write" else ORD_READ_RTR
    frame = MpaFrame(reply=True, revision=2, crc=crc, ird=ird_word, ord=ord_word, private_data=private_data)
    return frame, Negotiation(crc=crc, ord=our_ord, ird=our_ird, rtr=rtr)


def check_reply(request: MpaFrame, reply: MpaFrame) -> Negotiation:
    """The initiator's view of ``reply``; raises :class:`MpaError` on a reject or mismatch."""
    if reply.reject:
        raise MpaError("connection rejected by the peer (MPA reject)")
    if reply.markers:
        raise MpaError("peer insists on MPA markers")
    if request.enhanced and not reply.enhanced:
        raise MpaError("peer's MPA reply lacks the RFC 6581 IRD/ORD words")
    crc = request.crc or reply.crc
    if not reply.enhanced:
        return Negotiation(crc=crc, ord=request.ord or 0, ird=request.ird or 0)
    reply_ird = (reply.ird or 0) & DEPTH_MASK
    reply_ord = (reply.ord or 0) & DEPTH_MASK
    rtr = None
    if (request.ird or 0) & IRD_P2P:
        offered = request.ord or 0
        chosen = reply.ord or 0
        if chosen & ORD_WRITE_RTR and offered & ORD_WRITE_RTR:
            rtr = "write"
        elif chosen & ORD_READ_RTR and offered & ORD_READ_RTR:
            rtr = "read"
        else:
            raise MpaError("peer picked no RTR type we offered")
    ours_ird = (request.ird or 0) & DEPTH_MASK
    ours_ord = (request.ord or 0) & DEPTH_MASK
    return Negotiation(crc=crc, ord=min(ours_ord, reply_ird), ird=max(ours_ird, reply_ord), rtr=rtr)


# ---- FPDU framing ------------------------------------------------------------

_LENGTH = struct.Struct("!H")
_CRC = struct.Struct("<I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_NO_CRC = bytes(4)  # the field is there with CRC off, as zero
_MERGE = 2048  # payloads up to this size are copied into one buffer


def fpdu_pieces(header: bytes, payload: Buffer, crc: bool) -> list[Buffer]:
    """One FPDU as buffers to write in order: length and header, payload, pad and CRC.

    The payload is not copied; small ones are merged into one buffer.
    """
    length = len(header) + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"a ULPDU of {length} bytes does not fit an FPDU")
    head = _LENGTH.pack(length) + header
    pad = _PAD[(length + 2) % 4]
    if crc:
        value = crc32c.crc32c(pad, crc32c.crc32c(payload, crc32c.crc32c(head)))
        trailer = pad + _CRC.pack(value)
    else:
        trailer = pad + _NO_CRC
    if len(payload) <= _MERGE:
        return [b"".join((head, payload, trailer))]
    return [head, payload, trailer]


def frame_fpdu(segment: bytes, crc: bool) -> bytes:
    """One DDP segment (header and payload) as a single FPDU."""
    return b"".join(fpdu_pieces(segment, b"", crc))


#: The reader's own buffer, which TCP reads into (:meth:`FpduReader.read_buffer`),
#: starts at READ_BUFFER_SIZE and doubles, up to MAX_READ_BUFFER_SIZE, each time
#: a read fills all the room it was given (the socket held more: a bulk
#: transfer), as TCP's receive buffer grows under load: each read of a bulk
#: transfer then costs its wake-up and system call for up to a megabyte instead
#: of 128 KiB.  A read always gets at least a third of the buffer (MIN_READ at
#: first): the incomplete FPDU a read leaves moves to the front when less is
#: left behind it.
READ_BUFFER_SIZE = 384 * 1024
MAX_READ_BUFFER_SIZE = 8 * READ_BUFFER_SIZE
MIN_READ = READ_BUFFER_SIZE // 3


class FpduReader:
    """Cuts a byte stream into DDP segments; raises :class:`MpaError` on a bad CRC.

    The bytes come either read into the reader's own buffer
    (:meth:`read_buffer`, then :meth:`filled`), where an incomplete FPDU waits
    for the next read without a copy of the read; or fed from the caller's
    buffer (:meth:`feed`), which may be reused once :meth:`keep_rest` copied out
    the incomplete FPDU.  Segments are views, never copies: valid until the
    next read or feed.
    """

    def __init__(self, crc: bool) -> None:
        self.crc = crc
        self._data: Buffer = b""
        self._offset = 0
        self._own: memoryview | None = None  # allocated on the first read into it
        self._in_own = False  # whether _data is the front of _own
        self._size = READ_BUFFER_SIZE  # what _own grows to when it next moves

    def read_buffer(self) -> memoryview:
        """Where the next read from TCP goes (then :meth:`filled`): the reader's own
        buffer, behind the incomplete FPDU the last read left."""
        start, end = self._offset, len(self._data)
        own = self._own
        min_read = self._size // 3
        if own is None or not self._in_own or len(own) - end < min_read:
            rest = end - start
            if own is None or len(own) < self._size or len(own) - rest < min_read:
                # An anonymous mapping: its pages cost nothing until a read reaches them.
                own = self._own = memoryview(mmap.mmap(-1, max(self._size, rest + min_read)))
            own[:rest] = memoryview(self._data)[start:end]  # (a memoryview copies overlapping bytes safely)
            self._data = own[:rest]
            self._offset = 0
            self._in_own = True
            end = rest
        return own[end:]

    def filled(self, count: int) -> None:
        """``count`` bytes were read into :meth:`read_buffer`; the last segments must not be used any more."""
        own = self._own
        assert own is not None and self._in_own
        if count == len(own) - len(self._data) and self._size < MAX_READ_BUFFER_SIZE:
            self._size *= 2  # the read took all the room: the socket held more; grow at the next move
        self._data = own[: len(self._data) + count]

    def feed(self, data: Buffer) -> None:
        """Take the next bytes; the previous feed's segments must not be used any more."""
        rest = len(self._data) - self._offset
        self._data = b"".join((memoryview(self._data)[self._offset :], data)) if rest else data
        self._offset = 0
        self._in_own = False

    def keep_rest(self) -> None:
        """Copy out the incomplete FPDU left, so the buffer last fed may be reused
        (the reader's own buffer keeps it where it is)."""
        if self._in_own:
            return
        rest = memoryview(self._data)[self._offset :]
        self._data = bytes(rest)
        self._offset = 0

    def unread(self) -> memoryview:
        """The bytes fed and not yet cut into segments (for the compiled fast path)."""
        return memoryview(self._data)[self._offset :]

    def next_segment_start(self) -> memoryview:
        """What has arrived of the next segment (after its MPA length), whole or
        not: enough, once its DDP header is in, to look at that."""
        return memoryview(self._data)[self._offset + _LENGTH.size :]

    def skip(self, count: int) -> None:
        """``count`` bytes of :meth:`unread` (whole FPDUs) were handled elsewhere."""
        self._offset += count

    def next_segment(self) -> memoryview | None:
        """The next complete DDP segment (without length, pad and CRC), if any."""
        data = self._data
        start = self._offset
        if len(data) - start < 2:
            return None
        (length,) = _LENGTH.unpack_from(data, start)
        total = (length + 5) // 4 * 4 + 4
        if len(data) - start < total:
            return None
        self._offset = start + total
        view = memoryview(data)
        if self.crc:
            (expected,) = _CRC.unpack_from(data, start + total - 4)
            actual = crc32c.crc32c(view[start : start + total - 4])
            if actual != expected:
                raise MpaError(f"FPDU CRC 0x{expected:08x} does not match 0x{actual:08x}")
        return view[start + 2 : start + 2 + length]
