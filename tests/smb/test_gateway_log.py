"""What the gateway says about its sessions: one INFO line each (``smbdirect gateway -v``)
with the peer, the negotiated sizes, the bytes each way, the RDMA bytes, the duration and
how it ended; and its statistics for ``smbdirect stat``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from smbdirect_socket import create_connection, stats
from smbdirect_socket.smb.gateway import Gateway, GatewayLimits, gateway_thread

from .test_gateway import DirectTcpServer, exchange
from .test_gateway_limits import SinkServer, rdma_write, receive, send, settles, stall_after_mpa, statuses

MiB = 1024 * 1024
LOGGER = "smbdirect_socket.smb.gateway"
COMMAND = [sys.executable, "-m", "smbdirect_socket.cli"]


@pytest.fixture
def target() -> Iterator[DirectTcpServer]:
    server = DirectTcpServer()
    yield server
    server.close()


def ended(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "session ended" in r.getMessage()]


def test_a_session_is_logged_with_its_fields(target: DirectTcpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    gateway = Gateway(target.address)
    with gateway_thread(gateway) as address:
        with create_connection(address, timeout=10) as client:
            port = client.getsockname()[1]
            assert exchange(client, b"hello") == b"olleh"
            assert exchange(client, b"x" * 1000) == b"x" * 1000
        assert settles(lambda: bool(ended(caplog)))
    (record,) = ended(caplog)
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith(f"client 127.0.0.1:{port}: session ended: closed by the client; after ")
    assert re.search(r"; after \d+\.\d{3} s;", message)
    # the sizes the gateway's socket negotiated with the client (SocketInfo's fields)
    assert re.search(r"; messages up to \d+ bytes out, \d+ in \(fragments 1364/1364\), read/write 8388608; ", message)
    assert "1005 bytes from the client in 2 messages, 1005 to it in 2" in message
    assert message.endswith("RDMA read 0 bytes, written 0")
    started = [r.getMessage() for r in caplog.records if r.name == LOGGER and "connected" in r.getMessage()]
    assert started == [
        f"client 127.0.0.1:{port}: connected, relaying to {target.address[0]}:{target.address[1]}; "
        + message.split("; ")[2]
    ]


def test_a_session_the_server_ends_says_so(target: DirectTcpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    with gateway_thread(Gateway(target.address)) as address, create_connection(address, timeout=10) as client:
        assert exchange(client, b"one") == b"eno"
        target.drop()
        assert client.recv(4) == b""
        assert settles(lambda: bool(ended(caplog)))
    assert ": session ended: closed by the server; " in ended(caplog)[0].getMessage()


def test_rdma_bytes_of_the_session_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    sink = SinkServer()
    try:
        with gateway_thread(Gateway(sink.address)) as address:
            with create_connection(address, timeout=30) as client:
                registration = client.register_buffer(bytearray(2 * MiB))
                assert statuses(client, rdma_write(1, registration.descriptors, 2 * MiB)) == [(1, 0)]
            assert settles(lambda: bool(ended(caplog)))
    finally:
        sink.close()
    assert ended(caplog)[0].getMessage().endswith(f"RDMA read {2 * MiB} bytes, written 0")


def test_the_setup_timeout_is_logged_as_a_limit(target: DirectTcpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    gateway = Gateway(target.address, limits=GatewayLimits(setup_timeout=0.3))
    with gateway_thread(gateway) as address:
        trio.run(stall_after_mpa, address, 10.0)
        assert settles(lambda: bool(ended(caplog)))
    # (stall_after_mpa's real client meanwhile has a session of its own)
    (message,) = [r.getMessage() for r in ended(caplog) if "limit" in r.getMessage()]
    assert ": session ended: limit: SMB-Direct set-up not done within setup_timeout (0.3 s); after " in message


def test_a_malformed_request_is_a_warning_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    sink = SinkServer()
    try:
        with gateway_thread(Gateway(sink.address)) as address, create_connection(address, timeout=10) as client:
            send(client, b"\xfeSMB" + bytes(10))  # an SMB2 header cut short: no framing to answer by
            assert receive(client) == b""
            assert settles(lambda: bool(ended(caplog)))
    finally:
        sink.close()
    (record,) = ended(caplog)
    assert record.levelno == logging.WARNING and ": session ended: error: " in record.getMessage()


def test_stat_shows_a_live_gateway_session(target: DirectTcpServer, tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    gateway = Gateway(target.address)
    with stats.serve(path), gateway_thread(gateway) as address:
        with create_connection(address, timeout=10) as client:
            peer = f"127.0.0.1:{client.getsockname()[1]}"
            assert exchange(client, b"hello") == b"olleh"
            document = stats.query(path)
            command = [sys.executable, "-m", "smbdirect_socket.cli", "stat", str(path)]
            table = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert settles(lambda: not stats.query(path)["connections"])
    (summary,) = [s for s in document["summaries"] if s["gateway"].startswith(f"SMB-Direct 127.0.0.1:{address[1]}")]
    assert (summary["active"], summary["served"], summary["refused"]) == (1, 1, 0)
    (connection,) = [c for c in document["connections"] if c["local"] == f"127.0.0.1:{address[1]}"]
    assert (connection["kind"], connection["peer"], connection["state"]) == ("gateway", peer, "ESTAB")
    assert connection["info"]["bytes_received"] == 5 and connection["info"]["messages_sent"] == 1
    assert connection["server"] == f"{target.address[0]}:{target.address[1]}"
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    row = next(number for number, line in enumerate(lines) if peer in line)
    assert lines[row].split()[:2] == ["ESTAB", "gateway"]
    assert "bytes_sent:5 bytes_received:5" in lines[row + 1] and "rdma_reads:0" in lines[row + 1]


def gateway_process(target: tuple[str, int], *flags: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "smbdirect_socket.cli", "gateway", "--listen", "127.0.0.1:0", "-v"]
    command += ["--to", f"{target[0]}:{target[1]}", *flags]
    unbuffered = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=unbuffered)


def test_gateway_v_logs_sessions_and_plain_tcp_clients(target: DirectTcpServer, tmp_path: Path) -> None:
    """A client that forgot `run` (plain TCP) and a session, as `smbdirect gateway -v` shows them."""
    path = tmp_path / "gateway.sock"
    with gateway_process(target.address, "--stat-socket", str(path)) as gateway:
        try:
            assert gateway.stdout is not None and gateway.stderr is not None
            started = gateway.stdout.readline()  # smbdirect gateway: SMB-Direct HOST:PORT -> TCP ...
            host, port = started.split()[3].rsplit(":", 1)
            where = gateway.stdout.readline()
            assert where == f"smbdirect gateway: statistics on {path} (smbdirect stat)\n"
            with socket.create_connection((host, int(port)), timeout=10) as plain:
                plain.sendall(b"\x00\x00\x00\x45\xfeSMB" + bytes(65))  # an SMB2 script without `run`
                with contextlib.suppress(ConnectionResetError):  # or a reset: it dropped what we sent
                    assert plain.recv(100) == b""
            with create_connection((host, int(port)), timeout=10) as client:
                assert exchange(client, b"hello") == b"olleh"
            errors = ""
            while "session ended" not in errors:  # logged once the gateway has seen the close
                line = gateway.stderr.readline()
                assert line, errors
                errors += line
            gateway.send_signal(2)
            errors += gateway.communicate(timeout=60)[1]
        finally:
            if gateway.poll() is None:
                gateway.kill()
    assert gateway.returncode == 130
    assert "client 127.0.0.1: not MPA (a plain TCP client? use `smbdirect run` or patch())" in errors
    assert re.search(r"client 127\.0\.0\.1:\d+: session ended: closed by the client; after ", errors), errors
    assert "5 bytes from the client in 1 messages, 5 to it in 1; RDMA read 0 bytes, written 0" in errors
    assert not path.exists()  # removed at the end


def test_gateway_stat_socket_in_the_runtime_directory(target: DirectTcpServer, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "smbdirect_socket.cli", "gateway", "--listen", "127.0.0.1:0"]
    command += ["--to", f"{target.address[0]}:{target.address[1]}"]
    stat = [sys.executable, "-m", "smbdirect_socket.cli", "stat"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as gateway:
        try:
            assert gateway.stdout is not None
            host, port = gateway.stdout.readline().split()[3].rsplit(":", 1)
            where = f"{tmp_path}/smbdirect/{gateway.pid}.sock"
            assert gateway.stdout.readline() == f"smbdirect gateway: statistics on {where} (smbdirect stat)\n"
            with create_connection((host, int(port)), timeout=10) as client:
                peer = f"127.0.0.1:{client.getsockname()[1]}"
                assert exchange(client, b"hi") == b"ih"
                shown = subprocess.run([*stat, "--json"], capture_output=True, text=True, timeout=60, env=env)
                by_pid = subprocess.run([*stat, f"{gateway.pid}"], capture_output=True, text=True, timeout=60, env=env)
        finally:
            gateway.send_signal(2)
            gateway.wait(60)
    assert shown.returncode == 0, shown.stderr
    (document,) = json.loads(shown.stdout)
    assert document["pid"] == gateway.pid and document["name"] == "smbdirect gateway"
    (connection,) = document["connections"]
    assert connection["peer"] == peer
    assert by_pid.returncode == 0 and peer in by_pid.stdout
    gone = subprocess.run(stat, capture_output=True, text=True, timeout=60, env=env)
    assert gone.returncode == 1
    assert gone.stderr == (
        f"smbdirect stat: no process serves statistics in {tmp_path}/smbdirect "
        "(start `smbdirect gateway`, or call smbdirect_socket.stats.serve())\n"
    )


def test_two_gateways_on_one_stat_socket_is_one_line(target: DirectTcpServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.sock"
    to = f"{target.address[0]}:{target.address[1]}"
    command = [*COMMAND, "gateway", "--listen", "127.0.0.1:0", "--to", to, "--stat-socket", str(path)]
    with stats.serve(path):  # someone answers there already
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert (
        second.stderr
        == f"smbdirect gateway: cannot answer statistics: {path}: another process answers statistics there\n"
    )
