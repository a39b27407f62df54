"""Parameters: Linux defaults, ranges and the kernel's packed layout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smbdirect_socket as sd
from smbdirect_socket import Parameters, PDUError
from smbdirect_socket import constants as c


def test_constants() -> None:
    assert (sd.IPPROTO_SMBDIRECT, sd.SOL_SMBDIRECT) == (257, 289)
    assert sd.SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE == 0x40045320
    assert (sd.SMBDIRECT_PORT, sd.SMBDIRECT_IWARP_PORT, sd.SMBDIRECT_VERSION) == (445, 5445, 0x0100)


def test_linux_defaults() -> None:
    p = Parameters()
    assert (p.recv_credit_max, p.send_credit_target) == (255, 255)
    assert (p.max_send_size, p.max_recv_size, p.max_fragmented_recv_size) == (1364, 1364, 173910)
    assert (p.keepalive_interval_msec, p.keepalive_timeout_msec, p.negotiate_timeout_msec) == (120000, 5000, 120000)
    assert (p.resolve_addr_timeout_msec, p.resolve_route_timeout_msec, p.rdma_connect_timeout_msec) == (
        5000,
        5000,
        5000,
    )
    assert (p.initiator_depth, p.responder_resources, p.max_read_write_size) == (1, 1, 0)


def test_kernel_layout() -> None:
    p = Parameters()
    packed = p.pack()
    assert len(packed) == 64
    assert Parameters.layout.format == "=Q4I4H8I"
    assert Parameters.unpack(packed) == p


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_recv_size": 127}, "max_recv_size must be in [128, 4294967295], got 127"),
        ({"max_fragmented_recv_size": 131071}, "max_fragmented_recv_size must be in [131072, 4294967295], got 131071"),
        ({"recv_credit_max": 2}, "recv_credit_max must be in [3, 65535], got 2"),
        ({"send_credit_target": 65536}, "send_credit_target must be in [3, 65535], got 65536"),
        ({"initiator_depth": 256}, "initiator_depth must be in [0, 255], got 256"),
        ({"negotiate_timeout_msec": 0}, "negotiate_timeout_msec must be in [1, 4294967295], got 0"),
        ({"flags": 4}, "flags may only hold PORT_RANGE_ONLY_IB/IW (0x3), got 4"),
        ({"flags": 3}, "flags cannot ask for both only-IB and only-iWARP ports"),
    ],
)
def test_ranges(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Parameters().replace(**changes)
    assert str(info.value) == message


def test_unpack_wrong_size() -> None:
    with pytest.raises(PDUError) as info:
        Parameters.unpack(bytes(63))
    assert str(info.value) == "Parameters.length: must be 64 bytes, got 63"


@given(st.integers(3, 0xFFFF), st.integers(c.MIN_RECEIVE_SIZE, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_round_trip(credits: int, size: int, keepalive: int) -> None:
    p = Parameters(recv_credit_max=credits, max_send_size=size, keepalive_interval_msec=keepalive)
    assert Parameters.unpack(p.pack()) == p
