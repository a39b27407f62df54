"""Tests against the Linux kernel's RDMA stack; they run inside the guest (``make interop``)."""

from __future__ import annotations

import os

import pytest

IN_GUEST = "RDMA_VM_SIW_ADDR" in os.environ


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: runs after the other tests of the boot (it changes the guest)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs the kernel RDMA guest: run `make interop`")
    for item in items:
        if "interop" in item.nodeid and not IN_GUEST:
            item.add_marker(skip)
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
