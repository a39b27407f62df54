"""The wire codec: byte-exact vectors, round trips and malformed buffers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smbdirect_socket import (
    BufferDescriptorV1,
    DataTransferMessage,
    NegotiateRequest,
    NegotiateResponse,
    PDUError,
    ProtocolError,
)

# Captured from cifs.ko and ksmbd over siw (Linux 6.12).
CIFS_NEGOTIATE_REQUEST = bytes.fromhex("0001 0001 0000 ff00 54050000 54050000 56a70200")
KSMBD_NEGOTIATE_RESPONSE = bytes.fromhex("0001 0001 0001 0000 ff00 fe00 00000000 00008000 54050000 54050000 56a70200")
KSMBD_NOT_SUPPORTED = bytes.fromhex("0001 0001 0000 0000 0000 0000 bb0000c0 00000000 00000000 00000000 00000000")
CIFS_CREDIT_GRANT = bytes.fromhex("ff00 ff00 0000 0000 00000000 00000000 00000000")

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)


def test_negotiate_request_vector() -> None:
    request = NegotiateRequest.unpack(CIFS_NEGOTIATE_REQUEST)
    assert request == NegotiateRequest(
        credits_requested=255, preferred_send_size=1364, max_receive_size=1364, max_fragmented_size=173910
    )
    assert request.pack() == CIFS_NEGOTIATE_REQUEST


def test_negotiate_response_vector() -> None:
    response = NegotiateResponse.unpack(KSMBD_NEGOTIATE_RESPONSE)
    assert response == NegotiateResponse(
        status=0,
        credits_requested=255,
        credits_granted=254,
        max_read_write_size=8 * 1024 * 1024,
        preferred_send_size=1364,
        max_receive_size=1364,
        max_fragmented_size=173910,
    )
    assert response.pack() == KSMBD_NEGOTIATE_RESPONSE


def test_negotiate_failure_vector() -> None:
    response = NegotiateResponse(status=0xC00000BB, negotiated_version=0)
    assert response.pack() == KSMBD_NOT_SUPPORTED
    assert NegotiateResponse.unpack(KSMBD_NOT_SUPPORTED) == response


def test_credit_grant_vector() -> None:
    message = DataTransferMessage(credits_requested=255, credits_granted=255)
    assert message.pack() == CIFS_CREDIT_GRANT
    decoded = DataTransferMessage.unpack(CIFS_CREDIT_GRANT)
    assert decoded == message
    assert decoded.data_offset == 0 and decoded.data_length == 0


def test_data_message_vector() -> None:
    message = DataTransferMessage(
        credits_requested=255, credits_granted=3, flags=1, remaining_data_length=100, data=b"hello"
    )
    wire = message.pack()
    assert wire == bytes.fromhex("ff00 0300 0100 0000 64000000 18000000 05000000 00000000") + b"hello"
    decoded = DataTransferMessage.unpack(wire)
    assert decoded == message
    assert isinstance(decoded.data, memoryview)  # no copy of the payload
    assert decoded.data.obj is wire


def test_buffer_descriptor_vector() -> None:
    wire = bytes.fromhex("0010000000000000 78563412 00001000")
    descriptor = BufferDescriptorV1.unpack(wire)
    assert descriptor == BufferDescriptorV1(offset=0x1000, token=0x12345678, length=0x100000)
    assert descriptor.pack() == wire
    assert BufferDescriptorV1.unpack_list(wire * 3) == [descriptor] * 3
    assert BufferDescriptorV1.pack_list([descriptor] * 2) == wire * 2


@pytest.mark.parametrize(
    ("cls", "size"),
    [(NegotiateRequest, 20), (NegotiateResponse, 32), (DataTransferMessage, 20), (BufferDescriptorV1, 16)],
)
def test_short_buffers_name_the_length(cls: type, size: int) -> None:
    for length in range(size):
        with pytest.raises(PDUError) as info:
            cls.unpack(bytes(length))  # type: ignore[attr-defined]
        assert info.value.field == "length"
        assert info.value.rule == f"{length} bytes is shorter than the {size}-byte minimum"
        assert isinstance(info.value, ProtocolError)


def test_misaligned_data_offset() -> None:
    wire = bytearray(DataTransferMessage(credits_requested=1, credits_granted=0, data=b"x" * 8).pack())
    wire[12] = 21
    with pytest.raises(PDUError) as info:
        DataTransferMessage.unpack(wire)
    assert (info.value.field, info.value.rule) == ("data_offset", "21 is not 8-byte aligned")


def test_data_offset_inside_header() -> None:
    wire = bytearray(DataTransferMessage(credits_requested=1, credits_granted=0, data=b"x" * 8).pack())
    wire[12] = 16
    with pytest.raises(PDUError) as info:
        DataTransferMessage.unpack(wire)
    assert (info.value.field, info.value.rule) == ("data_offset", "16 overlaps the 20-byte header")


def test_data_past_end_of_message() -> None:
    wire = DataTransferMessage(credits_requested=1, credits_granted=0, data=b"x" * 8).pack()[:-1]
    with pytest.raises(PDUError) as info:
        DataTransferMessage.unpack(wire)
    assert (info.value.field, info.value.rule) == (
        "data_length",
        "data_offset 24 + data_length 8 exceeds the 31-byte message",
    )


def test_descriptor_list_length() -> None:
    with pytest.raises(PDUError) as info:
        BufferDescriptorV1.unpack_list(bytes(17))
    assert info.value.rule == "17 bytes is not a multiple of 16"


@pytest.mark.parametrize(
    "make",
    [
        lambda: NegotiateRequest(
            credits_requested=-1, preferred_send_size=0, max_receive_size=0, max_fragmented_size=0
        ),
        lambda: NegotiateRequest(
            credits_requested=1 << 16, preferred_send_size=0, max_receive_size=0, max_fragmented_size=0
        ),
        lambda: NegotiateResponse(status=1 << 32),
        lambda: DataTransferMessage(credits_requested=0, credits_granted=0, flags=1 << 16),
        lambda: DataTransferMessage(credits_requested=0, credits_granted=0, data=b"x", data_offset=28),
        lambda: DataTransferMessage(credits_requested=0, credits_granted=0, data=b"x", data_offset=16),
        lambda: BufferDescriptorV1(offset=1 << 64, token=0, length=0),
        lambda: BufferDescriptorV1(offset=0, token=0, length=-1),
    ],
)
def test_fields_are_range_checked(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


@given(st.tuples(u16, u32, u32, u32, u16, u16, u16))
def test_negotiate_request_round_trip(fields: tuple[int, ...]) -> None:
    request = NegotiateRequest(*fields)
    wire = request.pack()
    assert len(wire) == 20
    assert NegotiateRequest.unpack(wire + b"trailing") == request


@given(st.tuples(u32, u16, u16, u32, u32, u32, u32, u16, u16, u16, u16))
def test_negotiate_response_round_trip(fields: tuple[int, ...]) -> None:
    response = NegotiateResponse(*fields)
    wire = response.pack()
    assert len(wire) == 32
    assert NegotiateResponse.unpack(wire) == response


@given(u16, u16, u16, u32, st.binary(max_size=300), st.integers(3, 10), u16)
def test_data_transfer_round_trip(
    requested: int, granted: int, flags: int, remaining: int, data: bytes, offset_words: int, reserved: int
) -> None:
    offset = offset_words * 8 if data else 0
    message = DataTransferMessage(requested, granted, flags, remaining, data, offset, reserved)
    wire = message.pack()
    assert len(wire) == (offset + len(data) if data else 20)
    assert DataTransferMessage.unpack(wire) == message


@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_another_error(buffer: bytes) -> None:
    for cls in (NegotiateRequest, NegotiateResponse, DataTransferMessage, BufferDescriptorV1):
        with contextlib.suppress(PDUError):
            cls.unpack(buffer)  # type: ignore[attr-defined]


@given(u64, u32, u32)
def test_buffer_descriptor_round_trip(offset: int, token: int, length: int) -> None:
    descriptor = BufferDescriptorV1(offset, token, length)
    assert BufferDescriptorV1.unpack(descriptor.pack()) == descriptor
