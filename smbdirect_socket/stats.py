"""Live SMB-Direct connections and their statistics, for ``smbdirect stat`` (like ``ss -i``).

A process opts in with :func:`serve`: it then answers on a Unix socket (by
default ``$XDG_RUNTIME_DIR/smbdirect/PID.sock``, or
``/tmp/smbdirect-UID/PID.sock`` without ``XDG_RUNTIME_DIR``) with one JSON
document per connection made to it, then closes::

    {"pid": 1234, "name": "smbdirect gateway", "time": 1764745200.0,
     "summaries": [{"gateway": "SMB-Direct 0.0.0.0:5445 -> TCP 127.0.0.1:445", "served": 3, ...}],
     "connections": [{"id": 1, "kind": "gateway", "local": "0.0.0.0:5445",
                      "peer": "127.0.0.1:40612", "age": 12.5, "state": "ESTAB",
                      "info": {"send_credits": 255, "bytes_sent": 1048576, ...}, ...}]}

``info`` holds every field of :class:`~smbdirect_socket.SocketInfo`; a
connection may add its own fields (the gateway adds its server and RDMA
bytes).  The gateway and ``smbdirect run`` register their connections
themselves; other programs :func:`track` the sockets they want shown.
``smbdirect stat`` queries every socket in the runtime directory, or one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .options import SocketInfo

__all__ = ["StatServer", "default_path", "query", "registry", "runtime_dir", "serve", "snapshot", "track"]

#: ``SocketInfo.state`` (TCP's numbers) as ``ss`` names them.
STATE_NAMES = {0: "UNCONN", 1: "ESTAB", 2: "SYN-SENT", 7: "CLOSE", 10: "LISTEN"}


def runtime_dir() -> Path:
    """Where statistics sockets live: ``$XDG_RUNTIME_DIR/smbdirect``, else ``/tmp/smbdirect-UID``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "smbdirect"
    return Path(tempfile.gettempdir()) / f"smbdirect-{os.getuid()}"


def default_path() -> Path:
    """This process's statistics socket: ``runtime_dir()/PID.sock``."""
    return runtime_dir() / f"{os.getpid()}.sock"


@attrs.define(eq=False)
class _Entry:
    kind: str
    local: str
    peer: str
    info: Callable[[], SocketInfo]
    extra: Callable[[], dict[str, Any]] | None
    started: float = attrs.field(factory=time.monotonic)


