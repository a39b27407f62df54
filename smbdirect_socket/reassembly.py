"""The receive queue: reassembled data waiting for the application.

Each received fragment stays in the queue, holding its receive buffer (and so
a receive credit), until the application has read all of it.  That is the
flow control of SMB-Direct: a reader that stops reading stops the granting of
credits, and the sender stalls instead of the receiver buffering without
bound.

Small fragments of one batch of receives arrive gathered one after another
in one buffer, so the queue keeps a batch as one run with the fragments'
boundaries, and a read costs a slice per run, not per fragment.  Large ones
stay where they were received, each a run of its own: copying them would cost
more than the objects.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

__all__ = ["ReceiveQueue"]


class _Run:
    """Fragments gathered back to back in one buffer, read from ``position`` on."""

    __slots__ = ("data", "ends", "first", "position", "starts")

    def __init__(self, data: memoryview, ends: list[int], starts: list[int]) -> None:
        self.data = data
        self.ends = ends  # where each fragment ends in ``data``
        # The total length of the message each fragment starts, 0 inside one.
        self.starts = starts
        self.first = 0  # the first fragment not wholly read
        self.position = 0


class ReceiveQueue:
    """A FIFO of fragments with message starts marked."""

    def __init__(self) -> None:
        self._runs: deque[_Run] = deque()
        #: Bytes queued and not yet read.
        self.size = 0
        self._held = 0

    def __len__(self) -> int:
        """The number of fragments (receive buffers) still held."""
        return self._held

    def push_pieces(self, buffer: bytearray, ends: list[int], totals: list[int]) -> None:
        """Queue the fragments gathered one after another in ``buffer``, fragment ``i``
        ending at ``ends[i]``; ``totals[i]`` is the length of the message it starts, else 0.
        The lists are kept."""
        if not ends:
            return
        size = ends[-1]
        self._runs.append(_Run(memoryview(buffer)[:size], ends, totals))
        self.size += size
        self._held += len(ends)

    def push_payloads(self, payloads: list[memoryview], totals: list[int]) -> None:
        """Queue fragments kept where they lie, ``totals`` as for :meth:`push_pieces`."""
        runs = self._runs
        size = 0
        for data, total in zip(payloads, totals, strict=True):
            length = len(data)
            runs.append(_Run(data, [length], [total]))
            size += length
        self.size += size
        self._held += len(payloads)

    def message_start(self) -> int | None:
        """The total length of the message at the head, if none of it was read."""
        if not self._runs:
            return None
        head = self._runs[0]
        first = head.first
        if head.position != (head.ends[first - 1] if first else 0):
            return None
        return head.starts[first] or None

    def consume_message_start(self) -> int:
        """Mark the head message as started (its synthesized header was read)."""
        length = self.message_start()
        if length is None:
            raise ValueError("the queue is not at the start of a message")
        head = self._runs[0]
        head.starts[head.first] = 0
        return length

    def read(self, nbytes: int) -> tuple[bytes, int]:
        """Take up to ``nbytes``; return them and how many fragments were freed."""
        parts: list[memoryview] = []
        held = self._held
        wanted = nbytes
        runs = self._runs
        while wanted and runs:
            head = runs[0]
            start = head.position
            end = min(start + wanted, len(head.data))
            parts.append(head.data[start:end])
            wanted -= end - start
            if end == len(head.data):
                runs.popleft()
                self._held -= len(head.ends) - head.first
            else:
                first = bisect_right(head.ends, end, head.first)
                self._held -= first - head.first
                head.first = first
                head.position = end
        data = b"".join(parts)
        self.size -= len(data)
        return data, held - self._held
