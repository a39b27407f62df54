"""MPA setup frames and FPDU framing, against what Linux siw sent and accepted."""

from __future__ import annotations

import itertools
import struct

import pytest

from smbdirect_socket.rdma.soft import ddp
from smbdirect_socket.rdma.soft.mpa import (
    MAX_READ_BUFFER_SIZE,
    MIN_READ,
    READ_BUFFER_SIZE,
    FpduReader,
    MpaError,
    MpaFrame,
    answer_request,
    check_reply,
    frame_fpdu,
)

REQ = b"MPA ID Req Frame"
REP = b"MPA ID Rep Frame"


def frame(raw: bytes, *, reply: bool) -> MpaFrame:
    return MpaFrame.unpack(raw[:20], raw[20:], reply=reply)


def test_request_vector_from_spike() -> None:
    raw = REQ + bytes.fromhex("1002 000c 0010 0010 00000010 00000010")
    request = frame(raw, reply=False)
    assert request == MpaFrame(reply=False, ird=16, ord=16, private_data=struct.pack("!II", 16, 16))
    assert request.pack() == raw


def test_cifs_request_vector() -> None:
    raw = REQ + bytes.fromhex("1002 000c 0020 0000 20000000 01000000")
    request = frame(raw, reply=False)
    assert (request.ird, request.ord, request.private_data) == (32, 0, bytes.fromhex("2000000001000000"))


@pytest.mark.parametrize(
    ("ird", "ord_", "expected"),
    [
        (16, 16, "1002 0004 0010 0008"),  # relaxed IRD: ours rises to the peer's ORD
        (0, 0, "1002 0004 0001 0000"),  # IRD 0 from the peer: we may never read
        (0x8010, 0xC010, "1002 0004 8010 8008"),  # P2P, both RTR offered: Write
        (0x8010, 0x4010, "1002 0004 8010 4008"),  # P2P, only Read offered
        (0x8010, 0x0010, "1002 0004 8010 8008"),  # P2P, none offered: Write
    ],
)
def test_reply_decided_as_siw_with_ksmbd_depths(ird: int, ord_: int, expected: str) -> None:
    request = MpaFrame(reply=False, ird=ird, ord=ord_)
    reply, negotiation = answer_request(request, b"", initiator_depth=8, responder_resources=1)
    assert reply.pack() == REP + bytes.fromhex(expected)
    assert negotiation.ord == min(8, ird & 0x3FFF)


def test_crc_is_echoed() -> None:
    reply, negotiation = answer_request(
        MpaFrame(reply=False, crc=True, ird=16, ord=16), b"", initiator_depth=8, responder_resources=1
    )
    assert reply.pack()[16:18] == bytes.fromhex("5002")
    assert negotiation.crc


def test_markers_are_rejected_like_siw() -> None:
    with pytest.raises(MpaError) as info:
        answer_request(
            MpaFrame(reply=False, markers=True, ird=16, ord=16), b"", initiator_depth=8, responder_resources=1
        )
    assert str(info.value) == "peer asked for MPA markers"
    assert info.value.reply is not None
    assert info.value.reply.pack() == REP + bytes.fromhex("3002 0004 0000 0000")


def test_v1_request_gets_v1_reply() -> None:
    request = frame(REQ + bytes.fromhex("0001 0008 20000000 01000000"), reply=False)
    assert not request.enhanced
    reply, _ = answer_request(request, struct.pack("!II", 1, 8), initiator_depth=8, responder_resources=1)
    assert reply.pack() == REP + bytes.fromhex("0001 0008 00000001 00000008")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (REP + bytes.fromhex("1002 0000"), "MPA key b'MPA ID Rep Frame' is not b'MPA ID Req Frame'"),
        (REQ + bytes.fromhex("1003 0000"), "MPA revision 3 is not supported"),
        (REQ + bytes.fromhex("1002 0105"), "MPA private data length 261 exceeds 260"),
    ],
)
def test_bad_request_headers(raw: bytes, message: str) -> None:
    with pytest.raises(MpaError) as info:
        MpaFrame.parse_header(raw, reply=False)
    assert str(info.value) == message


def test_enhanced_frame_without_words() -> None:
    with pytest.raises(MpaError) as info:
        MpaFrame.unpack(REQ + bytes.fromhex("1002 0002"), b"ab", reply=False)
    assert str(info.value) == "MPA v2 enhanced frame without IRD/ORD words"


def test_initiator_checks_reply() -> None:
    request = MpaFrame(reply=False, ird=0x8010, ord=0x4010)
    with pytest.raises(MpaError, match="rejected"):
        check_reply(request, MpaFrame(reply=True, reject=True))
    with pytest.raises(MpaError, match="lacks the RFC 6581"):
        check_reply(request, MpaFrame(reply=True, ird=None, ord=None))
    with pytest.raises(MpaError, match="picked no RTR type we offered"):
        check_reply(request, MpaFrame(reply=True, ird=0x8010, ord=0x8008))
    negotiation = check_reply(request, MpaFrame(reply=True, crc=True, ird=0x8010, ord=0x4008))
    assert (negotiation.rtr, negotiation.crc, negotiation.ord, negotiation.ird) == ("read", True, 16, 16)


