"""What ``run`` and ``patch()`` say about each connection, ``--map`` end to end, and
statistics of a process that opts in (``stats.serve``, ``run --stat``)."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbdirect_socket import create_connection, patch, stats
from tests.test_cli import COMMAND, TIMEOUT, listening
from tests.test_patching import ORIGINAL

LOGGER = "smbdirect_socket.patching"


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    """``smbdirect listen --echo`` on a free port: that port."""
    with listening("--echo", "127.0.0.1:0") as (_, address):
        yield int(address.rsplit(":", 1)[1])


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    with ORIGINAL() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def round_trip(sock: socket.socket) -> bytes:
    sock.sendall(struct.pack(">I", 5) + b"hello")
    (length,) = struct.unpack(">I", sock.recv(4))
    return sock.recv(length)


def routes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


def test_a_mapped_port_rides_smbdirect_to_its_target(
    echo: int, tcp_listener: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smbdirect_socket")
    with patch(ports=[5445], port_map={445: echo}) as patched:
        assert patched.route.takes(("127.0.0.1", 445))
        with socket.create_connection(("127.0.0.1", 445), timeout=10) as first:
            assert round_trip(first) == b"hello"
            assert first.getpeername() == ("127.0.0.1", echo)
        with socket.socket() as second:
            second.settimeout(10)
            second.connect(("127.0.0.1", 445))
            assert round_trip(second) == b"hello"
        with socket.create_connection(("127.0.0.1", tcp_listener), timeout=10) as plain:
            assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
    assert routes(caplog) == [
        f"127.0.0.1:445: SMB-Direct (port 445 is routed; mapped to {echo})",
        f"127.0.0.1:445: SMB-Direct (port 445 is routed; mapped to {echo})",
        f"127.0.0.1:{tcp_listener}: TCP (port {tcp_listener} is not among the routed ports 445,5445)",
    ]


def test_port_map_is_validated() -> None:
    with pytest.raises(ValueError, match="port_map 445=0: ports are 1-65535"):
        patch(port_map={445: 0})


SCRIPT = """\
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", 445), timeout=10)    # as an unmodified SMB script does
s.sendall(struct.pack(">I", 5) + b"hello")
print(s.recv(struct.unpack(">I", s.recv(4))[0]).decode(), flush=True)
t = socket.socket()
try:
    t.connect(("127.0.0.1", int(sys.argv[1])))
finally:
    t.close()
if len(sys.argv) > 2:  # hold the connection until told
    sys.stdin.readline()
"""


def test_run_v_logs_each_route_and_map_takes_445_to_the_port(echo: int, tcp_listener: int, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    command = [*COMMAND, "run", "-v", "--ports", "5445", "--map", f"445={echo}", str(script), str(tcp_listener)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    assert result.stderr.splitlines() == [
        f"smbdirect run: SMB-Direct for ports 445,5445 (mapped: 445 to {echo}); Linux's message sizes, framed",
        f"smbdirect run: 127.0.0.1:445: SMB-Direct (port 445 is routed; mapped to {echo})",
        f"smbdirect run: 127.0.0.1:{tcp_listener}: TCP (port {tcp_listener} is not among the routed ports 445,5445)",
    ]


def test_without_map_445_stays_tcp_and_v_says_why(echo: int, tmp_path: Path) -> None:
    """The mistake the map fixes: the script's 445 is not the listener's port."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    command = [*COMMAND, "run", "-v", "--ports", str(echo), str(script), "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert f"smbdirect run: 127.0.0.1:445: TCP (port 445 is not among the routed ports {echo})" in result.stderr


@pytest.mark.parametrize(
    "value, problem",
    [
        ("445", "expected PORT=PORT such as 445=5445, got '445'"),
        ("445=0", "port 0 is out of range (1-65535)"),
        ("smb=5445", "port 'smb' is not a number"),
        ("445=99999", "port 99999 is out of range (1-65535)"),
    ],
)
def test_map_errors_are_one_line(value: str, problem: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("")
    result = subprocess.run(
        [*COMMAND, "run", "--map", value, str(script)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert result.stderr == f"smbdirect run: argument --map: {problem} (see smbdirect run --help)\n"


def test_a_port_mapped_twice_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("")
    command = [*COMMAND, "run", "--map", "445=5445", "--map", "445=5446", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr == (
        "smbdirect run: argument --map: port 445 is mapped to both 5445 and 5446 (see smbdirect run --help)\n"
    )


def test_stats_serve_shows_a_tracked_socket(echo: int, tmp_path: Path) -> None:
    path = tmp_path / "stats.sock"
    with stats.serve(path) as server, create_connection(("127.0.0.1", echo), timeout=10) as sock:
        assert server.path == path
        stats.track(sock)
        assert round_trip(sock) == b"hello"
        document = stats.query(path)
        host, port = sock.getsockname()[:2]
        local = f"{host}:{port}"
        sock.close()
        # Closed: no longer shown.  (Only ours is looked at: a socket an earlier
        # test left to the garbage collector may still be tracked.)
        assert [c for c in stats.query(path)["connections"] if c["local"] == local] == []
    assert not path.exists()
    assert document["pid"] == os.getpid()
    (connection,) = [c for c in document["connections"] if c["local"] == local]
    assert connection["peer"] == f"127.0.0.1:{echo}" and connection["state"] == "ESTAB"
    assert connection["kind"] == "socket"
    assert connection["info"]["messages_sent"] == 1 and connection["info"]["bytes_received"] == 5


def test_a_second_server_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stats.sock"
    with stats.serve(path), pytest.raises(OSError, match="another process answers statistics there"):
        stats.serve(path)


def test_run_stat_shows_the_programs_connection(echo: int, tcp_listener: int, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [*COMMAND, "run", "--stat", "--map", f"445={echo}", str(script), str(tcp_listener), "hold"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as program:
        assert program.stdin is not None and program.stdout is not None
        assert program.stdout.readline() == "hello\n"
        shown = subprocess.run([*COMMAND, "stat"], capture_output=True, text=True, timeout=TIMEOUT, env=env)
        program.stdin.write("\n")
        program.stdin.close()
        assert program.wait(TIMEOUT) == 0
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"smbdirect run {script} (pid {program.pid})"
    assert lines[1].split() == ["State", "Kind", "Local", "Peer", "Age"]
    state, kind, _, peer, _ = lines[2].split()
    assert (state, kind, peer) == ("ESTAB", "run", f"127.0.0.1:{echo}")
    assert "bytes_sent:5 bytes_received:5" in lines[3]
    assert not list((tmp_path / "smbdirect").iterdir())  # the socket is gone with the program


def test_run_stat_ignores_sockets_nobody_answers_on(tmp_path: Path) -> None:
    (tmp_path / "smbdirect").mkdir()
    with ORIGINAL(socket.AF_UNIX) as dead:
        dead.bind(str(tmp_path / "smbdirect" / "999999.sock"))  # bound, never listening: refused
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run([*COMMAND, "stat"], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"smbdirect stat: no process serves statistics in {tmp_path}/smbdirect ")
    assert not (tmp_path / "smbdirect" / "999999.sock").exists()
    asked = subprocess.run([*COMMAND, "stat", "999999"], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert (asked.returncode, asked.stderr) == (
        1,
        f"smbdirect stat: {tmp_path}/smbdirect/999999.sock: No such file or directory (is the process running?)\n",
    )
