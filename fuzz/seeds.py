"""Seed corpora of the harnesses, from the project's framing and test vectors.

python fuzz/seeds.py DIRECTORY
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from smbdirect_socket.pdu import encode_data_transfer
from smbdirect_socket.rdma.soft import ddp
from smbdirect_socket.rdma.soft.ddp import Op
from smbdirect_socket.rdma.soft.mpa import fpdu_pieces

# ksmbd's Negotiate Response as siw carried it (docs: the iWARP notes).
NEGOTIATE_RESPONSE = bytes.fromhex("0001000100010000ff00fe0000000000000080005405000054050000 56a70200".replace(" ", ""))


def fpdu(header: bytes, payload: bytes, crc: bool) -> bytes:
    return b"".join(bytes(p) for p in fpdu_pieces(header, payload, crc))


def rx_config(crc: bool) -> bytes:
    """fpdu_rx.c's set-up: receives of 3000 bytes, region 1 writable at 0x1000 (4096 bytes)."""
    out = bytes([crc]) + struct.pack("!HHHH", 3000, 3000, 3000, 3000)
    out += bytes([1, 2]) + struct.pack("!I", 0x1000) + bytes([0]) + struct.pack("!H", 4096)
    out += bytes([0, 4]) + struct.pack("!I", 0x2000) + bytes([0]) + struct.pack("!H", 100)
    out += bytes([2, 2]) + struct.pack("!I", 0) + bytes([0]) + struct.pack("!H", 8)
    out += struct.pack("!IH", 0x77, 64) + struct.pack("!IH", 0x78, 0)
    return out + struct.pack("!H", 700)


def rx_stream(crc: bool) -> bytes:
    return b"".join(
        (
            fpdu(ddp.untagged_header(Op.SEND, True, 0, 1, 0), NEGOTIATE_RESPONSE, crc),
            fpdu(ddp.untagged_header(Op.SEND, False, 0, 2, 0), bytes(1000), crc),
            fpdu(ddp.untagged_header(Op.SEND_SE, True, 0, 2, 1000), bytes(500), crc),
            fpdu(ddp.tagged_header(Op.WRITE, True, 0x101, 0x1010), b"w" * 64, crc),
            fpdu(ddp.tagged_header(Op.READ_RESPONSE, True, 0x77, 0), b"r" * 64, crc),
            fpdu(ddp.untagged_header(Op.SEND_INVALIDATE, True, 0, 3, 0, 0x302), b"i", crc),
        )
    )


def smbd_seed(mode: int) -> bytes:
    """``mode``: bit 0 a gather buffer for every payload, bit 1 nothing gathered."""
    config = bytes([8]) + struct.pack("!HH", 0, 0) + (1 << 20).to_bytes(3, "big") + struct.pack("!H", 1364) + b"\xff"
    pdus = [encode_data_transfer(255, 10, 0, 100, bytes(100)), encode_data_transfer(255, 0, 0, 0, bytes(100))]
    pdus.append(encode_data_transfer(255, 1, 1, 0, b""))
    return config + bytes([mode]) + b"".join(bytes([len(p)]) + p for p in pdus)


def main() -> None:
    root = Path(sys.argv[1])
    seeds = {
        "fpdu_rx": [rx_config(crc) + rx_stream(crc) for crc in (False, True)],
        "smbd_check": [smbd_seed(1), smbd_seed(3)],
        "roundtrip": [b"\x01\x05\xdc" + struct.pack("!H", 2000) + bytes(range(256)) * 8, b"\x00\x00\x40" + b"x" * 300],
    }
    for harness, inputs in seeds.items():
        (root / harness).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(inputs):
            (root / harness / f"seed-{i}").write_bytes(data)


if __name__ == "__main__":
    main()