NEGOTIATE_RESPONSE = bytes.fromhex("0001 0001 0001 0000 ff00 fe00 00000000 00008000 54050000 54050000 56a70200")


def test_send_fpdu_vector() -> None:
    payload = bytes.fromhex("0001 0001 0000 ff00 54050000 54050000 56a70200")
    fpdu = frame_fpdu(ddp.encode_untagged(ddp.Op.SEND, True, 0, 1, 0, payload), crc=False)
    assert fpdu == bytes.fromhex("0026 4143 00000000 00000000 00000001 00000000") + payload + bytes(4)


def test_crc_is_crc32c_little_endian_as_siw_sends() -> None:
    fpdu = frame_fpdu(ddp.encode_untagged(ddp.Op.SEND, True, 0, 1, 0, NEGOTIATE_RESPONSE), crc=True)
    assert fpdu[:2] == b"\x00\x32"
    assert fpdu[-4:] == bytes.fromhex("c921f374")  # what ksmbd's siw sent


def test_reader_cuts_any_segmentation() -> None:
    segments = [ddp.encode_untagged(ddp.Op.SEND, True, 0, i, 0, bytes(range(i))) for i in range(1, 40)]
    stream = b"".join(frame_fpdu(s, crc=True) for s in segments)
    reader = FpduReader(crc=True)
    out = []
    for i in range(0, len(stream), 7):
        reader.feed(stream[i : i + 7])
        while (segment := reader.next_segment()) is not None:
            out.append(bytes(segment))
    assert out == segments


def test_reader_reading_into_its_own_buffer_cuts_any_segmentation() -> None:
    """Reads of every size into the reader's own buffer, FPDUs of up to the
    64 KiB MPA allows, an FPDU begun in one read moving to the front: the same
    segments as the stream holds, and no read is ever given less than MIN_READ."""
    segments = [
        ddp.encode_untagged(ddp.Op.SEND, True, 0, i, 0, bytes([i]) * size)
        for i, size in enumerate([1, 1340, 65000, 3, 65511, 20000, 7, 65000, 1340, 65000] * 3)
    ]
    stream = b"".join(frame_fpdu(s, crc=True) for s in segments)
    reader = FpduReader(crc=True)
    out = []
    position = 0
    for size in itertools.cycle([7, 1400, 300_000, 65_536, 3, 200_000, 131_071]):
        if position == len(stream):
            break
        into = reader.read_buffer()
        assert len(into) >= MIN_READ
        count = min(size, len(into), len(stream) - position)
        into[:count] = stream[position : position + count]
        position += count
        reader.filled(count)
        while (segment := reader.next_segment()) is not None:
            out.append(bytes(segment))
        reader.keep_rest()  # (nothing to copy: the reader's buffer keeps it)
    assert out == segments


@pytest.mark.parametrize("fill", [True, False])
def test_reader_buffer_grows_only_while_reads_fill_it(fill: bool) -> None:
    """Reads that take all the room given (a bulk transfer) double the reader's
    buffer up to MAX_READ_BUFFER_SIZE, as TCP's receive buffer grows; reads that
    leave room never grow it; the segments are the stream's either way."""
    segments = [ddp.encode_untagged(ddp.Op.SEND, True, 0, i, 0, bytes([i % 251]) * 65000) for i in range(200)]
    stream = b"".join(frame_fpdu(s, crc=False) for s in segments)
    reader = FpduReader(crc=False)
    out, offered = [], []
    position = 0
    while position < len(stream):
        into = reader.read_buffer()
        offered.append(len(into))
        count = min(len(into) if fill else 50_000, len(stream) - position)
        into[:count] = stream[position : position + count]
        position += count
        reader.filled(count)
        while (segment := reader.next_segment()) is not None:
            out.append(bytes(segment))
    assert out == segments
    assert min(offered) >= MIN_READ
    if fill:
        assert 4 * READ_BUFFER_SIZE < max(offered) <= MAX_READ_BUFFER_SIZE
    else:
        assert max(offered) <= READ_BUFFER_SIZE


def test_reader_rejects_bad_crc() -> None:
    fpdu = bytearray(frame_fpdu(ddp.encode_untagged(ddp.Op.SEND, True, 0, 1, 0, b"abcd"), crc=True))
    fpdu[-1] ^= 1
    reader = FpduReader(crc=True)
    reader.feed(bytes(fpdu))
    with pytest.raises(MpaError, match=r"FPDU CRC 0x[0-9a-f]{8} does not match"):
        reader.next_segment()
