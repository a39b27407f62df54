"""Tests against the Linux kernel's RDMA stack; they run inside the guest (``make interop``)."""

from __future__ import annotations

import os

import pytest

IN_GUEST = "RDMA_VM_SIW_ADDR" in os.environ


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "last(order=0): runs after the other tests of the boot, lowest order first (it changes the guest)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs the kernel RDMA guest: run `make interop`")
    for item in items:
        if "interop" in item.nodeid and not IN_GUEST:
            item.add_marker(skip)
    items.sort(key=_order)


def _order(item: pytest.Item) -> tuple[int, int]:
    last = item.get_closest_marker("last")
    if last is None:
        return (0, 0)
    return (1, last.kwargs.get("order", 0))
