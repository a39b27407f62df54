"""The receive queue: reassembled data waiting for the application.

Each received fragment stays in the queue, holding its receive buffer (and so
a receive credit), until the application has read all of it.  That is the
flow control of SMB-Direct: a reader that stops reading stops the granting of
credits, and the sender stalls instead of the receiver buffering without
bound.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ReceiveQueue"]


class _Fragment:
    __slots__ = ("data", "message_length", "position")

    def __init__(self, data: memoryview, message_length: int | None) -> None:
        self.data = data
        self.position = 0
        # Total length of the message this fragment starts, None inside one.
        self.message_length = message_length


class ReceiveQueue:
    """A FIFO of fragments with message starts marked."""

    def __init__(self) -> None:
        self._fragments: deque[_Fragment] = deque()
        #: Bytes queued and not yet read.
        self.size = 0

    def __len__(self) -> int:
        """The number of fragments (receive buffers) still held."""
        return len(self._fragments)

    def push_pieces(self, buffer: bytearray, pieces: list[tuple[int, int]]) -> None:
        """Queue the fragments gathered one after another in ``buffer``: ``(length, total)``
        each, ``total`` the length of the message a fragment starts, else 0."""
        view = memoryview(buffer)
        append = self._fragments.append
        position = 0
        for length, total in pieces:
            append(_Fragment(view[position : position + length], total or None))
            position += length
        self.size += position

    def message_start(self) -> int | None:
        """The total length of the message at the head, if none of it was read."""
        if not self._fragments:
            return None
        head = self._fragments[0]
        return head.message_length if head.position == 0 else None

    def consume_message_start(self) -> int:
        """Mark the head message as started (its synthesized header was read)."""
        length = self.message_start()
        if length is None:
            raise ValueError("the queue is not at the start of a message")
        self._fragments[0].message_length = None
        return length

    def read(self, nbytes: int) -> tuple[bytes, int]:
        """Take up to ``nbytes``; return them and how many fragments were freed."""
        parts: list[memoryview] = []
        freed = 0
        wanted = nbytes
        while wanted and self._fragments:
            head = self._fragments[0]
            take = min(len(head.data) - head.position, wanted)
            parts.append(head.data[head.position : head.position + take])
            head.position += take
            head.message_length = None
            wanted -= take
            if head.position == len(head.data):
                self._fragments.popleft()
                freed += 1
        data = b"".join(parts)
        self.size -= len(data)
        return data, freed
