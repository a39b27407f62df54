"""The compiled FPDU path against the pure-Python one: the same bytes in, the
same completions, placements, errors and bytes out; and nothing placed outside
a posted receive or a registration, whatever the peer forges."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbdirect_socket._wire import core
from smbdirect_socket.rdma import Access, Completion
from smbdirect_socket.rdma.soft import ddp
from smbdirect_socket.rdma.soft.ddp import Op
from smbdirect_socket.rdma.soft.memory import MemoryTable
from smbdirect_socket.rdma.soft.mpa import Negotiation, fpdu_pieces
from smbdirect_socket.rdma.soft.rdmap import IwarpQueuePair

pytestmark = pytest.mark.skipif(core is None, reason="the compiled wire core is not built")

GUARD = 64  # bytes around every buffer that nothing may touch


class Receiver:
    """A responder with receives posted and two registrations, each inside guard bytes."""

    def __init__(self, compiled: bool, crc: bool, receives: int = 4, size: int = 3000) -> None:
        self.qp = IwarpQueuePair(Negotiation(crc=crc, ord=4, ird=4), initiator=False)
        self.qp.wire = core if compiled else None
        self.qp.memory = MemoryTable(randbelow=random.Random(7).randrange)
        self.memory = bytearray(b"\xa5" * (GUARD + 3 * 4096 + GUARD))
        view = memoryview(self.memory)
        self.writable = self.qp.register(view[GUARD : GUARD + 4096], Access.REMOTE_WRITE, 0x10000)
        self.readonly = self.qp.register(view[GUARD + 4096 : GUARD + 8192], Access.REMOTE_READ, 0x20000)
        self.invalidatable = self.qp.register(view[GUARD + 8192 : GUARD + 12288], Access.REMOTE_WRITE, 0x30000)
        self.buffers = [bytearray(b"\x5a" * (GUARD + size + GUARD)) for _ in range(receives)]
        for i, buffer in enumerate(self.buffers):
            self.qp.post_recv(i, memoryview(buffer)[GUARD : GUARD + size])

    def feed(self, data: bytes, cuts: list[int]) -> None:
        start = 0
        for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
            self.qp.receive_bytes(data[start:cut])
            start = cut

    def outcome(self) -> tuple[list[Completion], bytes, list[bytes], bytes, str, bool]:
        completions = self.qp.poll_many(10_000)
        return (
            completions,
            bytes(self.memory),
            [bytes(b) for b in self.buffers],
            self.qp.data_to_send(),
            str(self.qp.error),
            self.writable.valid and self.invalidatable.valid,
        )

    def guards_intact(self) -> bool:
        return self.memory[:GUARD] == b"\xa5" * GUARD and all(
            b[:GUARD] == b"\x5a" * GUARD and b[-GUARD:] == b"\x5a" * GUARD for b in self.buffers
        )


def both(data: bytes, crc: bool, cuts: list[int] = []) -> tuple[Receiver, Receiver]:  # noqa: B006
    python, compiled = Receiver(False, crc), Receiver(True, crc)
    python.feed(data, cuts)
    compiled.feed(data, cuts)
    assert compiled.outcome() == python.outcome()
    assert compiled.guards_intact() and python.guards_intact()
    return python, compiled


def fpdu(header: bytes, payload: bytes, crc: bool) -> bytes:
    return b"".join(bytes(p) for p in fpdu_pieces(header, payload, crc))


def send(
    msn: int, payload: bytes, crc: bool, *, op: Op = Op.SEND, mo: int = 0, last: bool = True, word: int = 0
) -> bytes:
    return fpdu(ddp.untagged_header(op, last, ddp.QN_SEND, msn, mo, word), payload, crc)


def write(stag: int, to: int, payload: bytes, crc: bool, *, last: bool = True) -> bytes:
    return fpdu(ddp.tagged_header(Op.WRITE, last, stag, to), payload, crc)


def stag_of(name: str) -> int:
    return getattr(Receiver(False, False), name).token  # type: ignore[no-any-return]


# ---- CRC32C and framing --------------------------------------------------------------


@given(st.binary(max_size=3000), st.integers(0, 0xFFFFFFFF))
def test_crc32c_matches_the_crc32c_package(data: bytes, start: int) -> None:
    import crc32c

    assert core.crc32c(data, start) == crc32c.crc32c(data, start)
    assert core.crc32c_table(data, start) == crc32c.crc32c(data, start)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([Op.SEND, Op.SEND_SE, Op.SEND_INVALIDATE, Op.WRITE, Op.READ_RESPONSE]),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.binary(max_size=5000),
        ),
        max_size=6,
    ),
    st.sampled_from([64, 100, 1500, 65536]),
    st.booleans(),
)
def test_framing_gives_the_python_bytes(requests: list[tuple[Op, int, int, bytes]], max_fpdu: int, crc: bool) -> None:
    python = IwarpQueuePair(Negotiation(crc=crc, ord=4, ird=4), initiator=True, max_fpdu=max_fpdu)
    compiled = IwarpQueuePair(Negotiation(crc=crc, ord=4, ird=4), initiator=True, max_fpdu=max_fpdu)
    python.wire = None
    for qp in (python, compiled):
        for i, (op, word, address, data) in enumerate(requests):
            if op is Op.WRITE:
                qp.post_write(i, data, word, address)
            else:
                invalidate = word if op is Op.SEND_INVALIDATE else None
                qp.post_send(i, data, invalidate_token=invalidate, solicited=op is Op.SEND_SE)
    assert compiled.data_to_send() == python.data_to_send()
    assert compiled.poll_many(100) == python.poll_many(100)


@given(
    st.lists(st.lists(st.binary(max_size=3000), max_size=5), max_size=4),
    st.sampled_from([64, 100, 1500, 65536]),
    st.booleans(),
    st.booleans(),
)
def test_batches_of_sends_give_the_python_bytes(
    batches: list[list[bytes]], max_fpdu: int, crc: bool, signaled: bool
) -> None:
    """A message's fragments framed in one call: the bytes and completions of one send at a time."""
    python = IwarpQueuePair(Negotiation(crc=crc, ord=4, ird=4), initiator=True, max_fpdu=max_fpdu)
    compiled = IwarpQueuePair(Negotiation(crc=crc, ord=4, ird=4), initiator=True, max_fpdu=max_fpdu)
    python.wire = None
    for wr_id, datas in enumerate(batches):
        compiled.post_sends(wr_id, list(datas), signaled=signaled)
        for index, data in enumerate(datas):
            python.post_send(wr_id, data, signaled=signaled and index == len(datas) - 1)
    assert compiled.data_to_send() == python.data_to_send()
    assert compiled.poll_many(100) == python.poll_many(100)


