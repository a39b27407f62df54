"""A real, level-triggered file descriptor that mirrors a socket's readiness.

Programs written for the stdlib wait on ``fileno()`` with select, poll,
epoll or selectors.  An SMB-Direct socket has no kernel descriptor of its own,
so it keeps one end of a socket pair readable exactly while it should be:
one byte sits in the pair while data, a connection or the end of the
connection waits, and is taken out when that is no longer so.
"""

from __future__ import annotations

import socket

__all__ = ["ReadinessFd"]


class ReadinessFd:
    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._readable = False

    def fileno(self) -> int:
        return self._read.fileno()

    def update(self, readable: bool) -> None:
        """Make the descriptor readable, or not, to match ``readable``."""
        if readable == self._readable or self._read.fileno() < 0:
            return
        if readable:
            self._write.send(b"!")
        else:
            self._read.recv(1)
        self._readable = readable

    def close(self) -> None:
        self._read.close()
        self._write.close()
