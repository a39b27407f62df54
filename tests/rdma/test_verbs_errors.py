"""The verbs provider on a machine without RDMA: clear errors that name the fix.

The provider itself is tested against the kernel's rxe and siw in the
interop guest (tests/interop/test_verbs.py); here, what a user sees when
pyverbs, librdmacm or a device is missing, and the address codec rdma_cm uses.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from smbdirect_socket.rdma import RdmaError, get_provider
from smbdirect_socket.rdma.verbs.rdmacm import EventChannel, pack_sockaddr, unpack_sockaddr

HAS_DEVICE = os.path.isdir("/sys/class/infiniband") and bool(os.listdir("/sys/class/infiniband"))
pytestmark = pytest.mark.skipif(HAS_DEVICE, reason="this machine has an RDMA device")


def test_no_device_or_no_pyverbs_names_the_fix() -> None:
    with pytest.raises(RdmaError) as info:
        get_provider("verbs")
    if info.value.errno == errno.ENOPKG:
        assert "apt install python3-pyverbs" in str(info.value)
    else:
        assert info.value.errno == errno.ENODEV
        assert "no RDMA device" in str(info.value) and "rdma link add" in str(info.value)


def test_event_channel_without_rdma_cm_is_a_clear_error() -> None:
    with pytest.raises(RdmaError) as info:
        EventChannel()
    assert info.value.errno in (errno.ENODEV, errno.ENOENT, errno.ENOPKG), info.value
    assert "rdma_cm" in str(info.value) or "librdmacm" in str(info.value)


def test_the_process_carries_on_after_the_errors() -> None:
    for _ in range(3):
        with pytest.raises(RdmaError):
            get_provider("verbs")
    assert get_provider("softiwarp").name == "softiwarp"


@pytest.mark.parametrize("address", [("10.99.1.1", 5445), ("192.0.2.7", 0), ("fe80::1", 445), ("::", 65535)])
def test_sockaddr_round_trip(address: tuple[str, int]) -> None:
    raw = pack_sockaddr(address).raw
    assert len(raw) == 128
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    assert int.from_bytes(raw[:2], "little") == family
    assert unpack_sockaddr(raw) == address