def test_a_batch_of_sends_refuses_what_one_send_refuses() -> None:
    with pytest.raises(TypeError, match="list"):
        core.frame_sends(1, (b"x",), 1024, False)
    with pytest.raises(ValueError, match="MSNs must fit 32 bits"):
        core.frame_sends(0xFFFFFFFF, [b"a", b"b"], 1024, False)
    with pytest.raises(ValueError, match="chunk"):
        core.frame_sends(1, [b"a"], 1022, False)
    with pytest.raises(TypeError):
        core.frame_sends(1, ["text"], 1024, False)
    last = core.frame_one(Op.SEND, 0, 0xFFFFFFFF, b"a", 1024, 1024, False)
    assert core.frame_sends(0xFFFFFFFF, [b"a"], 1024, False) == last


def test_receives_posted_together_are_the_receives_posted_one_by_one() -> None:
    data = b"".join(send(msn, bytes([msn]) * (msn * 300), False) for msn in range(1, 5))
    one_by_one, together = Receiver(True, False), Receiver(True, False, receives=0)
    together.buffers = [bytearray(b"\x5a" * (GUARD + 3000 + GUARD)) for _ in range(4)]
    together.qp.post_recvs(0, [memoryview(b)[GUARD : GUARD + 3000] for b in together.buffers])
    for receiver in (one_by_one, together):
        receiver.feed(data, [])
    assert together.outcome() == one_by_one.outcome()
    with pytest.raises(ValueError, match="writable"):
        together.qp.post_recvs(9, [memoryview(bytes(10))])


# ---- the receive path: valid and mutated streams -------------------------------------


def stream(crc: bool, pieces: list[tuple[str, int, int]]) -> bytes:
    """Sends, Writes, Sends with Invalidate, as a peer would put them on the wire."""
    out = bytearray()
    msn = 1
    writable, invalidatable = stag_of("writable"), stag_of("invalidatable")
    for kind, size, where in pieces:
        payload = random.Random(size * 31 + where).randbytes(size)
        if kind == "send":
            out += send(msn, payload[:3000], crc, op=Op.SEND_SE if where % 2 else Op.SEND)
            msn += 1
        elif kind == "split":  # one message in two segments
            half = len(payload) // 2 // 4 * 4
            out += send(msn, payload[:half], crc, last=False)
            out += send(msn, payload[half:3000], crc, mo=half)
            msn += 1
        elif kind == "invalidate":
            out += send(msn, payload[:100], crc, op=Op.SEND_INVALIDATE, word=invalidatable)
            msn += 1
        else:
            out += write(writable, 0x10000 + where % 4096, payload[: 4096 - where % 4096], crc)
    return bytes(out)


