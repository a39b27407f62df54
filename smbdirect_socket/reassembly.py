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
from typing import Any

__all__ = ["ReceiveQueue"]


# A run is a list, not an object: one is queued per batch of receives, and a
# list costs a fraction of a class's __init__.  Its fields:
_DATA = 0  # memoryview: the fragments back to back
_ENDS = 1  # list[int]: where each fragment ends in the data
_STARTS = 2  # list[int]: the total length of the message each fragment starts, 0 inside one
_FIRST = 3  # int: the first fragment not wholly read
_POSITION = 4  # int: where reading resumes in the data


class ReceiveQueue:
    """A FIFO of fragments with message starts marked."""

    def __init__(self) -> None:
        self._runs: deque[list[Any]] = deque()
        #: Bytes queued and not yet read.
        self.size = 0
        #: Fragments (receive buffers) still held: ``len()``, without a call.
        self.held = 0

    def __len__(self) -> int:
        """The number of fragments (receive buffers) still held."""
        return self.held

    def push_pieces(self, buffer: bytearray, ends: list[int], totals: list[int]) -> None:
        """Queue the fragments gathered one after another in ``buffer``, fragment ``i``
        ending at ``ends[i]``; ``totals[i]`` is the length of the message it starts, else 0.
        The lists are kept."""
        if not ends:
            return
        size = ends[-1]
        self._runs.append([memoryview(buffer)[:size], ends, totals, 0, 0])
        self.size += size
        self.held += len(ends)

    def push_payloads(self, payloads: list[memoryview], totals: list[int]) -> None:
        """Queue fragments kept where they lie, ``totals`` as for :meth:`push_pieces`."""
        runs = self._runs
        size = 0
        for data, total in zip(payloads, totals, strict=True):
            length = len(data)
            runs.append([data, [length], [total], 0, 0])
            size += length
        self.size += size
        self.held += len(payloads)

    def message_start(self) -> int | None:
        """The total length of the message at the head, if none of it was read."""
        if not self._runs:
            return None
        head = self._runs[0]
        first = head[_FIRST]
        if head[_POSITION] != (head[_ENDS][first - 1] if first else 0):
            return None
        total: int = head[_STARTS][first]
        return total or None

    def consume_message_start(self) -> int:
        """Mark the head message as started (its synthesized header was read)."""
        length = self.message_start()
        if length is None:
            raise ValueError("the queue is not at the start of a message")
        head = self._runs[0]
        head[_STARTS][head[_FIRST]] = 0
        return length

    def read(self, nbytes: int) -> tuple[bytes, int]:
        """Take up to ``nbytes``; return them and how many fragments were freed."""
        runs = self._runs
        if not runs or not nbytes:
            return b"", 0
        held = self.held
        head = runs[0]
        data = head[_DATA]
        start = head[_POSITION]
        size = len(data)
        if start + nbytes < size or len(runs) == 1:
            # the common read, within the head run: one slice, no list
            if start + nbytes >= size:  # the whole run: _take, inline
                out = data[start:].tobytes()
                runs.popleft()
                self.held -= len(head[_ENDS]) - head[_FIRST]
            else:
                end = start + nbytes
                out = data[start:end].tobytes()
                self._take(head, end)
            self.size -= len(out)
        else:
            out = b"".join(self._cut(nbytes))
        return out, held - self.held

    def read_into(self, out: bytearray, nbytes: int) -> int:
        """Append up to ``nbytes`` to ``out`` (one copy, where :meth:`read` and an
        append make two); return how many fragments were freed."""
        held = self.held
        for part in self._cut(nbytes):
            out += part
        return held - self.held

    def _cut(self, nbytes: int) -> list[memoryview]:
        """Take up to ``nbytes`` across runs, as views of them."""
        runs = self._runs
        parts: list[memoryview] = []
        wanted = nbytes
        while wanted and runs:
            head = runs[0]
            data = head[_DATA]
            start = head[_POSITION]
            end = min(start + wanted, len(data))
            parts.append(data[start:end])
            wanted -= end - start
            self._take(head, end)
        self.size -= nbytes - wanted
        return parts

    def _take(self, head: list[Any], end: int) -> None:
        """The head run is read up to ``end``: release the fragments wholly read."""
        ends = head[_ENDS]
        if end == ends[-1]:
            self._runs.popleft()
            self.held -= len(ends) - head[_FIRST]
        else:
            first = bisect_right(ends, end, head[_FIRST])
            self.held -= first - head[_FIRST]
            head[_FIRST] = first
            head[_POSITION] = end