class Registry:
    """The connections (and process-wide counters) a statistics socket shows; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._entries: dict[int, _Entry] = {}
        self._summaries: dict[int, Callable[[], dict[str, Any]]] = {}

    def add(
        self,
        kind: str,
        local: str,
        peer: str,
        info: Callable[[], SocketInfo],
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> int:
        """Show a connection: ``info`` gives its statistics, ``extra`` more fields; returns its id."""
        with self._lock:
            key = next(self._ids)
            self._entries[key] = _Entry(kind, local, peer, info, extra)
        return key

    def remove(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)

    @contextlib.contextmanager
    def track(
        self,
        kind: str,
        local: str,
        peer: str,
        info: Callable[[], SocketInfo],
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> Iterator[int]:
        """:meth:`add` for the ``with`` block."""
        key = self.add(kind, local, peer, info, extra)
        try:
            yield key
        finally:
            self.remove(key)

    def add_summary(self, summary: Callable[[], dict[str, Any]]) -> int:
        """Process-wide counters (a gateway's) shown before the connections."""
        with self._lock:
            key = next(self._ids)
            self._summaries[key] = summary
        return key

    def remove_summary(self, key: int) -> None:
        with self._lock:
            self._summaries.pop(key, None)

    def snapshot(self, name: str | None = None) -> dict[str, Any]:
        """The JSON document a statistics socket answers with; ``name``: the process's."""
        with self._lock:
            entries = list(self._entries.items())
            summaries = list(self._summaries.values())
        now = time.monotonic()
        connections = []
        for key, entry in entries:
            try:
                info = attrs.asdict(entry.info())
                extra = entry.extra() if entry.extra is not None else {}
            except Exception:  # closed since the copy was taken: no longer live
                continue
            state = info.pop("state")
            connection: dict[str, Any] = {
                "id": key,
                "kind": entry.kind,
                "local": entry.local,
                "peer": entry.peer,
                "age": round(now - entry.started, 3),
                "state": STATE_NAMES.get(state, str(state)),
                "info": info,
            }
            connection.update(extra)
            connections.append(connection)
        return {
            "pid": os.getpid(),
            "name": name or _process_name(),
            "time": time.time(),
            "summaries": [summary() for summary in summaries],
            "connections": connections,
        }


def _process_name() -> str:
    """The command's name as ``ps`` would show it, shortened: ``smbdirect gateway``, ``script.py``."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:2]] if sys.argv and sys.argv[0] else ["python"]
    if argv[0] in ("cli.py", "__main__.py"):  # python -m smbdirect_socket.cli
        argv[0] = "smbdirect"
    return " ".join(argv) if argv[0] == "smbdirect" else argv[0]


#: The process's registry: what :func:`serve` shows.
registry = Registry()


def snapshot() -> dict[str, Any]:
    """What ``smbdirect stat`` would get from this process now."""
    return registry.snapshot()


def track(sock: Any, kind: str = "socket") -> None:
    """Show a connected SMB-Direct socket (blocking or trio) until it is closed or collected."""
    local, peer = _address(sock, "getsockname"), _address(sock, "getpeername")
    reference = weakref.ref(sock)

    def info() -> SocketInfo:
        alive = reference()
        if alive is None:
            raise OSError(errno.EBADF, "socket collected")
        result: SocketInfo = alive.info()
        if result.state in (0, 7):  # closed: no longer a live connection
            registry.remove(key)
            raise OSError(errno.EBADF, "socket closed")
        return result

    key = registry.add(kind, local, peer, info)
    weakref.finalize(sock, registry.remove, key)


def _address(sock: Any, method: str) -> str:
    try:
        address = getattr(sock, method)()
    except OSError:
        return "*"
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StatServer:
    """Answers each connection to ``path`` with :func:`snapshot` as JSON, from a thread."""

    def __init__(self, path: Path, name: str | None = None, source: Registry = registry) -> None:
        self.path = path
        self.name = name or _process_name()
        self._registry = source
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_stale(path)
            self._listener.bind(str(path))
            os.chmod(path, 0o600)  # the peers' addresses are nobody else's business
            self._listener.listen(8)
            self._listener.settimeout(0.2)  # to notice close(); accept() cannot be woken portably
        except BaseException:
            self._listener.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="smbdirect-stat", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(self._registry.snapshot(self.name)).encode() + b"\n")

    def close(self) -> None:
        """Stop answering and remove the socket file."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> StatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_stale(path: Path) -> None:
    """A socket file nobody answers on (a process that died) is taken over; a live one is EADDRINUSE."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
    raise OSError(errno.EADDRINUSE, f"{path}: another process answers statistics there")


def serve(path: str | os.PathLike[str] | None = None, name: str | None = None) -> StatServer:
    """Answer ``smbdirect stat`` on the Unix socket ``path`` (:func:`default_path` if None) until closed.

    ``name`` is what ``smbdirect stat`` calls the process (the script's name
    by default).  Usable as a context manager.  The gateway and ``smbdirect run`` show their
    connections; other programs call :func:`track` on theirs.
    """
    return StatServer(Path(path) if path is not None else default_path(), name)


def query(path: str | os.PathLike[str], timeout: float = 5.0) -> dict[str, Any]:
    """The document the process at ``path`` answers with."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    document: dict[str, Any] = json.loads(b"".join(chunks))
    return document
