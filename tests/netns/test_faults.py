"""Network faults between two network namespaces joined by a veth pair.

The software iWARP provider runs on both sides (each end a process of its own,
``tests.netns.peer``), over 198.18.0.0/24, a benchmarking range that exists
only inside the two namespaces.  Delay, loss, duplication and reordering
(``tc netem``) must leave the data intact and in order; a cut link or a rule
that drops every packet must be noticed by the SMB-Direct keepalive in
``keepalive_interval_msec + keepalive_timeout_msec`` with ``ETIMEDOUT``; and
once the link is back, new connections work.

Needs root.  A kernel without ``sch_netem`` or the ``tc`` drop action (this
host's) skips those cases: ``make faults`` runs them all in the interop guest.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NET = "198.18.0"
_ports = itertools.count(7445)
# The interop guest's CPU is emulated: ten times slower, so less data and more time there.
GUEST = "RDMA_VM_SIW_ADDR" in os.environ
SLOW = 10 if GUEST else 1
MESSAGES = 16 if GUEST else 64  # 64 KiB each
SLACK = 1.0 * SLOW  # seconds a loaded machine may add to the timers
# Keepalive interval and timeout, seconds: an emulated receiver can be busy for over a second.
INTERVAL, TIMEOUT = (2.0, 5.0) if GUEST else (1.0, 1.0)
KEEPALIVE = ("--keepalive-interval-ms", f"{INTERVAL * 1000:.0f}", "--keepalive-timeout-ms", f"{TIMEOUT * 1000:.0f}")
RATE = 1e6 if GUEST else 40e6  # bit/s of the rate-limited link, below what the machine moves


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _tc(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", "-n", namespace, *args], capture_output=True, text=True, timeout=30)


class Peer:
    """A ``tests.netns.peer`` process in a namespace, its JSON events in a queue."""

    def __init__(self, namespace: str, *args: str) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.netns.peer", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def wait_for(self, *events: str, timeout: float) -> dict[str, Any]:
        """The next event among ``events``; an unexpected exit or error fails."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event["event"] in events:
                return event
            if event["event"] in ("exit", "error"):
                raise AssertionError(f"peer ended before {events}: {event}")
        raise AssertionError(f"no {events} within {timeout} s")

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()[-3000:]

    def finish(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"peer still ran {timeout} s on; killed") from None


class Link:
    """Namespaces ``a`` (198.18.0.1) and ``b`` (198.18.0.2) and the veth pair between them."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"sdfa{tag}", f"sdfb{tag}"
        self.dev_a, self.dev_b = f"sdf{tag}a", f"sdf{tag}b"
        self.peers: list[Peer] = []

    def create(self) -> None:
        for namespace in (self.a, self.b):
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", self.dev_a, "netns", self.a, "type", "veth", "peer", "name", self.dev_b, "netns", self.b)
        for namespace, device, host in ((self.a, self.dev_a, 1), (self.b, self.dev_b, 2)):
            _ip("-n", namespace, "addr", "add", f"{NET}.{host}/24", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")

    def destroy(self) -> None:
        self.end_peers()
        for namespace in (self.a, self.b):
            _ip("netns", "del", namespace, check=False)  # the veth pair goes with them

    def end_peers(self) -> str:
        """Kill the peers still running; what all of them wrote to stderr."""
        for peer in self.peers:
            if peer.process.poll() is None:
                peer.process.kill()
                peer.process.wait()
        text = "".join(peer.stderr() for peer in self.peers)
        self.peers = []
        return text

    def start(self, side: str, *args: str) -> Peer:
        peer = Peer(self.a if side == "a" else self.b, *args)
        self.peers.append(peer)
        return peer

    def transfer(self, *options: str, messages: int = MESSAGES, timeout: float = 60 * SLOW) -> dict[str, Any]:
        """Send ``messages`` 64 KiB messages from a to b; the sender's ``sent`` event."""
        port = str(next(_ports))
        server = self.start("b", "serve", f"{NET}.2", port, "--timeout", str(timeout), *options)
        server.wait_for("listening", timeout=30 * SLOW)
        sender = self.start(
            "a", "send", f"{NET}.2", port, "--messages", str(messages), "--timeout", str(timeout), *options
        )
        sent = sender.wait_for("sent", timeout=timeout)
        received = server.wait_for("received", timeout=10 * SLOW)
        assert sender.finish(10 * SLOW) == 0 and server.finish(10 * SLOW) == 0
        assert sent["intact"] and received["bytes"] == sent["bytes"] == messages * 64 * 1024
        return sent

    def link_down(self) -> None:
        _ip("-n", self.a, "link", "set", self.dev_a, "down")

    def link_up(self) -> None:
        _ip("-n", self.a, "link", "set", self.dev_a, "up")
        deadline = time.monotonic() + 10  # carrier and the address come back
        while "tentative" in _ip("-n", self.a, "addr", "show", self.dev_a).stdout and time.monotonic() < deadline:
            time.sleep(0.1)

    def drop_all(self) -> None:
        """A rule that drops every packet in and out of a's end (a firewall's DROP)."""
        for direction in ("ingress", "egress"):
            result = _tc(self.a, "filter", "add", "dev", self.dev_a, direction, "matchall", "action", "drop")
            assert result.returncode == 0, result.stderr

    def allow_all(self) -> None:
        for direction in ("ingress", "egress"):
            _tc(self.a, "filter", "del", "dev", self.dev_a, direction)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"sdfprobe{os.getpid() % 100000}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    pair = Link()
    pair.create()
    try:
        yield pair
    finally:
        pair.destroy()
    left = [name for name in _ip("netns", "list").stdout.split() if name in (pair.a, pair.b)]
    assert not left, f"network namespaces left behind: {left}"