PIECES = st.lists(
    st.tuples(st.sampled_from(["send", "split", "write", "invalidate"]), st.integers(0, 3500), st.integers(0, 5000)),
    max_size=8,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(PIECES, st.booleans(), st.lists(st.integers(0, 1 << 20), max_size=4))
def test_valid_streams_give_identical_results(pieces: list[tuple[str, int, int]], crc: bool, cuts: list[int]) -> None:
    both(stream(crc, pieces), crc, cuts)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    PIECES,
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
    st.lists(st.integers(0, 1 << 20), max_size=3),
)
def test_mutated_streams_give_identical_results(
    pieces: list[tuple[str, int, int]], crc: bool, flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    data = bytearray(stream(crc, pieces))
    if not data:
        return
    for where, value in flips:
        data[where % len(data)] = value
    both(bytes(data), crc, cuts)


# ---- forged headers: the fault is the reference path's, nothing is placed outside ---


@pytest.mark.parametrize("crc", [False, True])
@pytest.mark.parametrize(
    "forge",
    [
        lambda crc: write(stag_of("writable") ^ 1, 0x10000, b"x" * 16, crc),  # wrong key
        lambda crc: write(stag_of("writable") + 0x100, 0x10000, b"x" * 16, crc),  # unknown index
        lambda crc: write(stag_of("readonly"), 0x20000, b"x" * 16, crc),  # no REMOTE_WRITE
        lambda crc: write(stag_of("writable"), 0x10000 + 4090, b"x" * 16, crc),  # past the end
        lambda crc: write(stag_of("writable"), 0x10000 - 8, b"x" * 16, crc),  # before the start
        lambda crc: write(stag_of("writable"), (1 << 64) - 4, b"x" * 16, crc),  # offset wraps
        lambda crc: send(2, b"x" * 16, crc),  # MSN ahead
        lambda crc: send(0, b"x" * 16, crc),  # MSN behind
        lambda crc: send(1, b"x" * 16, crc, mo=8),  # MO of nothing placed
        lambda crc: send(1, b"x" * 3001, crc),  # longer than the receive
        lambda crc: send(1, b"x" * 3000, crc, last=False) + send(1, b"y" * 4, crc, mo=3000),  # overflows at MO
        lambda crc: send(1, b"x", crc, op=Op.SEND_INVALIDATE, word=stag_of("writable") ^ 1),  # cannot invalidate
        lambda crc: b"".join(send(i + 1, b"x", crc) for i in range(5)),  # more Sends than receives
        lambda crc: fpdu(ddp.tagged_header(Op.READ_RESPONSE, True, 0, 0), b"x" * 8, crc),  # no read outstanding
        lambda crc: fpdu(ddp.untagged_header(Op.SEND, True, 3, 1, 0), b"x", crc),  # queue 3
        lambda crc: fpdu(struct.pack("!H", 0x4243) + bytes(16), b"", crc),  # DDP version 2
        lambda crc: fpdu(b"\x41", b"", crc),  # ULPDU shorter than any header
    ],
)
def test_forged_fpdus_are_refused_as_the_reference_path_does(forge: object, crc: bool) -> None:
    data = forge(crc)  # type: ignore[operator]
    _python, compiled = both(data, crc)  # the guards are intact, the outcome is the reference path's
    assert compiled.qp.error is not None


def test_usual_fpdus_never_reach_the_reference_path() -> None:
    receiver = Receiver(True, True)

    def refuse(segment: object) -> None:
        raise AssertionError("the compiled core handed a usual FPDU to the reference path")

    receiver.qp._handle = refuse  # type: ignore[method-assign]
    receiver.feed(stream(True, [("send", 100, 1), ("split", 2000, 2), ("write", 50, 3), ("invalidate", 9, 4)]), [77])
    assert len(receiver.qp.poll_many(10)) == 3 and receiver.qp.error is None


def test_a_write_lands_exactly_inside_its_registration() -> None:
    _python, compiled = both(write(stag_of("writable"), 0x10000 + 4080, b"z" * 16, False), False)
    assert compiled.qp.error is None
    assert compiled.memory[GUARD + 4080 : GUARD + 4096] == b"z" * 16
    assert compiled.memory[GUARD + 4096 :].count(b"z") == 0


def test_read_responses_fill_the_read_in_order() -> None:
    """A 10000-byte RDMA read, answered in FPDUs of 1500 bytes, through both paths."""
    results = []
    for compiled in (False, True):
        reader = IwarpQueuePair(Negotiation(crc=True, ord=4, ird=4), initiator=True)
        source = IwarpQueuePair(Negotiation(crc=True, ord=4, ird=4), initiator=False, max_fpdu=1500)
        for qp in (reader, source):
            qp.wire = core if compiled else None
        data = random.Random(3).randbytes(10000)
        region = source.register(memoryview(bytearray(data)), Access.REMOTE_READ)
        into = bytearray(10000 + 2 * GUARD)
        reader.post_read(5, memoryview(into)[GUARD:-GUARD], region.token, region.address)
        source.receive_bytes(reader.data_to_send())
        reader.receive_bytes(source.data_to_send())
        assert into[GUARD:-GUARD] == data and into[:GUARD] == into[-GUARD:] == bytes(GUARD)
        results.append(reader.poll_many(10))
    assert results[0] == results[1] and results[0][0].byte_len == 10000
