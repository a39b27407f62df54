"""Importing the sans-IO core stays light; the package still offers every documented name."""

from __future__ import annotations

import subprocess
import sys

import pytest

import smbdirect_socket

SANS_IO = ["constants", "credits", "errors", "parameters", "pdu", "protocol", "reassembly", "testing"]

# What the sans-IO core must not pull in: the event loop, the sockets, the engine, SMB.
HEAVY = [
    "trio",
    "smbdirect_socket.blocking",
    "smbdirect_socket.trio",
    "smbdirect_socket.connection",
    "smbdirect_socket.patching",
    "smbdirect_socket.rdma",
    "smbdirect_socket.smb",
]


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    script = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_module_imports_nothing_heavy(module: str) -> None:
    loaded = loaded_after(f"import smbdirect_socket.{module}")
    assert f"smbdirect_socket.{module}" in loaded
    assert sorted(loaded.intersection(HEAVY)) == []


def test_package_import_is_light_until_a_socket_is_asked_for() -> None:
    assert sorted(loaded_after("import smbdirect_socket").intersection(HEAVY)) == []
    loaded = loaded_after("import smbdirect_socket\nsmbdirect_socket.socket")
    assert {"trio", "smbdirect_socket.blocking"} <= loaded


def test_every_documented_name_is_there() -> None:
    for name in smbdirect_socket.__all__:
        assert getattr(smbdirect_socket, name) is not None, name
    assert set(smbdirect_socket.__all__) <= set(dir(smbdirect_socket))
    assert smbdirect_socket.socket.__module__ == "smbdirect_socket.blocking"
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        smbdirect_socket.no_such_name  # noqa: B018


def test_star_import_offers_the_documented_names() -> None:
    namespace: dict[str, object] = {}
    exec("from smbdirect_socket import *", namespace)
    assert set(smbdirect_socket.__all__) <= set(namespace)
