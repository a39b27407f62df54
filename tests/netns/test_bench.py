"""``smbdirect bench`` between two hosts: two network namespaces joined by a veth pair.

The server runs in one namespace (198.18.1.2), the client in the other
(198.18.1.1), each a process of its own as on two machines; 198.18.1.0/24 is
a benchmarking range that exists only inside the two namespaces.  The client
writes its JSON and a PNG plot, as the README's last step does.  Needs root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.test_faults import _ip, _netns_unavailable

NET = "198.18.1"
COMMAND = [sys.executable, "-m", "smbdirect_socket.cli", "bench"]
TIMEOUT = 120


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[str, str]]:
    """Namespaces (client, server) at 198.18.1.1 and 198.18.1.2, a veth pair between them."""
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    client, server = f"sdbc{tag}", f"sdbs{tag}"
    try:
        for namespace in (client, server):
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", f"sdb{tag}c", "netns", client, "type", "veth", "peer", "name", f"sdb{tag}s", "netns", server)
        for namespace, device, host in ((client, f"sdb{tag}c", 1), (server, f"sdb{tag}s", 2)):
            _ip("-n", namespace, "addr", "add", f"{NET}.{host}/24", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
        yield client, server
    finally:
        for namespace in (client, server):
            _ip("netns", "del", namespace, check=False)  # the veth pair goes with them
    left = [name for name in _ip("netns", "list").stdout.split() if name in (client, server)]
    assert not left, f"network namespaces left behind: {left}"


def _bench(namespaces: tuple[str, str], *client_args: str) -> subprocess.CompletedProcess[str]:
    """One test: ``bench --server -1`` in the server's namespace, the client in the other's."""
    client, server = namespaces
    process = subprocess.Popen(
        ["ip", "netns", "exec", server, *COMMAND, "--server", f"{NET}.2", "-p", "0", "-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+) \(", line)
        assert match, line
        result = subprocess.run(
            ["ip", "netns", "exec", client, *COMMAND, match.group(1), *client_args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert process.wait(TIMEOUT) == 0
        return result
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_throughput_between_namespaces_with_json_and_plot(namespaces: tuple[str, str], tmp_path: Path) -> None:
    output, plot = tmp_path / "send.json", tmp_path / "send.png"
    args = ["-t", "1", "-i", "0.25", "--json", str(output)]
    if _has_matplotlib():
        args += ["--plot", str(plot)]
    result = _bench(namespaces, *args)
    document = json.loads(output.read_text())
    assert document["client"]["connection"]["local_address"].startswith(f"{NET}.1:")
    assert document["server"]["connection"]["local_address"].startswith(f"{NET}.2:")
    stream = document["end"]["streams"]["client_to_server"]
    assert stream["sender"]["bytes"] == stream["receiver"]["bytes"] > 0
    assert stream["receiver"]["bits_per_second"] == 8 * stream["receiver"]["bytes_per_second"]
    assert len([r for r in document["intervals"] if r["stream"] == "sent"]) >= 4
    assert "receiver" in result.stdout
    if _has_matplotlib():
        assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_latency_and_rdma_between_namespaces(namespaces: tuple[str, str], tmp_path: Path) -> None:
    _bench(namespaces, "--latency", "-t", "0.5", "--json", str(tmp_path / "latency.json"))
    stats = json.loads((tmp_path / "latency.json").read_text())["end"]["round_trip"]
    assert stats["round_trips"] > 0 and stats["min_microseconds"] > 0
    _bench(namespaces, "--rdma", "write", "-t", "0.5", "--json", str(tmp_path / "rdma.json"))
    record = json.loads((tmp_path / "rdma.json").read_text())["end"]["rdma_write"]
    assert record["bytes"] == record["operations"] * (1 << 20) > 0


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
