"""The gateway's SMB2 codec: compound chains, READ/WRITE channel rewrites, error responses."""

from __future__ import annotations

import struct

import pytest

from smbdirect_socket import BufferDescriptorV1
from smbdirect_socket.smb import smb2


def header(command: int, message_id: int, *, flags: int = 0, status: int = 0, credits: int = 1) -> bytes:
    data = bytearray(64)
    struct.pack_into("<4sHHIHHIIQ", data, 0, b"\xfeSMB", 64, 1, status, command, credits, flags, 0, message_id)
    return bytes(data)


def read_request(message_id: int, length: int, channel: int, descriptors: list[BufferDescriptorV1]) -> bytes:
    info = BufferDescriptorV1.pack_list(descriptors)
    body = struct.pack("<HBBIQ16sIIIHH", 49, 0, 0, length, 0, b"F" * 16, 0, channel, 0, 64 + 48, len(info))
    return header(smb2.READ, message_id) + body + info


def test_split_and_join_a_compound() -> None:
    first = smb2.Command(header(5, 1) + b"create body")  # 75 bytes: padded to 80 in a chain
    second = smb2.Command(header(smb2.READ, 2, flags=0x4) + b"read body")
    message = smb2.join([first, second])
    assert struct.unpack_from("<I", message, 20)[0] == 80
    commands = smb2.split(message)
    assert [c.command for c in commands] == [5, smb2.READ] and commands[1].data == second.data
    assert commands[0].data[64:] == b"create body" + bytes(5)  # the padding belongs to the link
    assert smb2.join(commands) == message
    assert smb2.join([second]) == second.data


@pytest.mark.parametrize(
    "message, problem",
    [
        (b"\xfeSMB" + bytes(10), "truncated"),
        (b"\xfeSMX" + bytes(60), "no SMB2 header"),
        (header(5, 1)[:20] + struct.pack("<I", 12) + header(5, 1)[24:] + bytes(16), "not a valid link"),
    ],
)
def test_malformed_chains(message: bytes, problem: str) -> None:
    with pytest.raises(smb2.Smb2Error, match=problem):
        smb2.split(message)


def test_read_with_rdma_channel_becomes_a_plain_read() -> None:
    descriptor = BufferDescriptorV1(0x2000, 0x1234, 65536)
    command = smb2.split(read_request(7, 65536, smb2.CHANNEL_RDMA_V1_INVALIDATE, [descriptor]))[0]
    assert command.channel() == smb2.CHANNEL_RDMA_V1_INVALIDATE
    assert command.descriptors() == [descriptor] and command.read_length() == 65536
    plain = command.as_plain_read()
    assert plain.channel() == smb2.CHANNEL_NONE and len(plain.data) == 64 + 49
    assert plain.read_length() == 65536 and plain.message_id == 7


def test_bad_channel_info_is_an_invalid_parameter() -> None:
    message = bytearray(read_request(7, 100, smb2.CHANNEL_RDMA_V1, [BufferDescriptorV1(0, 1, 100)]))
    struct.pack_into("<H", message, 64 + 46, 15)  # ReadChannelInfoLength not a multiple of 16
    with pytest.raises(smb2.Smb2Error) as info:
        smb2.split(bytes(message))[0].descriptors()
    assert info.value.status == smb2.STATUS_INVALID_PARAMETER


def test_read_response_rewritten_for_rdma() -> None:
    data = b"d" * 1000
    body = struct.pack("<HBBIII", 17, 80, 0, len(data), 0, 0) + data
    response = smb2.Command(header(smb2.READ, 7, flags=smb2.FLAG_SERVER_TO_REDIR) + body)
    assert bytes(response.read_response_data()) == data
    rdma = response.as_rdma_read_response(len(data))
    assert struct.unpack_from("<HBBII", rdma.data, 64) == (17, 80, 0, 0, 1000)
    assert len(rdma.data) == 64 + 16  # as ksmbd: nothing past DataOffset


def test_error_response() -> None:
    request = smb2.Command(header(smb2.WRITE, 9, flags=smb2.FLAG_SIGNED, credits=16))
    error = smb2.error_response(request, smb2.STATUS_INVALID_PARAMETER)
    assert error.status == smb2.STATUS_INVALID_PARAMETER and error.message_id == 9
    assert error.flags & smb2.FLAG_SERVER_TO_REDIR and not error.flags & smb2.FLAG_SIGNED
    assert struct.unpack_from("<H", error.data, 14)[0] == 16
    assert error.data[64:] == struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00"
