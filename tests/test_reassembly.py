"""The receive queue: reading into a buffer frees and returns what reading does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smbdirect_socket.reassembly import ReceiveQueue

# A batch: fragments gathered in one buffer (True) or kept where they lie (False),
# each fragment's length and whether it starts a message.
batches = st.lists(
    st.tuples(st.booleans(), st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=5)),
    min_size=1,
    max_size=6,
)


def fill(queue: ReceiveQueue, spec: list[tuple[bool, list[tuple[int, bool]]]]) -> None:
    counter = 0
    for gathered, fragments in spec:
        pieces = []
        for length, starts in fragments:
            pieces.append((bytes((counter + i) % 251 for i in range(length)), length * 10 if starts else 0))
            counter += length
        totals = [total for _, total in pieces]
        if gathered:
            buffer = bytearray(b"".join(data for data, _ in pieces) + b"spare")
            ends = []
            for data, _ in pieces:
                ends.append((ends[-1] if ends else 0) + len(data))
            queue.push_pieces(buffer, ends, totals)
        else:
            queue.push_payloads([memoryview(bytearray(data)) for data, _ in pieces], totals)


@given(batches, st.lists(st.integers(0, 90), min_size=1, max_size=12))
def test_read_into_appends_what_read_returns(spec: list[tuple[bool, list[tuple[int, bool]]]], sizes: list[int]) -> None:
    reading, appending = ReceiveQueue(), ReceiveQueue()
    fill(reading, spec)
    fill(appending, spec)
    out = bytearray(b"kept")
    expected = b"kept"
    for size in sizes:
        data, freed = reading.read(size)
        assert appending.read_into(out, size) == freed
        expected += data
        assert out == expected
        assert (appending.size, appending.held, appending.message_start()) == (
            reading.size,
            reading.held,
            reading.message_start(),
        )
