"""A real, level-triggered file descriptor that mirrors a socket's readiness.

Programs written for the stdlib wait on ``fileno()`` with select, poll,
epoll or selectors.  An SMB-Direct socket has no kernel descriptor of its own,
so it hands out one end of a Unix socket pair and keeps it in the state the
socket is in:

* readable while one byte sits in the pair (data, a connection or the end
  of the connection waits), taken out when that is no longer so;
* writable while its own send buffer has room: to make it unwritable the
  buffer is filled towards the other end, which drains it to make it
  writable again.  The filler bytes never reach a reader.
"""

from __future__ import annotations

import socket
import threading

__all__ = ["ReadinessFd"]

_FILL = bytes(4096)


class ReadinessFd:
    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)
        # Small buffers make filling (unwritable) and draining (writable) cheap.
        self._read.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self._readable = False
        self._writable = True
        self._lock = threading.Lock()  # updated by whichever thread drives the connection

    def fileno(self) -> int:
        return self._read.fileno()

    def update(self, readable: bool, writable: bool = True) -> None:
        """Make the descriptor readable and writable, or not, to match."""
        with self._lock:
            self._update(readable, writable)

    def _update(self, readable: bool, writable: bool) -> None:
        if self._read.fileno() < 0:
            return
        if readable != self._readable:
            if readable:
                self._write.send(b"!")
            else:
                self._read.recv(1)
            self._readable = readable
        if writable != self._writable:
            if writable:
                self._drain()
            else:
                self._fill()
            self._writable = writable

    def _fill(self) -> None:
        try:
            while True:
                self._read.send(_FILL)
        except BlockingIOError:
            pass

    def _drain(self) -> None:
        try:
            while self._write.recv(65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._read.close()
        self._write.close()
