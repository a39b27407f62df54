"""Just enough SMB2 for the gateway to do RDMA channel I/O: sans-IO, no state.

An SMB2 message is a chain of commands (a compound), each a 64-byte header
and a body, linked by ``NextCommand`` offsets aligned to 8 bytes.  The
gateway rewrites READ and WRITE requests that use Channel RDMA_V1 or
RDMA_V1_INVALIDATE into ordinary ones, and READ responses back into the
RDMA form ([MS-SMB2] 2.2.19-2.2.22, 3.3.5.12-13).  Anything it does not
translate passes unchanged.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from ..errors import ProtocolError
from ..pdu import BufferDescriptorV1

__all__ = [
    "CHANNEL_NONE",
    "CHANNEL_RDMA_V1",
    "CHANNEL_RDMA_V1_INVALIDATE",
    "STATUS_INSUFFICIENT_RESOURCES",
    "STATUS_INVALID_PARAMETER",
    "Command",
    "Smb2Error",
    "chain",
    "error_response",
    "is_smb2",
    "join",
    "split",
]

PROTOCOL_ID = b"\xfeSMB"
HEADER_SIZE = 64
READ = 0x0008
WRITE = 0x0009
FLAG_SERVER_TO_REDIR = 0x1
FLAG_ASYNC = 0x2
FLAG_SIGNED = 0x8
CHANNEL_NONE = 0
CHANNEL_RDMA_V1 = 1
CHANNEL_RDMA_V1_INVALIDATE = 2
STATUS_PENDING = 0x00000103
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A

_HEADER = struct.Struct("<4sHHIHHIIQ")  # up to and including MessageId
# READ request body: Length, Offset, FileId, MinimumCount, Channel, RemainingBytes, info offset, info length
_READ = struct.Struct("<HBBIQ16sIIIHH")
# WRITE request body: DataOffset, Length, Offset, FileId, Channel, RemainingBytes, info offset, info length, Flags
_WRITE = struct.Struct("<HHIQ16sIIHHI")
# READ response body: DataOffset, Reserved, DataLength, DataRemaining, Flags
_READ_RESPONSE = struct.Struct("<HBBIII")


class Smb2Error(ValueError):
    """A malformed SMB2 message, or one that cannot be translated: answer with ``status``."""

    def __init__(self, message: str, status: int = STATUS_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.status = status


def _unpack(layout: struct.Struct, data: bytes, what: str) -> tuple[Any, ...]:
    """The fields of the body ``layout`` after the header, or Smb2Error when it is cut short."""
    if len(data) < HEADER_SIZE + layout.size:
        raise Smb2Error(f"SMB2 {what} is truncated")
    return layout.unpack_from(data, HEADER_SIZE)


def _check_header(instance: Command, attribute: attrs.Attribute[bytes], data: bytes) -> None:
    if len(data) < HEADER_SIZE:
        raise Smb2Error(f"SMB2 command of {len(data)} bytes has no whole header")


@attrs.frozen
class Command:
    """One command of a chain: its bytes (header and body, no padding).

    Every accessor raises only :class:`Smb2Error` for bytes that do not fit.
    """

    data: bytes = attrs.field(validator=_check_header)

    @property
    def command(self) -> int:
        return int(struct.unpack_from("<H", self.data, 12)[0])

    @property
    def status(self) -> int:
        return int(struct.unpack_from("<I", self.data, 8)[0])

    @property
    def flags(self) -> int:
        return int(struct.unpack_from("<I", self.data, 16)[0])

    @property
    def message_id(self) -> int:
        return int(struct.unpack_from("<Q", self.data, 24)[0])

    def channel(self) -> int:
        """The RDMA channel of a READ or WRITE request (CHANNEL_NONE for anything else)."""
        if self.flags & FLAG_SERVER_TO_REDIR or self.command not in (READ, WRITE):
            return CHANNEL_NONE
        if self.command == READ:
            return int(_unpack(_READ, self.data, "READ request")[7])
        return int(_unpack(_WRITE, self.data, "WRITE request")[5])

    def descriptors(self) -> list[BufferDescriptorV1]:
        """The Buffer Descriptor V1 list of a READ or WRITE request with an RDMA channel."""
        if self.command == READ:
            info_offset, info_length = _unpack(_READ, self.data, "READ request")[9:11]
        else:
            info_offset, info_length = _unpack(_WRITE, self.data, "WRITE request")[7:9]
        if info_length == 0 or info_length % 16 or info_offset + info_length > len(self.data):
            raise Smb2Error(f"channel info [{info_offset}, +{info_length}) is not a descriptor list in the message")
        try:
            return BufferDescriptorV1.unpack_list(self.data[info_offset : info_offset + info_length])
        except (ValueError, ProtocolError) as exc:
            raise Smb2Error(f"bad buffer descriptors: {exc}") from None

    def read_length(self) -> int:
        return int(_unpack(_READ, self.data, "READ request")[3])

    def write_length(self) -> int:
        """Bytes an RDMA WRITE carries in the client's buffers (RemainingBytes)."""
        return int(_unpack(_WRITE, self.data, "WRITE request")[6])

    def as_plain_read(self) -> Command:
        """This READ request with Channel NONE and no channel info."""
        size, pad, flags, length, offset, file_id, minimum, _, _, _, _ = _unpack(_READ, self.data, "READ request")
        body = _READ.pack(size, pad, flags, length, offset, file_id, minimum, CHANNEL_NONE, 0, 0, 0)
        return Command(self.data[:HEADER_SIZE] + body + b"\x00")

    def as_inline_write(self, length: int) -> Command:
        """This WRITE request with Channel NONE, to be followed by ``length`` bytes of inline data."""
        size, _, _, offset, file_id, _, _, _, _, flags = _unpack(_WRITE, self.data, "WRITE request")
        body = _WRITE.pack(size, HEADER_SIZE + _WRITE.size, length, offset, file_id, CHANNEL_NONE, 0, 0, 0, flags)
        return Command(self.data[:HEADER_SIZE] + body)

    def read_response_data(self) -> memoryview:
        """The data of a successful READ response."""
        data_offset, _, data_length = _unpack(_READ_RESPONSE, self.data, "READ response")[1:4]
        if data_offset + data_length > len(self.data):
            raise Smb2Error("READ response data runs past the message")
        return memoryview(self.data)[data_offset : data_offset + data_length]

    def as_rdma_read_response(self, written: int) -> Command:
        """This READ response after its data went by RDMA: DataLength 0, DataRemaining ``written``."""
        size, _, reserved, _, _, flags = _unpack(_READ_RESPONSE, self.data, "READ response")
        body = _READ_RESPONSE.pack(size, HEADER_SIZE + _READ_RESPONSE.size, reserved, 0, written, flags)
        # No buffer byte: cifs.ko takes a response longer than DataOffset for inline data.
        return Command(self.data[:HEADER_SIZE] + body)


