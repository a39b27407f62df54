"""The blocking socket's sends and receives run in the calling thread.

A connected socket's data path never goes through the engine thread: the
caller drives the connection and sleeps on its descriptor, as a thread
sleeps in a kernel socket.  Two threads may use one socket at once (one
sending, one receiving), and the engine still answers the peer while no
caller is inside.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from smbdirect_socket import Parameters, engine_thread
from smbdirect_socket.blocking import SMBDirectSocket, create_connection, create_server
from smbdirect_socket.connection import Registration

Pair = tuple[SMBDirectSocket, SMBDirectSocket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    with create_server(("127.0.0.1", 0)) as server:
        client = create_connection(server.getsockname(), timeout=30)
        accepted, _ = server.accept()
    accepted.settimeout(30)
    yield client, accepted
    client.close()
    accepted.close()


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def receive_message(sock: SMBDirectSocket) -> bytes:
    (length,) = struct.unpack(">I", sock.recv(4))
    return sock.recv(length)


def test_sends_receives_and_rdma_never_hop_to_the_engine(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = pair

    def hop(*args: object) -> None:
        raise AssertionError("a connected socket's send or receive went through the engine thread")

    monkeypatch.setattr(engine_thread, "run", hop)
    monkeypatch.setattr(engine_thread, "run_sync", hop)
    for size in (1, 60, 5000, 100_000):
        message = os.urandom(size)
        client.sendall(framed(message))
        assert receive_message(server) == message
        server.sendmsg([framed(message)])
        buffer = bytearray(4 + size)
        assert server.getblocking()
        assert client.recv_into(buffer, 4) == 4
        assert client.recv_into(memoryview(buffer)[4:]) == size
        assert bytes(buffer[4:]) == message
    # RDMA too: registering, reading, writing and deregistering.
    buffer = bytearray(os.urandom(100_000))
    registration = client.register_buffer(buffer, writable=True)
    into = bytearray(len(buffer))
    server.rdma_read(into, registration.descriptors)
    assert into == buffer
    data = os.urandom(len(buffer))
    server.rdma_write(data, registration.descriptors)
    server.sendall(framed(b"written"))  # as SMB answers: the write is placed before it arrives
    assert receive_message(client) == b"written" and buffer == data
    client.deregister_buffer(registration)
    monkeypatch.undo()
    assert server.info().rdma_reads == 1 and server.info().rdma_writes == 1


def exchange_hashed_messages(client: SMBDirectSocket, server: SMBDirectSocket, count: int, timeout: float) -> None:
    """``count`` framed messages each way, each checked by hash, over one socket per
    end used by two threads at once (one sending, one receiving)."""
    results: dict[str, bytes] = {}
    failures: list[BaseException] = []

    def send(sock: SMBDirectSocket, name: str) -> None:
        digest = hashlib.sha256()
        try:
            for index in range(count):
                message = hashlib.sha256(f"{name}/{index}".encode()).digest() * (1 + index % 40)
                digest.update(message)
                sock.sendall(framed(message))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        results[f"sent by {name}"] = digest.digest()

    def receive(sock: SMBDirectSocket, name: str) -> None:
        digest = hashlib.sha256()
        try:
            for _ in range(count):
                digest.update(receive_message(sock))
        except BaseException as exc:
            failures.append(exc)
        results[f"received by {name}"] = digest.digest()

    threads = [
        threading.Thread(target=send, args=(client, "client")),
        threading.Thread(target=send, args=(server, "server")),
        threading.Thread(target=receive, args=(client, "client")),
        threading.Thread(target=receive, args=(server, "server")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not failures, failures
    assert results["sent by client"] == results["received by server"]
    assert results["sent by server"] == results["received by client"]


def test_one_thread_sends_while_another_receives(pair: Pair) -> None:
    """10,000 messages each way, each checked by hash, over one socket per end
    used by two threads at once (one sending, one receiving)."""
    client, server = pair
    exchange_hashed_messages(client, server, 10_000, timeout=120)


def test_the_engine_answers_while_no_caller_is_inside(pair: Pair) -> None:
    """Credits flow back while the receiving program does not call: the engine
    takes over the connection from a caller that left."""
    client, server = pair
    message = os.urandom(1000)
    received: list[bytes] = []

    def receive_late() -> None:
        time.sleep(0.3)  # nobody inside the server socket meanwhile
        received.extend(receive_message(server) for _ in range(600))

    thread = threading.Thread(target=receive_late)
    thread.start()
    for _ in range(600):  # more messages than the server's receive credits
        client.sendall(framed(message))
    thread.join(60)
    assert received == [message] * 600


# ---- hostile cases: each bounded, so a hang fails instead of blocking the run ----------------


class Outcome:
    """What a call in another thread did: its result, or what it raised."""

    def __init__(self) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def in_thread(fn: Callable[[], object]) -> Outcome:
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.result = fn()
        except BaseException as exc:  # looked at by the test
            outcome.error = exc
        finally:
            outcome.done.set()

    threading.Thread(target=run, daemon=True).start()
    return outcome


def finished(outcome: Outcome, within: float = 10) -> Outcome:
    assert outcome.done.wait(within), f"still blocked after {within} s"
    return outcome


def blocked(outcome: Outcome, settle: float = 0.2) -> None:
    """The call is asleep in the socket (give it time to get there)."""
    assert not outcome.done.wait(settle), (outcome.result, outcome.error)


def test_close_from_another_thread_ends_a_blocked_receive(pair: Pair) -> None:
    client, _server = pair
    outcome = in_thread(lambda: client.recv(4))
    blocked(outcome)
    client.close()
    finished(outcome)
    assert isinstance(outcome.error, OSError), outcome.result
    assert outcome.error.errno == errno.EBADF


def test_shutdown_from_another_thread_ends_a_blocked_receive(pair: Pair) -> None:
    client, _server = pair
    outcome = in_thread(lambda: client.recv(4))
    blocked(outcome)
    client.shutdown(socket.SHUT_RDWR)
    finished(outcome)
    assert outcome.error is None and outcome.result == b""


def test_the_peer_closing_ends_a_blocked_receive(pair: Pair) -> None:
    client, server = pair
    outcome = in_thread(lambda: client.recv(4))
    blocked(outcome)
    server.close()
    finished(outcome)
    assert outcome.error is None and outcome.result == b""


def test_a_receive_the_queue_pair_refuses_ends_that_connection_alone(pair: Pair) -> None:
    """The queue pair refuses the receive the protocol reposts once a message is
    read (its receive queue is full): the connection ends with that error, the
    data that arrived before it is read first, the peer sees the end, and another
    connection carries on."""
    client, server = pair
    with create_server(("127.0.0.1", 0)) as listener:
        other_client = create_connection(listener.getsockname(), timeout=30)
        other_server, _ = listener.accept()
    connection = server._sock.connection
    assert connection is not None
    connection.qp.core._max_recv_wr = 0  # type: ignore[attr-defined]  # (the software provider's queue pair)
    client.sendall(framed(b"arrived"))
    assert receive_message(server) == b"arrived"
    with pytest.raises(OSError, match=r"receive queue full \(0 work requests\)") as refused:
        server.recv(4)
    assert refused.value.errno == errno.ENOMEM
    assert client.recv(4) == b""
    with other_client, other_server:
        exchange_hashed_messages(other_client, other_server, 50, timeout=30)


def credits_exhausted(client: SMBDirectSocket) -> Callable[[], object]:
    """A send that waits for credits: the peer does not read, so its credits do not come back."""
    message = framed(bytes(60_000))

    def send_until_blocked() -> object:
        while True:
            client.sendall(message)

    return send_until_blocked


def test_close_from_another_thread_ends_a_send_waiting_for_credits(pair: Pair) -> None:
    client, _server = pair
    outcome = in_thread(credits_exhausted(client))
    blocked(outcome, settle=1.0)
    client.close()
    finished(outcome)
    assert isinstance(outcome.error, OSError)


PEER = (
    "import sys, time\n"
    "from smbdirect_socket.blocking import create_connection\n"
    "sock = create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "print('connected', flush=True)\n"
    "time.sleep(60)\n"
)


@contextlib.contextmanager
def peer_process(parameters: Parameters | None = None) -> Iterator[tuple[subprocess.Popen[str], SMBDirectSocket]]:
    """A peer in a process of its own, connected, and our end of its connection."""
    with create_server(("127.0.0.1", 0), parameters=parameters) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", PEER, str(server.getsockname()[1])], stdout=subprocess.PIPE, text=True
        )
        try:
            server.settimeout(30)
            accepted, _ = server.accept()
            assert child.stdout is not None and child.stdout.readline().strip() == "connected"
            with accepted:
                yield child, accepted
        finally:
            child.kill()
            child.wait(10)


def test_the_peer_resetting_ends_a_blocked_receive() -> None:
    """The peer's process dies with bytes unread in its kernel socket: its TCP
    connection resets, and a receive asleep here wakes with the error."""
    with peer_process() as (child, accepted):
        outcome = in_thread(lambda: accepted.recv(4))
        blocked(outcome)
        os.kill(child.pid, signal.SIGSTOP)  # nothing it receives from now on is read
        accepted.sendall(framed(bytes(10_000)))  # within the credits the peer granted: never waits for more
        time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        finished(outcome)
        assert isinstance(outcome.error, OSError) or outcome.result == b""


def test_a_silent_peer_fails_a_blocked_receive_by_keepalive() -> None:
    """The peer stops answering (its process stopped): the keepalive timer runs
    while a caller is asleep in the socket, and the receive fails."""
    with peer_process(Parameters(keepalive_interval_msec=200, keepalive_timeout_msec=500)) as (child, accepted):
        outcome = in_thread(lambda: accepted.recv(4))
        blocked(outcome)
        os.kill(child.pid, signal.SIGSTOP)
        finished(outcome, within=20)
        assert isinstance(outcome.error, OSError), outcome.result


def test_a_timed_out_receive_loses_nothing(pair: Pair) -> None:
    client, server = pair
    client.settimeout(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.recv(4)
    assert time.monotonic() - started < 5
    # A message that arrives in part (a byte stream here): the timed-out read keeps what it took.
    server.sendall(framed(b"x" * 100))
    assert client.recv(4) == struct.pack(">I", 100)
    with pytest.raises(TimeoutError):
        client.recv(200)  # 100 bytes wait, 200 were asked for
    server.sendall(framed(b"y" * 100))
    client.settimeout(10)
    # The 100 bytes taken before the timeout come first; then the next message's payload.
    assert client.recv(200) == b"x" * 100 + b"y" * 100


def test_a_second_receiver_times_out_while_the_first_waits(pair: Pair) -> None:
    client, server = pair
    first = in_thread(lambda: client.recv(4))
    blocked(first)
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recv(4)
    server.sendall(framed(b"late"))
    assert finished(first).result == struct.pack(">I", 4)
    client.settimeout(10)
    assert client.recv(4) == b"late"


def test_msg_dontwait_never_waits(pair: Pair) -> None:
    client, server = pair
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        client.recv(4, socket.MSG_DONTWAIT)
    assert time.monotonic() - started < 1
    server.sendall(framed(b"now"))
    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.recv(4, socket.MSG_DONTWAIT) == struct.pack(">I", 3)
            break
        except BlockingIOError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert client.recv(3, socket.MSG_DONTWAIT) == b"now"


def test_a_non_blocking_send_that_raises_sent_nothing(pair: Pair) -> None:
    """``BlockingIOError`` from ``send`` means nothing was sent (the stdlib's contract):
    a program retries it.  Here the peer reads only after the sender gave up."""
    client, server = pair
    client.setblocking(False)
    sent = []
    for index in range(200):  # more than the peer's receive credits allow while it does not read
        message = framed(bytes([index % 256]) * 60_000)
        try:
            client.send(message)
        except BlockingIOError:
            break
        sent.append(message)
    else:
        pytest.fail("the sender never ran out of credits")
    client.setblocking(True)
    client.settimeout(30)
    for message in sent:
        assert receive_message(server) == message[4:]
    # The refused message must not arrive.
    server.settimeout(1)
    with pytest.raises(TimeoutError):
        receive_message(server)


def test_a_timed_out_send_sent_nothing(pair: Pair) -> None:
    """``send`` that times out sent nothing (``sendall`` may have sent part: the stdlib says so)."""
    client, server = pair
    client.settimeout(0.3)
    sent = []
    for index in range(200):
        message = framed(bytes([index % 256]) * 60_000)
        try:
            assert client.send(message) == len(message)
        except TimeoutError:
            break
        sent.append(message)
    else:
        pytest.fail("the sender never ran out of credits")
    for message in sent:
        assert receive_message(server) == message[4:]
    server.settimeout(1)
    with pytest.raises(TimeoutError):
        receive_message(server)


def select_round_trips(client: SMBDirectSocket, server: SMBDirectSocket, rounds: int, use_select: bool) -> float:
    started = time.perf_counter()
    for index in range(rounds):
        client.sendall(framed(b"%d" % index))
        if use_select:
            readable, _, _ = select.select([server], [], [], 5)
            assert readable == [server], f"round {index}: not readable"
        assert receive_message(server) == b"%d" % index
        if use_select:  # the descriptor goes quiet again once everything is read
            assert select.select([server], [], [], 0)[0] == []
    return time.perf_counter() - started


def test_select_sees_each_message_after_direct_receives(pair: Pair) -> None:
    """Readiness through fileno() follows the data while the receives run in the
    calling thread: a select()-driven loop gets every message."""
    client, server = pair
    select_round_trips(client, server, 20, use_select=True)


def test_a_select_loop_never_hops_to_the_engine(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMB clients call select() before each receive, and select() calls fileno():
    only the first call makes the descriptor, on the engine; a closed socket's is -1."""
    client, server = pair
    descriptor = server.fileno()

    def hop(*args: object) -> None:
        raise AssertionError("fileno() or a receive went through the engine thread")

    monkeypatch.setattr(engine_thread, "run", hop)
    monkeypatch.setattr(engine_thread, "run_sync", hop)
    select_round_trips(client, server, 20, use_select=True)
    assert server.fileno() == descriptor
    monkeypatch.undo()
    server.close()
    assert server.fileno() == -1


def test_select_driven_receives_cost_about_what_direct_ones_do(pair: Pair) -> None:
    client, server = pair
    rounds = 30
    select_round_trips(client, server, 5, use_select=True)  # warm up
    direct = select_round_trips(client, server, rounds, use_select=False)
    selected = select_round_trips(client, server, rounds, use_select=True)
    assert selected < 3 * direct + 0.02, f"select loop {selected:.3f} s vs direct {direct:.3f} s"


def test_a_socket_collected_without_close_ends_the_peers_blocked_receive() -> None:
    with create_server(("127.0.0.1", 0)) as server:
        client: SMBDirectSocket | None = create_connection(server.getsockname(), timeout=30)
        accepted, _ = server.accept()
    assert client is not None
    client.sendall(framed(b"before"))
    with accepted:
        assert receive_message(accepted) == b"before"
        outcome = in_thread(lambda: accepted.recv(4))
        blocked(outcome)
        with pytest.warns(ResourceWarning):
            client = None
            gc.collect()
        finished(outcome)
        assert outcome.error is None and outcome.result == b""


def fork_and_wait(in_child: Callable[[], object], within: float = 10) -> int:
    """Fork, run ``in_child`` there, and return the child's exit code (failing if it hangs)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            in_child()
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.monotonic() + within
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the socket")
        time.sleep(0.01)


def test_a_forked_child_closing_its_copy_leaves_the_parents_connection(pair: Pair) -> None:
    client, server = pair
    client.sendall(framed(b"before"))
    assert receive_message(server) == b"before"
    assert fork_and_wait(client.close) == 0
    client.sendall(framed(b"after"))
    assert receive_message(server) == b"after"
    server.sendall(framed(b"back"))
    assert receive_message(client) == b"back"


def test_fork_while_another_thread_drives(pair: Pair) -> None:
    """A child forked while a thread is inside the socket closes its copy without
    waiting on what that thread held, and the parent's connection carries on."""
    client, server = pair
    stop = threading.Event()
    failures: list[BaseException] = []

    def ping_pong() -> None:
        try:
            while not stop.is_set():
                client.sendall(framed(b"ping"))
                assert receive_message(server) == b"ping"
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    worker = threading.Thread(target=ping_pong, daemon=True)
    worker.start()
    try:
        for _ in range(20):
            assert fork_and_wait(client.close) == 0
    finally:
        stop.set()
        worker.join(10)
    assert not failures, failures
    client.sendall(framed(b"after"))
    assert receive_message(server) == b"after"


def buffer_to_read(client: SMBDirectSocket) -> tuple[bytearray, Registration, bytearray]:
    """4 KiB of the client's, registered for the server to RDMA-read, and a buffer to read it into."""
    buffer = bytearray(os.urandom(4096))
    return buffer, client.register_buffer(buffer), bytearray(len(buffer))


def test_an_rdma_read_after_a_direct_receive_costs_what_one_alone_does(pair: Pair) -> None:
    """The SMB pattern: receive a request in the calling thread, then RDMA-read the
    buffer it names."""
    client, server = pair
    buffer, registration, into = buffer_to_read(client)
    rounds = 20

    def run(with_receive: bool) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            if with_receive:
                client.sendall(framed(b"read it"))
                assert receive_message(server) == b"read it"
            server.rdma_read(into, registration.descriptors)
        return time.perf_counter() - started

    run(True)  # warm up
    alone = run(False)
    messages = select_round_trips(client, server, rounds, use_select=False)
    together = run(True)
    assert bytes(into) == bytes(buffer)
    # Waiting out the 20 ms grace each round would add 0.4 s; the margin is for a loaded machine.
    assert together < 3 * (alone + messages) + 0.15, f"{together:.3f} s vs {alone:.3f} s + {messages:.3f} s"


def test_an_rdma_read_after_an_interim_response_is_answered_at_once(pair: Pair) -> None:
    """An SMB server answers a request with an interim response, then RDMA-reads the
    buffer the request names: the client, which reads neither yet, answers the read
    from its background without waiting out the grace a caller that just left gets."""
    client, server = pair
    buffer, registration, into = buffer_to_read(client)
    rounds = 20

    def run(with_interim: bool) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            client.sendall(framed(b"read it"))
            assert receive_message(server) == b"read it"
            if with_interim:
                server.sendall(framed(b"pending"))
            server.rdma_read(into, registration.descriptors)
            if with_interim:
                assert receive_message(client) == b"pending"
        return time.perf_counter() - started

    run(True)  # warm up
    alone = run(False)
    together = run(True)
    assert bytes(into) == bytes(buffer)
    # Waiting out the 20 ms grace each round would add 0.4 s; the margin is for a loaded machine.
    assert together < 3 * alone + 0.15, f"{together:.3f} s vs {alone:.3f} s"


OUT_OF_DESCRIPTORS = """
import resource, struct, threading, time
from smbdirect_socket import create_server, create_connection

server = create_server(("127.0.0.1", 0))
client = create_connection(server.getsockname())
accepted, _ = server.accept()
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(open("/dev/null"))
except OSError:
    pass
sender = threading.Thread(target=lambda: (time.sleep(0.2), client.sendall(struct.pack(">I", 2) + b"hi")))
sender.start()
print(accepted.recv(4), accepted.recv(2), flush=True)
sender.join()
for file in held:
    file.close()
"""


def test_a_caller_out_of_descriptors_still_receives() -> None:
    """A thread that cannot get the descriptor it is woken through still gets its data."""
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "b'\\x00\\x00\\x00\\x02' b'hi'", result.stderr
