"""DDP/RDMAP headers and Terminate layouts, with siw's observed bytes."""

from __future__ import annotations

import pytest

from smbdirect_socket.rdma.soft import ddp
from smbdirect_socket.rdma.soft.ddp import Layer, Op, Terminate, TerminateError

SEND_QN5 = bytes.fromhex("0014 4143 00000000 00000005 00000001 00000000")


def test_parse_send_on_wrong_queue_quotes_header_like_siw() -> None:
    segment = ddp.encode_untagged(Op.SEND, True, 5, 1, 0, bytes(20))
    with pytest.raises(TerminateError) as info:
        ddp.parse_segment(memoryview(segment))
    terminate = info.value.terminate
    assert terminate == Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_INVALID_QN, SEND_QN5)
    # siw on x86: layer and type nibbles swapped, flags in the low bits.
    assert terminate.pack(siw_layout=True) == bytes.fromhex("21 01 03 00") + SEND_QN5
    assert terminate.pack() == bytes.fromhex("12 01 c0 00") + SEND_QN5


def test_terminate_round_trips_both_layouts() -> None:
    write = bytes.fromhex("0008 c140 deadbe00 0000000000000000")
    terminate = Terminate(Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_INVALID_STAG, write)
    assert terminate.pack(siw_layout=True) == bytes.fromhex("11 00 03 00") + write
    for siw in (False, True):
        assert Terminate.unpack(terminate.pack(siw_layout=siw)) == terminate


def test_read_request_terminate_carries_rdmap_header() -> None:
    raw = bytes.fromhex(
        "10 00 07 00 0000 4141 00000000 00000001 00000040 00000000"
        " 11223300 0000000000000000 00000040 deadbe00 0000000000000000"
    )
    terminate = Terminate.unpack(raw)
    assert (terminate.layer, terminate.error_type, terminate.error_code) == (Layer.RDMAP, 1, 0)
    assert len(terminate.ddp_header) == 20 and len(terminate.rdmap_header) == 28


@pytest.mark.parametrize(
    ("control", "message", "expected"),
    [
        (0x4243, "DDP version 2 is not 1", (Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_INVALID_VERSION)),
        (0xC240, "DDP version 2 is not 1", (Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_INVALID_VERSION)),
        (0x4183, "RDMAP version 2 is not 1", (Layer.RDMAP, ddp.RDMAP_REMOTE_OPERATION, ddp.RDMAP_INVALID_VERSION)),
        (0x4148, "RDMAP opcode 8 is unknown", (Layer.RDMAP, ddp.RDMAP_REMOTE_OPERATION, ddp.RDMAP_UNEXPECTED_OPCODE)),
    ],
)
def test_version_and_opcode_faults(control: int, message: str, expected: tuple[Layer, int, int]) -> None:
    segment = control.to_bytes(2, "big") + bytes(16)
    with pytest.raises(TerminateError) as info:
        ddp.parse_segment(memoryview(segment))
    terminate = info.value.terminate
    assert str(info.value).startswith(message)
    assert (terminate.layer, terminate.error_type, terminate.error_code) == expected


def test_short_segment() -> None:
    with pytest.raises(TerminateError, match="SEND segment of 10 bytes"):
        ddp.parse_segment(memoryview(bytes.fromhex("4143") + bytes(8)))


def test_read_request_size() -> None:
    segment = ddp.encode_untagged(Op.READ_REQUEST, True, 1, 1, 0, bytes(20))
    with pytest.raises(TerminateError, match="Read Request with 20 bytes of payload, expected 28"):
        ddp.parse_segment(memoryview(segment))


def test_tagged_round_trip() -> None:
    segment = ddp.parse_segment(memoryview(ddp.encode_tagged(Op.WRITE, True, 0xABCD01, 1 << 40, b"data")))
    assert (segment.op, segment.last, segment.token, segment.offset, bytes(segment.payload)) == (
        Op.WRITE,
        True,
        0xABCD01,
        1 << 40,
        b"data",
    )


def test_headerless_terminates_follow_the_configured_layout() -> None:
    bad_crc = bytes.fromhex("02 02 00 00")  # what siw sent for a CRC error
    assert Terminate.unpack(bad_crc, siw_layout=True) == Terminate(Layer.LLP, 0, 0x02)
    assert Terminate.unpack(bytes.fromhex("20 02 00 00")) == Terminate(Layer.LLP, 0, 0x02)
    opcode_8 = bytes.fromhex("20 06 00 00")
    assert Terminate.unpack(opcode_8, siw_layout=True) == Terminate(Layer.RDMAP, 2, 0x06)