def split(message: bytes) -> list[Command]:
    """The commands of a (possibly compound) SMB2 message."""
    commands = []
    offset = 0
    while True:
        if len(message) - offset < HEADER_SIZE:
            raise Smb2Error(f"SMB2 header at {offset} is truncated")
        protocol, structure_size = struct.unpack_from("<4sH", message, offset)
        if protocol != PROTOCOL_ID or structure_size != HEADER_SIZE:
            raise Smb2Error(f"no SMB2 header at {offset}")
        (next_command,) = struct.unpack_from("<I", message, offset + 20)
        if next_command == 0:
            commands.append(Command(bytes(message[offset:])))
            return commands
        if next_command % 8 or next_command < HEADER_SIZE or offset + next_command > len(message):
            raise Smb2Error(f"NextCommand {next_command} at {offset} is not a valid link")
        commands.append(Command(bytes(message[offset : offset + next_command])))
        offset += next_command


def chain(commands: list[Command], following: list[int] | None = None) -> list[tuple[bytes, int]]:
    """Each command with NextCommand linking it to the next, and the zero bytes padding it to 8.

    ``following[i]`` more bytes of command ``i`` go between it and its padding
    (data the gateway streams after a WRITE header).
    """
    following = following or [0] * len(commands)
    linked = []
    for index, (command, more) in enumerate(zip(commands, following, strict=True)):
        last = index == len(commands) - 1
        size = len(command.data) + more
        pad = 0 if last else -size % 8
        link = struct.pack("<I", 0 if last else size + pad)
        data = command.data
        if data[20:24] != link:  # a large WRITE is usually linked already: no copy of it then
            data = data[:20] + link + data[24:]
        linked.append((data, pad))
    return linked


def join(commands: list[Command]) -> bytes:
    """A message chaining ``commands``, each padded to 8 bytes, NextCommand rewritten."""
    return b"".join(data + bytes(pad) for data, pad in chain(commands))


def is_smb2(message: bytes) -> bool:
    """An SMB2 message (not SMB1, not an encrypted or compressed transform)."""
    return message[:4] == PROTOCOL_ID


def error_response(request: Command, status: int) -> Command:
    """The ERROR response a server gives ``request`` ([MS-SMB2] 2.2.2)."""
    header = bytearray(request.data[:HEADER_SIZE])
    struct.pack_into("<I", header, 8, status)
    (credits,) = struct.unpack_from("<H", header, 14)
    struct.pack_into("<H", header, 14, max(credits, 1))  # grant what was asked, at least one
    flags = (request.flags | FLAG_SERVER_TO_REDIR) & ~FLAG_SIGNED
    struct.pack_into("<I", header, 16, flags)
    struct.pack_into("<I", header, 20, 0)
    header[48:64] = bytes(16)  # no signature
    return Command(bytes(header) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00")
