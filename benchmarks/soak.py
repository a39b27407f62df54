"""A soak you can leave running: mixed load, resources printed, growth fails the run.

    python benchmarks/soak.py --duration SECONDS [--interval S] [--workers N] [--seed N]

In one process: an SMB-Direct service (blocking API, a thread per connection),
Samba behind the gateway (when Samba can run here), and worker threads that
loop over

* connect and close at once;
* framed and byte-stream transfers of 64 KiB messages, hash-checked by the
  service;
* RDMA: the worker registers a buffer to read and one to write, the service
  RDMA-reads the first and RDMA-writes it into the second, both sides compare.

Beside them, client processes run the same loop, or copy a file through the
gateway to Samba with smbprotocol (hash-checked); each is SIGKILLed at a
random moment or left to finish (then it must exit 0).

Every interval it prints the process's descriptors, threads and RSS, Samba's
process count, operations and hash-checked throughput.  The summary fails
(exit 1) on any integrity error or failed in-process operation, on 10 s
without a completed operation in the second half, or when a resource grows: the median of the
last quarter of the samples against the median of the second quarter (the
first quarter is warm-up), with tolerances of

* descriptors: 16, threads: 4 + the workers, Samba processes: 4 + the SMB
  clients (connections in flight come and go; a leak of one per killed client
  or per connection cycle, which there are hundreds of, goes far past them);
* RSS: 32 MiB or 15 %, whichever is larger (allocator and buffer caches move
  by a few MiB; a dropped connection that kept its ~750 KiB would pass 32 MiB
  within a few dozen connections).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from smbdirect_socket import BufferDescriptorV1, SMBDirectSocket, create_connection, create_server, patch
from smbdirect_socket.smb.gateway import Gateway, gateway_thread
from smbdirect_socket.smb.samba import SambaServer, samba_available, samba_processes, samba_server
from smbdirect_socket.tools.measure import BYTES_PER_SECOND

MESSAGE = 64 * 1024
RDMA_SIZE = 256 * 1024
SMB_FILE = 1024 * 1024
TIMEOUT = 30.0  # no single call may block longer
ACCEPT_POLL = 0.5  # how often a service's accept loop looks whether it should stop
STALL = 10.0  # seconds without a completed operation that count as a stall (clients starting eat the CPU)
_HEADER = struct.Struct(">I")
_REQUEST = struct.Struct(">cI")  # operation, message count
OPERATIONS = ["connect", "framed", "bytestream", "rdma"]


# ---- the wire: framed messages (a 4-byte length, then the body) on either socket mode ----


def receive_exactly(sock: SMBDirectSocket, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = sock.recv(left)
        if not part:
            raise ConnectionResetError(f"peer closed with {left} of {size} bytes due")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def receive_message(sock: SMBDirectSocket) -> bytes:
    (length,) = _HEADER.unpack(receive_exactly(sock, _HEADER.size))
    return receive_exactly(sock, length)


def send_message(sock: SMBDirectSocket, data: bytes) -> None:
    sock.sendall(_HEADER.pack(len(data)) + data)


# ---- the service ----


def serve_connection(sock: SMBDirectSocket) -> None:
    with sock:
        sock.settimeout(TIMEOUT)
        header = sock.recv(_HEADER.size)
        if not header:
            return  # connected and closed
        header += receive_exactly(sock, _HEADER.size - len(header))
        request = receive_exactly(sock, _HEADER.unpack(header)[0])
        operation, count = _REQUEST.unpack_from(request)
        if operation == b"T":  # transfer: hash ``count`` messages, answer the digest
            digest = hashlib.sha256()
            for _ in range(count):
                digest.update(receive_message(sock))
            send_message(sock, digest.digest())
        elif operation == b"R":  # RDMA: read the first buffer, write it into the second
            descriptors = BufferDescriptorV1.unpack_list(request[_REQUEST.size :])
            copy = bytearray(count)
            sock.rdma_read(copy, descriptors[:1])
            sock.rdma_write(copy, descriptors[1:])
            send_message(sock, hashlib.sha256(copy).digest())


def serve(server: SMBDirectSocket, stop: threading.Event, counter: Counter) -> None:
    server.settimeout(ACCEPT_POLL)
    while not stop.is_set():
        try:
            sock, _ = server.accept()
        except TimeoutError:
            continue

        def run(sock: SMBDirectSocket = sock) -> None:
            try:
                serve_connection(sock)
            except OSError:
                counter.add("service saw peer errors")  # killed clients end this way

        threading.Thread(target=run, name="soak-service", daemon=True).start()


@contextmanager
def services(counter: Counter) -> Iterator[tuple[int, int]]:
    """The framed and the byte-stream service (their ports), accepting until the block ends.

    They have a stop of their own, which must come after the workers have
    stopped: a worker's last operation may connect just as its stop is asked,
    and a connection nobody accepts is never read, so the worker waits for the
    peer's credits until its timeouts run out (twice: a sendall whose message
    is queued counts as sent).
    """
    stop = threading.Event()
    with ExitStack() as stack:
        servers = [stack.enter_context(create_server(("127.0.0.1", 0), bytestream=mode)) for mode in (False, True)]
        threads = [
            threading.Thread(target=serve, args=(server, stop, counter), name="soak-accept", daemon=True)
            for server in servers
        ]
        for thread in threads:
            thread.start()
        try:
            yield servers[0].getsockname()[1], servers[1].getsockname()[1]
        finally:
            stop.set()
            for thread in threads:
                thread.join(ACCEPT_POLL + 5)  # before the servers close under their accept()


# ---- the load ----


@dataclass
class Counter:
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + amount

    def take(self) -> dict[str, int]:
        with self.lock:
            values, self.values = self.values, {}
        return values


def transfer(address: tuple[str, int], rng: random.Random, bytestream: bool) -> int:
    count = rng.randint(1, 32)
    with create_connection(address, TIMEOUT, bytestream=bytestream) as sock:
        send_message(sock, _REQUEST.pack(b"T", count))
        digest = hashlib.sha256()
        for _ in range(count):
            data = rng.randbytes(MESSAGE)
            digest.update(data)
            send_message(sock, data)
        if receive_message(sock) != digest.digest():
            raise AssertionError("the service hashed other bytes than were sent")
    return count * MESSAGE


def rdma(address: tuple[str, int], rng: random.Random) -> int:
    source, sink = rng.randbytes(RDMA_SIZE), bytearray(RDMA_SIZE)
    with create_connection(address, TIMEOUT) as sock:
        readable = sock.register_buffer(source)
        writable = sock.register_buffer(sink, writable=True)
        send_message(sock, _REQUEST.pack(b"R", RDMA_SIZE) + readable.pack() + writable.pack())
        answer = receive_message(sock)
        sock.deregister_buffer(readable)
        sock.deregister_buffer(writable)
    if answer != hashlib.sha256(source).digest() or sink != source:
        raise AssertionError("RDMA read or write moved other bytes")
    return 2 * RDMA_SIZE


def churn(address: tuple[str, int]) -> int:
    create_connection(address, TIMEOUT).close()
    return 0


def one_operation(ports: tuple[int, int], rng: random.Random, choice: str) -> int:
    """``ports``: the framed service's, the byte-stream service's."""
    address = ("127.0.0.1", ports[choice == "bytestream"])
    if choice == "connect":
        return churn(address)
    if choice == "rdma":
        return rdma(address, rng)
    return transfer(address, rng, bytestream=choice == "bytestream")


def worker(ports: tuple[int, int], seed: int, stop: threading.Event, counter: Counter) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        name = rng.choice(OPERATIONS)
        try:
            moved = one_operation(ports, rng, name)
        except (OSError, AssertionError) as exc:
            counter.add("failures")
            print(f"  FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
            continue
        counter.add("operations")
        counter.add("bytes", moved)
        counter.add(name)


# ---- client processes, SIGKILLed at random moments ----


def client_process(ports: tuple[int, int], seed: int) -> None:
    rng = random.Random(seed)
    while True:
        one_operation(ports, rng, rng.choice(OPERATIONS))


def smb_client_process(samba: SambaServer, address: tuple[str, int], seed: int) -> None:
    import smbclient

    rng = random.Random(seed)
    host, port = address
    with patch(ports=[port]):
        smbclient.register_session(host, username=samba.user, password=samba.password, port=port)
        for _ in range(3):
            data = rng.randbytes(SMB_FILE)
            path = rf"\\{host}\{samba.share}\soak-{uuid.uuid4().hex[:8]}.bin"
            with smbclient.open_file(path, mode="wb", port=port) as remote:
                remote.write(data)
            with smbclient.open_file(path, mode="rb", port=port) as remote:
                if remote.read() != data:
                    sys.exit("the file read back differs")
            smbclient.remove(path, port=port)
        smbclient.reset_connection_cache()


@dataclass
class Clients:
    """Keeps ``count`` client processes running and kills them at random moments.

    Endless clients are all killed 1-5 s in (starting takes about 1 s); of finite ones (``finite``)
    half are, the others must exit 0 within 60 s.
    """

    name: str
    command: Callable[[int], list[str]]
    count: int
    rng: random.Random
    counter: Counter
    finite: bool
    running: dict[subprocess.Popen[bytes], tuple[float, bool]] = field(default_factory=dict)  # kill at, killed?

    def tend(self) -> None:
        now = time.monotonic()
        for process, (kill_at, meant) in list(self.running.items()):
            status = process.poll()
            if status is not None:
                del self.running[process]
                self.counter.add(f"{self.name} finished" if status == 0 else "client failures")
            elif now >= kill_at:
                process.send_signal(signal.SIGKILL)
                process.wait()
                del self.running[process]
                self.counter.add(f"{self.name} killed" if meant else "client failures")  # a finite one hung
        while len(self.running) < self.count:
            kill = not self.finite or self.rng.random() < 0.5
            process = subprocess.Popen(self.command(self.rng.randrange(1 << 30)), stdin=subprocess.DEVNULL)
            self.running[process] = (now + (self.rng.uniform(1.0, 5.0) if kill else 60.0), kill)

    def stop(self) -> None:
        for process in self.running:
            process.kill()
            process.wait()
        self.running.clear()


# ---- measuring ----


def resources() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(fields["Threads"]),
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
    }


def grown(name: str, samples: list[float], tolerance: float) -> str | None:
    quarter = len(samples) // 4
    early, late = statistics.median(samples[quarter : 2 * quarter]), statistics.median(samples[-quarter:])
    verdict = f"{name}: {early:.1f} -> {late:.1f} (tolerance +{tolerance:.1f})"
    print(f"  {verdict}")
    return verdict if late - early > tolerance else None


@contextmanager
def maybe_samba() -> Iterator[SambaServer | None]:
    reason = samba_available()
    if reason is not None:
        print(f"({reason}: no gateway or SMB clients in this soak)")
        yield None
        return
    with samba_server() as samba:
        yield samba


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--interval", type=float, default=0, help="seconds per line (default: duration / 40, >= 2)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=2, help="SMB-Direct client processes")
    parser.add_argument("--smb-clients", type=int, default=2, help="SMB client processes through the gateway")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    interval = args.interval or max(2.0, args.duration / 40)
    print(f"soak: {args.duration:.0f} s, seed {args.seed}, {args.workers} workers, {interval:.1f} s per line")
    rng = random.Random(args.seed)
    counter, stop = Counter(), threading.Event()
    samples: dict[str, list[float]] = {"fds": [], "threads": [], "rss_mib": [], "samba": []}
    totals: dict[str, int] = {}
    stalled = 0.0  # the longest time without a completed operation in the second half
    with ExitStack() as stack:
        samba = stack.enter_context(maybe_samba())
        ports = stack.enter_context(services(counter))  # they stop after the workers are joined, below
        script = [sys.executable, __file__]
        client = [*script, "--client", str(ports[0]), str(ports[1])]
        groups = [Clients("clients", lambda seed: [*client, str(seed)], args.clients, rng, counter, False)]
        if samba is not None:
            gateway = stack.enter_context(gateway_thread(Gateway(samba.address)))
            smb = [*script, "--smb-client", str(gateway[1]), str(samba.port), samba.password, str(samba.path)]
            groups.append(Clients("smb clients", lambda seed: [*smb, str(seed)], args.smb_clients, rng, counter, True))
        threads = [
            threading.Thread(target=worker, args=(ports, rng.randrange(1 << 30), stop, counter), name="soak-worker")
            for _ in range(args.workers)
        ]
        for thread in threads:
            thread.start()
        header = f"{'time':>6} {'fds':>5} {'thr':>4} {'RSS MiB':>8} {'samba':>5} {'ops':>6} {'MB/s':>7}  events"
        print(header, flush=True)
        start = time.monotonic()
        next_line, progress = start + interval, start
        while (now := time.monotonic()) < start + args.duration:
            for group in groups:
                group.tend()
            if now < next_line:
                time.sleep(0.05)
                continue
            next_line += interval
            values = counter.take()
            for name, amount in values.items():
                totals[name] = totals.get(name, 0) + amount
            state = resources()
            state["samba"] = len(samba_processes(samba)) if samba is not None else 0
            for name in samples:
                samples[name].append(state[name])
            ops = values.get("operations", 0)
            if ops:
                progress = now
            elif now - start > args.duration / 2:
                stalled = max(stalled, now - progress)
            events = ", ".join(f"{k} {v}" for k, v in sorted(values.items()) if k not in ("operations", "bytes"))
            rate = BYTES_PER_SECOND.show(values.get("bytes", 0) / interval)  # MB/s
            print(
                f"{now - start:6.0f} {state['fds']:5.0f} {state['threads']:4.0f} {state['rss_mib']:8.1f} "
                f"{state['samba']:5.0f} {ops:6d} {rate:7.2f}  {events}",
                flush=True,
            )
        stop.set()
        for group in groups:
            group.stop()
        for thread in threads:
            thread.join(TIMEOUT + 5)
    print(
        f"summary after {time.monotonic() - start:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
    )
    problems = []
    if len(samples["fds"]) < 8:
        problems.append(f"only {len(samples['fds'])} samples: run longer or shorten --interval")
    else:
        tolerances = {
            "fds": 16.0,
            "threads": 4.0 + args.workers,
            "rss_mib": max(32.0, 0.15 * statistics.median(samples["rss_mib"])),
            "samba": 4.0 + args.smb_clients,
        }
        problems += [v for name, t in tolerances.items() if (v := grown(name, samples[name], t)) is not None]
    for name in ("failures", "client failures"):
        if totals.get(name):
            problems.append(f"{totals[name]} {name}")
    if stalled > STALL:
        problems.append(f"no operation completed for {stalled:.0f} s in the second half")
    if any(thread.is_alive() for thread in threads):
        problems.append("a worker did not stop")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: FAILED" if problems else "soak: passed", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_process((int(sys.argv[2]), int(sys.argv[3])), int(sys.argv[4]))
    elif sys.argv[1:2] == ["--smb-client"]:
        gateway_port, samba_port, password, path, seed = sys.argv[2:7]
        samba = SambaServer("127.0.0.1", int(samba_port), "root", password, "share", Path(path))
        smb_client_process(samba, ("127.0.0.1", int(gateway_port)), int(seed))
    else:
        sys.exit(main())
