"""The ``smbdirect`` command, run for real in subprocesses: help, version, bad
input, listen/connect round trips, errors of one line and nc's exit statuses."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbdirect_socket import __version__, _wire
from smbdirect_socket.smb.samba import samba_available

COMMAND = [sys.executable, "-m", "smbdirect_socket.cli"]
SUBCOMMANDS = ["listen", "connect", "samba", "gateway", "run", "stat"]
TIMEOUT = 60


def smbdirect(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)  # type: ignore[call-overload,no-any-return]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def read_until(stream: int, expected: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read from a pipe until ``expected`` has arrived (or it ends, or time runs out)."""
    data = b""
    deadline = time.monotonic() + timeout
    while expected not in data:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(stream, 65536)
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def listening(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``smbdirect listen ARGS`` on a free port; yields the process and its HOST:PORT."""
    process = subprocess.Popen(
        [*COMMAND, "listen", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()  # smbdirect listen: echoing on HOST:PORT (...)
        match = re.search(r" on (\S+) \(", line)
        assert match, line
        yield process, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def round_trip(address: str, data: bytes, *flags: str) -> bytes:
    """Send ``data`` with ``smbdirect connect`` and read what comes back; then close stdin."""
    with subprocess.Popen(
        [*COMMAND, "connect", address, "-q", "0", *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as client:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(data)
        client.stdin.flush()
        received = read_until(client.stdout.fileno(), data)
        client.stdin.close()
        assert client.wait(TIMEOUT) == 0
    return received


def test_help_lists_every_subcommand() -> None:
    for flag in ("--help", "-h"):
        result = smbdirect(flag)
        assert result.returncode == 0
        for name in SUBCOMMANDS:
            assert re.search(rf"^\s+{name}\s", result.stdout, re.MULTILINE), name


def test_no_command_shows_every_subcommand_as_a_usage_error() -> None:
    result = smbdirect()
    assert result.returncode == 2
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", result.stderr, re.MULTILINE), name


def test_version() -> None:
    result = smbdirect("--version")
    assert (result.returncode, result.stdout) == (0, f"smbdirect-socket {__version__}\n")


@pytest.mark.parametrize(
    "args, problem",
    [
        (["connect", "127.0.0.1:99999"], "port 99999 is out of range (1-65535)"),
        (["connect", "[::1]:0"], "port 0 is out of range (1-65535)"),
        (["listen", "70000"], "port 70000 is out of range (0-65535)"),
        (["listen", "[::1]:http"], "port 'http' is not a number"),
        (["gateway", "--listen", "127.0.0.1:65536", "--to", "127.0.0.1"], "port 65536 is out of range (0-65535)"),
        (["connect", "[::1"], "expected [IPV6]:PORT, got '[::1'"),
        (["run", "--ports", "445,99999", "script.py"], "port 99999 is out of range (1-65535)"),
    ],
)
def test_bad_addresses_are_one_line_usage_errors(args: list[str], problem: str) -> None:
    result = smbdirect(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and problem in result.stderr, result.stderr


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = smbdirect("listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr == f"smbdirect listen: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_address_not_on_this_host_is_one_line() -> None:
    result = smbdirect("listen", "--echo", "192.0.2.1:5445")  # TEST-NET-1, on no host
    assert result.returncode == 1
    assert result.stderr == "smbdirect listen: cannot listen on 192.0.2.1:5445: Cannot assign requested address\n"


def test_gateway_on_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = smbdirect("gateway", "--listen", f"127.0.0.1:{port}", "--to", "127.0.0.1")
    assert result.returncode == 1
    assert result.stderr == f"smbdirect gateway: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
def test_gateway_listens_on_ipv6_and_stops_quietly_on_ctrl_c() -> None:
    with subprocess.Popen(
        [*COMMAND, "gateway", "--listen", "[::1]:0", "--to", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as gateway:
        assert gateway.stdout is not None
        started = gateway.stdout.readline()
        assert re.fullmatch(r"smbdirect gateway: SMB-Direct \[::1\]:\d+ -> TCP 127\.0\.0\.1:445\n", started), started
        gateway.send_signal(signal.SIGINT)
        _, errors = gateway.communicate(timeout=TIMEOUT)
        assert (gateway.returncode, errors) == (130, "")


def test_refused_connection_is_one_line() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = smbdirect("connect", f"127.0.0.1:{port}", stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr == f"smbdirect connect: cannot connect to 127.0.0.1:{port}: Connection refused\n"


def test_a_tcp_server_is_named_as_not_smbdirect() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"SMB over TCP, say\r\n" * 4)
                connection.recv(1024)

        threading.Thread(target=answer, daemon=True).start()
        host, port = server.getsockname()
        result = smbdirect("connect", f"{host}:{port}", stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr == (
        f"smbdirect connect: cannot connect to {host}:{port}: the peer at {host}:{port} answered with non-MPA "
        "bytes (b'SMB over TCP, sa'): it is a plain TCP service, not SMB-Direct/iWARP; for a TCP SMB server put "
        "`smbdirect gateway` in front of it\n"
    )


LOOPBACKS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1"))]


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("mode", [[], ["--bytestream"]], ids=["framed", "bytestream"])
def test_echo_round_trip(host: str, mode: list[str]) -> None:
    data = b"hello\n" + bytes(range(256)) * 300 + b"\nbye\n"  # more than one message of Linux's sizes
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    with listening("--echo", bind, *mode) as (server, address):
        assert round_trip(address, data, *mode) == data
        assert round_trip(address, b"again\n", *mode) == b"again\n"  # the server serves on
        server.send_signal(signal.SIGINT)
        _, errors = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 130
        assert errors == b""  # nothing after the first line: no traceback


def test_listen_and_connect_carry_stdin_and_stdout_both_ways() -> None:
    with listening("127.0.0.1:0") as (server, address):
        assert server.stdin is not None and server.stdout is not None
        with subprocess.Popen(
            [*COMMAND, "connect", address, "-q", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as client:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(b"ping\n")
            client.stdin.flush()
            assert read_until(server.stdout.fileno(), b"ping\n") == b"ping\n"
            server.stdin.write(b"pong\n")
            server.stdin.flush()
            assert read_until(client.stdout.fileno(), b"pong\n") == b"pong\n"
            client.stdin.close()
            assert client.wait(TIMEOUT) == 0
        assert server.wait(TIMEOUT) == 0  # without -k it ends with its client


def test_listen_k_serves_one_client_after_another() -> None:
    with listening("-k", "127.0.0.1:0") as (server, address):
        assert server.stdout is not None
        for word in (b"first\n", b"second\n"):
            with subprocess.Popen([*COMMAND, "connect", address, "-q", "0"], stdin=subprocess.PIPE) as client:
                assert client.stdin is not None
                client.stdin.write(word)
                client.stdin.close()
                assert client.wait(TIMEOUT) == 0
            assert read_until(server.stdout.fileno(), word) == word
        assert server.poll() is None  # still listening


def test_ctrl_c_while_connected_exits_130_quietly() -> None:
    with listening("--echo", "127.0.0.1:0") as (_, address):
        client = subprocess.Popen(
            [*COMMAND, "connect", address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"up?\n")
        client.stdin.flush()
        assert read_until(client.stdout.fileno(), b"up?\n") == b"up?\n"  # connected
        client.send_signal(signal.SIGINT)
        _, errors = client.communicate(timeout=TIMEOUT)
        assert (client.returncode, errors) == (130, b"")


needs_samba = pytest.mark.skipif(samba_available() is not None, reason=str(samba_available()))


@contextlib.contextmanager
def samba_with_gateway(*flags: str) -> Iterator[tuple[subprocess.Popen[str], str, Path, int]]:
    """``smbdirect samba --gateway`` on a free port: the process, what it printed, the share's
    directory and the gateway's port."""
    with subprocess.Popen(
        [*COMMAND, "samba", *flags, "--gateway", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as samba:
        try:
            assert samba.stdout is not None
            text = ""
            while not (line := samba.stdout.readline()).startswith("Ctrl-C"):
                assert line, samba.stderr.read() if samba.stderr else ""
                text += line
            share = re.search(r"\(directory (\S+)\)", text)
            gateway = re.search(r"SMB-Direct    127\.0\.0\.1:(\d+)", text)
            assert share and gateway, text
            yield samba, text, Path(share.group(1)), int(gateway.group(1))
        finally:
            if samba.poll() is None:
                samba.send_signal(signal.SIGINT)


@needs_samba
@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["ctrl-c", "sigterm"])
def test_samba_says_what_it_is_and_stops_cleanly(stop: signal.Signals, status: int) -> None:
    with samba_with_gateway() as (samba, text, share, _):
        assert "THROWAWAY" in text and "password      smbdirect-Pa55" in text
        tcp = re.search(r"SMB over TCP  127\.0\.0\.1:(\d+)", text)
        assert tcp and share.is_dir(), text
        socket.create_connection(("127.0.0.1", int(tcp.group(1))), timeout=10).close()  # smbd answers
        samba.send_signal(stop)
        _, errors = samba.communicate(timeout=TIMEOUT)
        assert samba.returncode == status
        assert errors == "smbdirect samba: stopped; the share is deleted\n"
        assert not share.exists()


def test_run_finds_the_scripts_own_modules_first(tmp_path: Path) -> None:
    """As with `python script.py`, not the launcher's directory (a venv's bin/ has impacket's smbclient.py)."""
    (tmp_path / "smbclient.py").write_text("NAME = 'beside the script'\n")
    (tmp_path / "script.py").write_text("import smbclient\nprint(smbclient.NAME)\n")
    result = smbdirect("run", str(tmp_path / "script.py"))
    assert (result.returncode, result.stdout) == (0, "beside the script\n"), result.stderr


def test_run_without_the_script_is_one_line(tmp_path: Path) -> None:
    result = smbdirect("run", str(tmp_path / "missing.py"))
    assert result.returncode == 2
    assert result.stderr == f"smbdirect run: can't open file {str(tmp_path / 'missing.py')!r}: no such file\n"


def test_connect_verbose_says_whether_the_compiled_core_runs() -> None:
    with listening("--echo", "127.0.0.1:0") as (_, address):
        result = smbdirect("connect", "-v", "-q", "0", address, stdin=subprocess.DEVNULL)
    core = "compiled wire core" if _wire.COMPILED else "pure-Python wire path"
    assert result.returncode == 0
    assert result.stderr.splitlines()[0] == (
        f"smbdirect connect: connected to {address} (framed: a 4-byte length before each message; {core})"
    )