@pytest.fixture(autouse=True)
def peers_stderr(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test ends its peers; what they wrote to stderr is printed (pytest shows it on failure)."""
    yield
    if "link" in request.fixturenames:
        link: Link = request.getfixturevalue("link")
        text = link.end_peers()
        if text.strip():
            print(f"\npeers' stderr:\n{text}")


def _qdisc(link: Link, *spec: str) -> Iterator[None]:
    """``spec`` as the root qdisc of both ends (both directions); skips where the kernel lacks it."""
    for namespace, device in ((link.a, link.dev_a), (link.b, link.dev_b)):
        result = _tc(namespace, "qdisc", "add", "dev", device, "root", *spec)
        if result.returncode != 0:
            _tc(link.a, "qdisc", "del", "dev", link.dev_a, "root")
            pytest.skip(f"this kernel cannot run `tc qdisc add ... {' '.join(spec)}`: {result.stderr.strip()}")
    try:
        yield
    finally:
        for namespace, device in ((link.a, link.dev_a), (link.b, link.dev_b)):
            _tc(namespace, "qdisc", "del", "dev", device, "root")


def _figure(name: str, **values: Any) -> None:
    """A measured figure, printed for ``pytest -s`` and the docs."""
    print(f"\nfigure {name}: {json.dumps(values)}", flush=True)


@pytest.mark.parametrize("bytestream", [False, True], ids=["framed", "bytestream"])
def test_transfer_between_namespaces(link: Link, bytestream: bool) -> None:
    sent = link.transfer(*(["--bytestream"] if bytestream else []), messages=2 * MESSAGES)
    _figure(
        f"clean link {'bytestream' if bytestream else 'framed'}", mbytes_per_s=sent["bytes"] / sent["seconds"] / 1e6
    )


def test_rate_limited_link(link: Link) -> None:
    """A token bucket: the transfer takes as long as the rate says, and arrives intact."""
    shaped = _qdisc(link, "tbf", "rate", f"{RATE:.0f}bit", "burst", "32kb", "latency", "100ms")
    next(shaped)
    try:
        sent = link.transfer()
    finally:
        next(shaped, None)
    assert sent["seconds"] >= sent["bytes"] * 8 / RATE * 0.9
    _figure(f"tbf {RATE / 1e6:.0f} Mbit/s", seconds=sent["seconds"], mbytes_per_s=sent["bytes"] / sent["seconds"] / 1e6)


NETEM = {
    "delay": ("delay", "20ms", "5ms"),
    "loss": ("loss", "3%"),
    "duplication": ("duplicate", "5%"),
    "reordering": ("delay", "10ms", "reorder", "25%", "50%"),
}


@pytest.mark.parametrize("fault", list(NETEM))
def test_netem_keeps_data_intact_and_in_order(link: Link, fault: str) -> None:
    shaped = _qdisc(link, "netem", *NETEM[fault])
    next(shaped)
    try:
        sent = link.transfer()
    finally:
        next(shaped, None)
    _figure(f"netem {' '.join(NETEM[fault])}", seconds=sent["seconds"])


@pytest.mark.parametrize("cut", ["link down", "drop rule"])
def test_cut_is_noticed_by_the_keepalive(link: Link, cut: str) -> None:
    """Mid-transfer, every packet stops: both ends get ETIMEDOUT from the keepalive in interval + timeout."""
    if cut == "drop rule" and _tc(link.a, "qdisc", "add", "dev", link.dev_a, "clsact").returncode != 0:
        pytest.skip("this kernel has no clsact qdisc for a drop rule")
    port = str(next(_ports))
    timeout = str(60 * SLOW)
    server = link.start("b", "serve", f"{NET}.2", port, "--timeout", timeout, *KEEPALIVE)
    server.wait_for("listening", timeout=30 * SLOW)
    sender = link.start("a", "send", f"{NET}.2", port, "--messages", "1000000", "--timeout", timeout, *KEEPALIVE)
    for _ in range(3):  # a few MiB have crossed: the transfer is under way
        server.wait_for("progress", timeout=30 * SLOW)
    if cut == "link down":
        link.link_down()
    else:
        try:
            link.drop_all()
        except AssertionError as exc:
            _tc(link.a, "qdisc", "del", "dev", link.dev_a, "clsact")
            pytest.skip(f"this kernel cannot drop with tc: {exc}")
    cut_at = time.monotonic()
    try:
        errors = {
            side: peer.wait_for("error", timeout=INTERVAL + TIMEOUT + 10 * SLOW)
            for side, peer in (("sender", sender), ("receiver", server))
        }
        assert sender.finish(10 * SLOW) == 1 and server.finish(10 * SLOW) == 1
    finally:
        if cut == "link down":
            link.link_up()
        else:
            link.allow_all()
            _tc(link.a, "qdisc", "del", "dev", link.dev_a, "clsact")
    for side, error in errors.items():
        assert error["errno"] == errno.ETIMEDOUT and "keepalive" in error["message"], (side, error)
        # The idle timer was last re-armed at most one interval before the cut; a keepalive sent
        # up to a timeout before it whose answer had not come yet is lost with it.
        assert 0 < error["t"] - cut_at <= INTERVAL + TIMEOUT + SLACK, (side, error["t"] - cut_at)
    _figure(f"cut by {cut}", **{side: round(error["t"] - cut_at, 3) for side, error in errors.items()})
    # Restored: a new connection carries data again.
    link.transfer(messages=16)


def test_without_keepalives_the_callers_timeout_ends_the_wait(link: Link) -> None:
    """Keepalives off: a cut link leaves each end waiting until its own ``settimeout`` (here 3 s)."""
    port, timeout = str(next(_ports)), 3.0 * SLOW
    off = ("--keepalive-interval-ms", "0", "--timeout", str(timeout))
    # The accept waits for the sender's interpreter to start, which a loaded machine can hold up past 3 s.
    server = link.start("b", "serve", f"{NET}.2", port, *off, "--accept-timeout", str(30 * SLOW))
    server.wait_for("listening", timeout=30 * SLOW)
    sender = link.start("a", "send", f"{NET}.2", port, "--messages", "1000000", *off)
    for _ in range(3):
        server.wait_for("progress", timeout=30 * SLOW)
    link.link_down()
    cut_at = time.monotonic()
    try:
        error = server.wait_for("error", timeout=timeout + 10 * SLOW)
        assert server.finish(10 * SLOW) == 1
        sender.process.kill()  # a sender waiting for credits may wait longer: its timeout counts per call
        sender.finish(10 * SLOW)
    finally:
        link.link_up()
    assert error["errno"] == errno.ETIMEDOUT and "keepalive" not in error["message"], error
    # The receive that timed out began before the cut, at most the timeout before it.
    assert 0 < error["t"] - cut_at <= timeout + SLACK, error["t"] - cut_at
    _figure("cut without keepalives, 3 s socket timeout", receiver=round(error["t"] - cut_at, 3))
    link.transfer(messages=16)
