"""``smbdirect bench`` for real: a server and a client in subprocesses over loopback,
each test mode, the JSON's fields and units, the plots, and errors of one line."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smbdirect_socket import __version__, _wire
from smbdirect_socket.tools.measure import SCHEMA
from tests.test_cli import COMMAND, has_ipv6_loopback

TIMEOUT = 90
SECONDS = 0.5
PNG = b"\x89PNG\r\n\x1a\n"


def smbdirect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=TIMEOUT)


@contextlib.contextmanager
def bench_server(*args: str, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """``smbdirect bench --server -1`` on a free port; yields its HOST:PORT."""
    process = subprocess.Popen(
        [*prefix, *COMMAND, "bench", "--server", host, "-p", "0", "-1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # smbdirect bench: server listening on HOST:PORT (...)
        match = re.search(r"listening on (\S+) \(", line)
        assert match, line + (process.stderr.read() if process.stderr else "")
        yield match.group(1)
        # -1: the server ends after the test, with status 0.
        assert process.wait(TIMEOUT) == 0, process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def run_client(address: str, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    output = tmp_path / "result.json"
    result = smbdirect("bench", address, "-t", str(SECONDS), "-i", "0.2", "--json", str(output), *args)
    assert result.returncode == 0, result.stderr
    return result, json.loads(output.read_text())


def check_rate(record: dict[str, Any], seconds: float = SECONDS) -> None:
    """A throughput record: bytes moved, the seconds it took and both rates, consistent."""
    assert record["bytes"] > 0
    assert 0.8 * seconds < record["seconds"] < seconds + 10
    assert math.isclose(record["bytes_per_second"], record["bytes"] / record["seconds"], rel_tol=1e-9)
    assert math.isclose(record["bits_per_second"], 8 * record["bytes_per_second"], rel_tol=1e-9)
    assert record["operations"] >= 1


def check_metadata(document: dict[str, Any]) -> None:
    assert document["schema"] == SCHEMA and document["tool"] == "smbdirect bench"
    for end in ("client", "server"):
        meta = document[end]
        assert meta["package_version"] == __version__
        assert meta["python_version"] == ".".join(map(str, sys.version_info[:3]))
        assert meta["trio_version"] and meta["host"]
        assert meta["compiled_wire_core"] is bool(_wire.COMPILED)
        connection = meta["connection"]
        assert connection["provider"] == "softiwarp"
        assert connection["compiled_wire_core"] is bool(_wire.COMPILED)  # from SocketInfo.compiled
        negotiated = connection["negotiated"]
        assert negotiated["max_send_size_bytes"] >= 1364
        assert negotiated["max_fragmented_send_size_bytes"] >= negotiated["max_send_size_bytes"]


def check_intervals(document: dict[str, Any], stream: str, total: int | None = None) -> None:
    """The intervals of ``stream``: contiguous, and (when ``total``) adding up to it."""
    records = [r for r in document["intervals"] if r["stream"] == stream]
    assert len(records) >= 2, document["intervals"]
    assert records[0]["start_seconds"] == 0
    for before, after in itertools.pairwise(records):
        assert math.isclose(before["end_seconds"], after["start_seconds"])
    for record in records:
        assert record["end_seconds"] > record["start_seconds"]
        assert math.isclose(record["seconds"], record["end_seconds"] - record["start_seconds"])
    if total is not None:
        assert sum(r["bytes"] for r in records) == total


THROUGHPUT = {
    "send": ([], ["client_to_server"]),
    "reverse": (["-R"], ["server_to_client"]),
    "bidir": (["--bidir"], ["client_to_server", "server_to_client"]),
    "send-bytestream": (["--bytestream"], ["client_to_server"]),
    "reverse-bytestream": (["-R", "--bytestream"], ["server_to_client"]),
}


@pytest.mark.parametrize("name", list(THROUGHPUT))
def test_throughput(tmp_path: Path, name: str) -> None:
    flags, streams = THROUGHPUT[name]
    with bench_server() as address:
        result, document = run_client(address, tmp_path, *flags)
    check_metadata(document)
    assert document["test"] == {
        "mode": name.split("-")[0],
        "length_bytes": 128 * 1024,
        "duration_seconds": SECONDS,
        "interval_seconds": 0.2,
        "bytestream": "bytestream" in name,
        "large_messages": False,
    }
    assert sorted(document["end"]["streams"]) == sorted(streams)
    for stream in streams:
        sender, receiver = document["end"]["streams"][stream]["sender"], document["end"]["streams"][stream]["receiver"]
        check_rate(sender)
        check_rate(receiver)
        assert sender["bytes"] == receiver["bytes"]  # every byte sent was received and counted once
        assert sender["bytes"] % (128 * 1024) == 0
        local = {"client_to_server": "sent", "server_to_client": "received"}[stream]
        check_intervals(document, local, sender["bytes"])
    # The lines: one per interval, then the totals.
    lines = result.stdout.splitlines()
    assert re.search(r"^\s+0\.00-\d\.\d\d\s+s\s+\S+ \S?iB\s+\S+ \S?bit/s\s+\S+ MB/s", result.stdout, re.MULTILINE)
    assert sum(line.rstrip().endswith("sender") for line in lines) == len(streams)
    assert sum(line.rstrip().endswith("receiver") for line in lines) == len(streams)


def test_large_messages(tmp_path: Path) -> None:
    with bench_server("--large-messages") as address:
        _, document = run_client(address, tmp_path, "--large-messages", "-l", "1M")
    negotiated = document["client"]["connection"]["negotiated"]
    assert negotiated["max_fragmented_send_size_bytes"] >= 1 << 20
    assert negotiated["max_send_size_bytes"] == 65536
    stream = document["end"]["streams"]["client_to_server"]
    assert stream["sender"]["bytes"] == stream["receiver"]["bytes"] > 0
    assert stream["sender"]["bytes"] % (1 << 20) == 0


@pytest.mark.parametrize("flags", [[], ["--bytestream"]], ids=["framed", "bytestream"])
def test_latency(tmp_path: Path, flags: list[str]) -> None:
    with bench_server() as address:
        result, document = run_client(address, tmp_path, "--latency", *flags)
    check_metadata(document)
    assert document["test"]["length_bytes"] == 64  # ib_send_lat's size
    stats = document["end"]["round_trip"]
    assert stats["round_trips"] > 0 and stats["message_bytes"] == 64
    order = ["min_microseconds", "median_microseconds", "p99_microseconds", "max_microseconds"]
    assert [stats[k] for k in order] == sorted(stats[k] for k in order)
    assert stats["min_microseconds"] <= stats["mean_microseconds"] <= stats["max_microseconds"]
    # The round trips, one after another, fill the run: their sum is within its seconds.
    busy = stats["mean_microseconds"] * stats["round_trips"] / 1e6
    assert 0.5 * stats["seconds"] < busy <= stats["seconds"] * 1.001
    assert 1 < stats["min_microseconds"] < 1e6  # microseconds, not seconds
    echoed = document["end"]["server_echoed"]
    assert echoed["operations"] == stats["round_trips"] and echoed["bytes"] == 64 * stats["round_trips"]
    records = [r for r in document["intervals"] if r["stream"] == "round_trip"]
    assert sum(r["round_trips"] for r in records) == stats["round_trips"]
    assert re.search(r"round trips of 64 bytes in .* s: min \S+ us, median \S+ us", result.stdout)


@pytest.mark.parametrize("operation", ["read", "write"])
def test_rdma(tmp_path: Path, operation: str) -> None:
    with bench_server() as address:
        result, document = run_client(address, tmp_path, "--rdma", operation, "-l", "256K")
    check_metadata(document)
    record = document["end"][f"rdma_{operation}"]
    check_rate(record)
    assert record["bytes"] == record["operations"] * 256 * 1024
    # The server did the transfers and sent its intervals, which the client showed.
    check_intervals(document, f"rdma_{operation}", record["bytes"])
    assert all(r["measured_by"] == "server" for r in document["intervals"])
    assert f"rdma {operation} by the server" in result.stdout


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
def test_ipv6(tmp_path: Path) -> None:
    with bench_server(host="::1") as address:
        assert address.startswith("[::1]:")
        _, document = run_client(address, tmp_path)
    assert document["client"]["connection"]["remote_address"] == address


def test_json_on_stdout_moves_the_lines_to_stderr() -> None:
    with bench_server() as address:
        result = smbdirect("bench", address, "-t", str(SECONDS), "-i", "0.2", "--json", "-")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["end"]["streams"]["client_to_server"]["sender"]["bytes"] > 0
    assert "sender" in result.stderr and "receiver" in result.stderr


def test_plot_of_this_run_and_of_several(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with bench_server() as address:
        _, first = run_client(address, tmp_path, "--plot", str(tmp_path / "run.png"))
    assert (tmp_path / "run.png").read_bytes().startswith(PNG)
    (tmp_path / "send.json").write_text(json.dumps(first))
    with bench_server() as address:
        smbdirect("bench", address, "-t", str(SECONDS), "-i", "0.2", "--latency", "--json", str(tmp_path / "lat.json"))
    result = smbdirect(
        "bench", "plot", str(tmp_path / "send.json"), str(tmp_path / "lat.json"), "-o", str(tmp_path / "both.png")
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "both.png").read_bytes().startswith(PNG)


def test_plot_of_something_else_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "other.json").write_text('{"case": 1}')
    result = smbdirect("bench", "plot", str(tmp_path / "other.json"), "-o", str(tmp_path / "x.png"))
    assert (result.returncode, result.stderr) == (
        1,
        f"smbdirect bench plot: {tmp_path / 'other.json'}: not an smbdirect bench --json result\n",
    )
    result = smbdirect("bench", "plot", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "No such file or directory" in result.stderr


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    hide = tmp_path / "hide" / "matplotlib"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    (tmp_path / "r.json").write_text("{}")
    for args in (["plot", str(tmp_path / "r.json"), "-o", "x.png"], ["127.0.0.1", "--plot", "x.png"]):
        result = subprocess.run(
            [*COMMAND, "bench", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "PYTHONPATH": str(tmp_path / "hide")},
        )
        prog = "smbdirect bench plot" if args[0] == "plot" else "smbdirect bench"
        assert (result.returncode, result.stderr) == (
            1,
            f"{prog}: plotting needs matplotlib: pip install 'smbdirect-socket[plot]'\n",
        )


def test_help() -> None:
    result = smbdirect("bench", "--help")
    assert result.returncode == 0
    for flag in ("--server", "--port", "--reverse", "--bidir", "--latency", "--rdma", "--length", "--time"):
        assert flag in result.stdout
    for flag in ("--interval", "--json", "--plot", "--bytestream", "--large-messages"):
        assert flag in result.stdout
    assert re.search(r"^\s+bench\s", smbdirect("--help").stdout, re.MULTILINE)
    result = smbdirect("bench", "plot", "--help")
    assert result.returncode == 0 and "-o FILE.png" in result.stdout


@pytest.mark.parametrize(
    "args, problem",
    [
        (["127.0.0.1", "-p", "99999"], "argument -p/--port: port 99999 is out of range (0-65535)"),
        (["127.0.0.1", "-p", "0"], "argument -p/--port: port 0 is out of range (1-65535)"),
        (["127.0.0.1:70000"], "argument HOST: port 70000 is out of range (1-65535)"),
        (["[::1"], "argument HOST: expected [IPV6]:PORT, got '[::1'"),
        (["127.0.0.1:5000", "-p", "5001"], "two ports: 5000 in HOST and 5001 in -p"),
        (["127.0.0.1", "-l", "0"], "argument -l/--length: length 0 is out of range (1 byte to 1G)"),
        (["127.0.0.1", "-l", "2G"], "argument -l/--length: length 2147483648 is out of range (1 byte to 1G)"),
        (["127.0.0.1", "-l", "12X"], "argument -l/--length: expected a length such as 64, 64K or 1M, got '12X'"),
        (["127.0.0.1", "-t", "0"], "argument -t/--time: 0 seconds: must be more than 0"),
        (["127.0.0.1", "--interval=-1"], "argument -i/--interval: -1 seconds: must be at least 0"),
        (["127.0.0.1", "-R", "--latency"], "argument --latency: not allowed with argument -R/--reverse"),
        ([], "a client needs the server's HOST (or --server to be one)"),
        (["--server", "--json", "x.json"], "--json and --plot are the client's (the server prints its side)"),
        (["127.0.0.1", "-i", "0", "--plot", "x.png"], "--plot draws the intervals: give -i above 0"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(args: list[str], problem: str) -> None:
    result = smbdirect("bench", *args)
    assert result.returncode == 2
    assert result.stderr == f"smbdirect bench: {problem} (see smbdirect bench --help)\n"


def test_refused_connection_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it
    result = smbdirect("bench", "127.0.0.1", "-p", str(port), "-t", "1")
    assert (result.returncode, result.stderr) == (
        1,
        f"smbdirect bench: cannot connect to 127.0.0.1:{port}: Connection refused\n",
    )


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = smbdirect("bench", "--server", "127.0.0.1", "-p", str(port))
    assert (result.returncode, result.stderr) == (
        1,
        f"smbdirect bench: cannot listen on 127.0.0.1:{port}: Address already in use\n",
    )


def test_message_above_the_negotiated_size_is_one_line() -> None:
    # Linux's sizes reassemble at most 173910 bytes a message.
    with bench_server_failing() as address:
        result = smbdirect("bench", address, "-l", "1M", "-t", "1")
    assert result.returncode == 1
    assert result.stderr == (
        "smbdirect bench: a 1048576-byte message exceeds the negotiated max message size 173910; "
        "use a smaller -l, --bytestream or --large-messages on both ends\n"
    )


def test_large_messages_on_one_end_only_is_one_line() -> None:
    with bench_server_failing() as address:
        result = smbdirect("bench", address, "--large-messages", "-t", "1")
    assert result.returncode == 1
    assert result.stderr == (
        "smbdirect bench: the server refused the test: the client asks for 8 MiB message sizes; "
        "start the server with --large-messages (both ends must offer the same)\n"
    )


@contextlib.contextmanager
def bench_server_failing() -> Iterator[str]:
    """A server that serves until killed: tests that fail do not end a server's test cleanly."""
    process = subprocess.Popen(
        [*COMMAND, "bench", "--server", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"listening on (\S+) \(", process.stdout.readline())
        assert match
        yield match.group(1)
    finally:
        process.kill()
        process.communicate()


def test_a_non_bench_peer_is_named(tmp_path: Path) -> None:
    """An echo server sends the client's own hello back: not a bench server."""
    listen = subprocess.Popen(
        [*COMMAND, "listen", "--echo", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert listen.stderr is not None
        match = re.search(r" on (\S+) \(", listen.stderr.readline())
        assert match
        result = smbdirect("bench", match.group(1), "-t", "1")
    finally:
        listen.kill()
        listen.communicate()
    assert result.returncode == 1
    assert result.stderr.startswith("smbdirect bench: the peer is not an smbdirect bench server")
    assert result.stderr.count("\n") == 1


def test_a_second_client_is_told_the_server_is_busy() -> None:
    with bench_server_failing() as address:
        first = subprocess.Popen(
            [*COMMAND, "bench", address, "-t", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert first.stdout is not None
            first.stdout.readline()  # smbdirect bench: send with ...: the test runs
            result = smbdirect("bench", address, "-t", "1")
        finally:
            first.kill()
            first.communicate()
    assert (result.returncode, result.stderr) == (
        1,
        "smbdirect bench: the server refused the test: the server is busy running a test; try again later\n",
    )


def test_ctrl_c_ends_the_server_with_130_quietly() -> None:
    process = subprocess.Popen(
        [*COMMAND, "bench", "--server", "127.0.0.1", "-p", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert b"listening on" in process.stdout.readline()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert (process.returncode, stderr) == (130, b"")
