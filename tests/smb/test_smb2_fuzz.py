"""Fuzzing the SMB2 codec and the gateway's request translation: only Smb2Error, ever.

Seeds are real messages: requests as smbprotocol sends them (RDMA READ and
WRITE as the tests and the benchmark build them, :mod:`smbdirect_socket.smb.rdma_io`, inline I/O, CREATE, ECHO,
compounds) and responses as Samba sends them; hypothesis mutates their bytes,
fields and lengths.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smbprotocol.connection import SMB2Echo
from smbprotocol.header import SMB2HeaderRequest, SMB2HeaderResponse
from smbprotocol.open import (
    ReadWriteChannel,
    SMB2CloseRequest,
    SMB2CreateRequest,
    SMB2ReadRequest,
    SMB2ReadResponse,
    SMB2WriteRequest,
    SMB2WriteResponse,
)

from smbdirect_socket import BufferDescriptorV1
from smbdirect_socket.smb import smb2
from smbdirect_socket.smb.gateway import GatewayLimits, translate
from smbdirect_socket.smb.rdma_io import rdma_read_request, rdma_write_request

FILE_ID = bytes(range(16))
RDMA_V1 = ReadWriteChannel.SMB2_CHANNEL_RDMA_V1
RDMA_V1_INVALIDATE = ReadWriteChannel.SMB2_CHANNEL_RDMA_V1_INVALIDATE
DESCRIPTORS = BufferDescriptorV1.pack_list([BufferDescriptorV1(0x1000, 0xABCD, 65536), BufferDescriptorV1(0, 7, 4096)])


def message(payload: Any, message_id: int, header: Any = None) -> bytes:
    header = header or SMB2HeaderRequest()
    header["command"] = payload.COMMAND
    header["message_id"] = message_id
    header["credit_charge"] = 1
    header["data"] = payload
    return bytes(header.pack())


def seeds() -> list[bytes]:
    inline_write = SMB2WriteRequest()
    inline_write["file_id"] = FILE_ID
    inline_write["buffer"] = b"inline data" * 10
    plain_read = SMB2ReadRequest()
    plain_read["length"] = 4096
    plain_read["file_id"] = FILE_ID
    create = SMB2CreateRequest()
    create["buffer_path"] = "dir\\file.bin".encode("utf-16-le")
    close = SMB2CloseRequest()
    close["file_id"] = FILE_ID
    read_response = SMB2ReadResponse()
    read_response["buffer"] = b"d" * 300
    requests = [
        message(rdma_write_request(FILE_ID, 0, 65536, RDMA_V1, DESCRIPTORS), 1),
        message(rdma_write_request(FILE_ID, 0, 69632, RDMA_V1_INVALIDATE, DESCRIPTORS), 2),
        message(rdma_read_request(FILE_ID, 0, 65536, RDMA_V1, DESCRIPTORS), 3),
        message(rdma_read_request(FILE_ID, 0, 4096, RDMA_V1_INVALIDATE, DESCRIPTORS), 4),
        message(inline_write, 5),
        message(plain_read, 6),
        message(SMB2Echo(), 7),
        message(create, 8),
    ]
    compound = smb2.join(
        [
            smb2.Command(message(create, 9)),
            smb2.Command(message(rdma_write_request(FILE_ID, 0, 4096, RDMA_V1, DESCRIPTORS), 10)),
            smb2.Command(message(rdma_read_request(FILE_ID, 0, 4096, RDMA_V1, DESCRIPTORS), 11)),
            smb2.Command(message(close, 12)),
        ]
    )
    responses = [
        message(read_response, 3, SMB2HeaderResponse()),
        message(SMB2WriteResponse(), 1, SMB2HeaderResponse()),
        message(SMB2Echo(), 7, SMB2HeaderResponse()),
    ]
    return [*requests, compound, *responses]


SEEDS = seeds()
INTERESTING = [0, 1, 7, 8, 15, 16, 63, 64, 80, 112, 128, 0x7FFF, 0xFFFF, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed with a few bytes, fields or lengths changed."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["byte", "u16", "u32", "cut", "grow"]))
        if kind == "byte" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind in ("u16", "u32") and position + 4 <= len(data):
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 0xFFFFFFFF))
            layout = "<H" if kind == "u16" else "<I"
            struct.pack_into(layout, data, position, value & (0xFFFF if kind == "u16" else 0xFFFFFFFF))
        elif kind == "cut":
            del data[position:]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


def exercise(command: smb2.Command) -> None:
    """Every accessor the gateway uses; each may refuse, only with Smb2Error."""
    for use in (
        lambda: command.channel(),
        lambda: command.descriptors(),
        lambda: command.read_length(),
        lambda: command.write_length(),
        lambda: command.as_plain_read(),
        lambda: command.as_inline_write(command.write_length()),
        lambda: command.as_rdma_read_response(len(command.read_response_data())),
    ):
        with contextlib.suppress(smb2.Smb2Error):
            use()
    error = smb2.error_response(command, smb2.STATUS_INVALID_PARAMETER)
    assert error.message_id == command.message_id and error.status == smb2.STATUS_INVALID_PARAMETER


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated())
def test_smb2_codec_raises_only_its_error(data: bytes) -> None:
    try:
        commands = smb2.split(data)
    except smb2.Smb2Error:
        return
    for command in commands:
        exercise(command)
    again = smb2.split(smb2.join(commands))
    assert [c.data for c in again[:-1]] == [c.data + bytes(-len(c.data) % 8) for c in commands[:-1]]
    assert again[-1].data == commands[-1].data


@FUZZ
@given(mutated(), st.sampled_from([0, 4096, 65536, 8 << 20]), st.sets(st.integers(0, 16), max_size=3))
def test_translation_raises_only_its_error(data: bytes, max_read_write_size: int, in_use: set[int]) -> None:
    limits = GatewayLimits(max_compound_commands=8, max_compound_bytes=1 << 20, rdma_bytes_per_session=1 << 20)
    try:
        commands = smb2.split(data)
        translation = translate(commands, limits, max_read_write_size, in_use)
    except smb2.Smb2Error as exc:
        assert exc.status in (smb2.STATUS_INVALID_PARAMETER, smb2.STATUS_INSUFFICIENT_RESOURCES)
        return
    assert translation.size <= limits.max_compound_bytes and translation.hold <= limits.rdma_bytes_per_session
    assert not (translation.reads.keys() | translation.write_tokens.keys()) & in_use
    # What goes to the server is a well-formed chain of as many commands, RDMA channels gone.
    sent = b"".join(part.head + bytes(part.length + part.pad) for part in translation.parts)
    assert len(sent) == translation.size
    forwarded = smb2.split(sent)
    assert len(forwarded) == len(commands)
    assert all(command.channel() == smb2.CHANNEL_NONE for command in forwarded)


def test_seeds_translate() -> None:
    """The seeds themselves are good requests: the fuzzing starts from the translated path."""
    limits = GatewayLimits()
    for seed in SEEDS[:9]:
        translate(smb2.split(seed), limits)
