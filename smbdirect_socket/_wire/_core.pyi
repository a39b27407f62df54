# Types of the compiled wire core (binding.c).
from collections.abc import Sequence
from typing import Any

Buffer = bytes | bytearray | memoryview

def crc32c(data: Buffer, crc: int = 0, /) -> int: ...
def crc32c_table(data: Buffer, crc: int = 0, /) -> int: ...
def crc32c_hardware() -> bool: ...
def frame(
    requests: Sequence[tuple[int, int, int, Buffer]], untagged_chunk: int, tagged_chunk: int, crc: bool, /
) -> tuple[bytes, list[int]]: ...
def frame_one(
    op: int, word_or_stag: int, msn_or_offset: int, data: Buffer, untagged_chunk: int, tagged_chunk: int, crc: bool, /
) -> bytes: ...
def receive(
    data: Buffer,
    crc: bool,
    state: tuple[int, bool, int, int],
    current: Any,
    receives: Any,
    regions: dict[int, Any],
    reads: Any,
    memory: Any,
    /,
) -> tuple[int, int, int, list[tuple[int, int, int, int]], tuple[int, int, int, int], bool]: ...
def encode_data_transfers(
    requested: int, granted: int, flags: int, data: Buffer, start: int, count: int, chunk: int, /
) -> bytes: ...
def encode_data_transfer_list(
    requested: int,
    granted: int,
    flags: int,
    data: Buffer,
    start: int,
    count: int,
    chunk: int,
    /,
) -> list[bytes]: ...
def check_data_transfers(
    pdus: Sequence[Buffer],
    into: Buffer | None,
    state: tuple[int, int, int, int, bool, int, int, int],
    limits: tuple[int, int, int],
    /,
) -> tuple[
    int,
    int,
    list[int],
    list[int],
    list[memoryview] | None,
    tuple[int, int, int, int, bool, int, int, int],
    tuple[int, int, int, int, int] | None,
]: ...
