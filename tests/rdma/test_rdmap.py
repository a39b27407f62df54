"""The sans-IO iWARP queue pair: two of them wired together in memory."""

from __future__ import annotations

import errno
import random

import pytest

from smbdirect_socket.rdma import Access, Completion, Opcode, RdmaError, Status
from smbdirect_socket.rdma.soft import ddp
from smbdirect_socket.rdma.soft.ddp import Layer, Op, Terminate
from smbdirect_socket.rdma.soft.mpa import FpduReader, Negotiation, frame_fpdu
from smbdirect_socket.rdma.soft.rdmap import IwarpQueuePair


class Wire:
    """An initiator and a responder; ``run`` carries bytes until both are idle."""

    def __init__(
        self, crc: bool = False, max_fpdu: int = 65536, ord_: int = 8, ird: int = 8, **initiator_queues: int
    ) -> None:
        self.a = IwarpQueuePair(
            Negotiation(crc=crc, ord=ord_, ird=ird), initiator=True, max_fpdu=max_fpdu, **initiator_queues
        )
        self.b = IwarpQueuePair(Negotiation(crc=crc, ord=ord_, ird=ird), initiator=False, max_fpdu=max_fpdu)
        self.sent_by = {id(self.a): bytearray(), id(self.b): bytearray()}

    def run(self) -> None:
        while True:
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                data = src.data_to_send()
                if data:
                    moved = True
                    self.sent_by[id(src)] += data
                    dst.receive_bytes(data)
            if not moved:
                return


def completions(qp: IwarpQueuePair) -> list[Completion]:
    found = []
    while (c := qp.poll()) is not None:
        found.append(c)
    return found


def terminates_sent(wire: Wire, qp: IwarpQueuePair) -> list[Terminate]:
    reader = FpduReader(qp.negotiation.crc)
    reader.feed(bytes(wire.sent_by[id(qp)]))
    found = []
    while (raw := reader.next_segment()) is not None:
        segment = ddp.parse_segment(raw)
        if segment.op is Op.TERMINATE:
            found.append(Terminate.unpack(segment.payload))
    return found


@pytest.mark.parametrize("crc", [False, True])
@pytest.mark.parametrize("max_fpdu", [64, 1500, 65536])
def test_sends_of_random_sizes_cross_fpdus(crc: bool, max_fpdu: int) -> None:
    rng = random.Random(max_fpdu)
    wire = Wire(crc, max_fpdu)
    messages = [rng.randbytes(rng.choice([0, 1, 3, 100, 5000, 70000])) for _ in range(20)]
    buffers = [bytearray(70000) for _ in messages]
    for i, buffer in enumerate(buffers):
        wire.b.post_recv(i, memoryview(buffer))
    for i, message in enumerate(messages):
        wire.a.post_send(100 + i, message, solicited=i % 2 == 1)
    wire.run()
    received = completions(wire.b)
    assert [c.wr_id for c in received] == list(range(20))
    for c, message, buffer in zip(received, messages, buffers, strict=True):
        assert c.status is Status.SUCCESS and c.opcode is Opcode.RECV
        assert bytes(buffer[: c.byte_len]) == message
        assert c.solicited == (c.wr_id % 2 == 1)
    assert [c.wr_id for c in completions(wire.a)] == [100 + i for i in range(20)]


def test_write_read_and_remote_invalidate() -> None:
    wire = Wire()
    memory = bytearray(b"." * 4096)
    region = wire.b.register(memoryview(memory), Access.REMOTE_WRITE | Access.REMOTE_READ)
    wire.a.post_write(1, b"hello", region.token, region.address + 100)
    into = bytearray(10)
    wire.a.post_read(2, memoryview(into), region.token, region.address + 98)
    wire.run()
    assert memory[100:105] == b"hello"
    assert into == b"..hello..."
    assert [(c.wr_id, c.status) for c in completions(wire.a)] == [(1, Status.SUCCESS), (2, Status.SUCCESS)]
    receive = bytearray(16)
    wire.b.post_recv(7, memoryview(receive))
    wire.a.post_send(3, b"done", invalidate_token=region.token)
    wire.run()
    [received] = completions(wire.b)
    assert received.invalidated_token == region.token and not region.valid


@pytest.mark.parametrize("crc", [False, True])
def test_read_responses_carry_the_memory_the_request_found(crc: bool) -> None:
    """A Read Response carries the memory as the request found it, though what
    the peer sends next (a Write, here) changes it before the response leaves,
    and though the region is invalidated meanwhile: responses queued are copied
    out of the memory first."""
    wire = Wire(crc=crc)
    memory = bytearray(b"A" * 80000)
    region = wire.b.register(memoryview(memory), Access.REMOTE_READ | Access.REMOTE_WRITE)

    def read(first: int, ranges: list[int]) -> list[bytearray]:
        outs = [bytearray(20000) for _ in ranges]
        for i, (start, out) in enumerate(zip(ranges, outs, strict=True)):
            wire.a.post_read(first + i, memoryview(out), region.token, region.address + start)
        return outs

    first = read(0, [0, 20000, 40000])
    wire.a.post_write(9, b"B" * 80000, region.token, region.address)
    wire.b.receive_bytes(wire.a.data_to_send())  # the reads, then the write: the responses are still queued
    assert memory == b"B" * 80000
    queued = read(10, [0, 20000])
    wire.a.post_write(19, b"C" * 80000, region.token, region.address)
    wire.b.receive_bytes(wire.a.data_to_send())
    wire.run()
    assert [bytes(o) for o in first] == [b"A" * 20000] * 3
    assert [bytes(o) for o in queued] == [b"B" * 20000] * 2
    later = read(20, [60000])
    wire.b.receive_bytes(wire.a.data_to_send())
    wire.b.invalidate(region.token)
    memory[:] = b"D" * 80000  # the owner reuses the memory once it is no longer registered
    wire.run()
    assert bytes(later[0]) == b"C" * 20000
    assert all(c.status is Status.SUCCESS for c in completions(wire.a))


def test_read_responses_written_are_forgotten() -> None:
    """What a responder remembers of the responses it lent out of registered
    memory ends once they are written: it does not grow with every read."""
    wire = Wire()
    memory = bytearray(range(256)) * 256
    region = wire.b.register(memoryview(memory), Access.REMOTE_READ)
    for i in range(200):
        out = bytearray(20000)
        wire.a.post_read(i, memoryview(out), region.token, region.address + i)
        wire.run()
        assert out == memory[i : i + 20000]
    assert len(wire.b._lent) <= 1


def test_reads_wait_for_ord() -> None:
    wire = Wire(ord_=1)
    memory = bytearray(range(256))
    region = wire.b.register(memoryview(memory), Access.REMOTE_READ)
    outs = [bytearray(16) for _ in range(3)]
    for i, out in enumerate(outs):
        wire.a.post_read(i, memoryview(out), region.token, 16 * i)
    data = wire.a.data_to_send()
    assert data.count(bytes.fromhex("4141")) == 1  # one Read Request until its response
    wire.b.receive_bytes(data)
    wire.run()
    assert [bytes(o) for o in outs] == [bytes(range(16 * i, 16 * i + 16)) for i in range(3)]


def test_read_with_ord_zero_is_refused_locally() -> None:
    wire = Wire(ord_=0)
    with pytest.raises(RdmaError) as info:
        wire.a.post_read(1, memoryview(bytearray(4)), 0x100, 0)
    assert info.value.errno == errno.EINVAL


def hostile(victim_region_access: Access = Access.REMOTE_READ | Access.REMOTE_WRITE) -> tuple[Wire, int, bytearray]:
    wire = Wire()
    memory = bytearray(64)
    region = wire.b.register(memoryview(memory), victim_region_access)
    return wire, region.token, memory


def assert_victim(wire: Wire, message: str, terminate: Terminate) -> None:
    assert wire.b.error is not None
    assert wire.b.error.errno == errno.ECONNABORTED
    assert str(wire.b.error).startswith(f"[Errno {errno.ECONNABORTED}] {message}")
    assert terminates_sent(wire, wire.b) == [terminate]
    # The initiator learns why and fails too.
    assert wire.a.error is not None and wire.a.error.errno == errno.ECONNRESET
    assert terminate.describe() in str(wire.a.error)


def test_forged_token() -> None:
    wire, token, memory = hostile()
    wire.a.post_write(1, b"evil", token ^ 0x01, 0)
    wire.run()
    quoted = bytes.fromhex("0004 c140") + (token ^ 1).to_bytes(4, "big") + bytes(8)
    assert_victim(
        wire,
        f"RDMA Write: invalid token: 0x{token ^ 1:08x} is not registered",
        Terminate(Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_INVALID_STAG, quoted),
    )
    assert memory == bytes(64)


def test_out_of_bounds_write() -> None:
    wire, token, memory = hostile()
    wire.a.post_write(1, b"evil", token, 62)
    wire.run()
    quoted = bytes.fromhex("0004 c140") + token.to_bytes(4, "big") + (62).to_bytes(8, "big")
    assert_victim(
        wire,
        f"RDMA Write: outside the registration: [0x3e, +4) is outside [0x0, +64) of 0x{token:08x}",
        Terminate(Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_BASE_BOUNDS, quoted),
    )
    assert memory == bytes(64)


def test_write_without_access() -> None:
    wire, token, memory = hostile(Access.REMOTE_READ)
    wire.a.post_write(1, b"evil", token, 0)
    wire.run()
    assert wire.b.error is not None
    assert f"0x{token:08x} does not allow remote_write" in str(wire.b.error)
    assert memory == bytes(64)


def test_read_larger_than_region() -> None:
    wire, token, _ = hostile()
    wire.a.post_read(1, memoryview(bytearray(65)), token, 0)
    wire.run()
    assert wire.b.error is not None
    assert f"RDMA Read: outside the registration: [0x0, +65) is outside [0x0, +64) of 0x{token:08x}" in str(
        wire.b.error
    )
    [terminate] = terminates_sent(wire, wire.b)
    assert (terminate.layer, terminate.error_type, terminate.error_code) == (Layer.RDMAP, 1, ddp.RDMAP_BASE_BOUNDS)
    assert len(terminate.rdmap_header) == 28
    [failed] = completions(wire.a)
    assert (failed.wr_id, failed.status) == (1, Status.REMOTE_ACCESS_ERROR)


def test_use_after_local_invalidate() -> None:
    wire = Wire()
    memory = bytearray(64)
    region = wire.b.register(memoryview(memory), Access.REMOTE_WRITE)
    wire.b.memory.deregister(region)
    wire.a.post_write(1, b"late", region.token, 0)
    wire.run()
    assert wire.b.error is not None and "is not registered" in str(wire.b.error)
    assert memory == bytes(64)


def test_use_after_remote_invalidate() -> None:
    wire, token, memory = hostile()
    wire.b.post_recv(1, memoryview(bytearray(8)))
    wire.a.post_send(2, b"inv", invalidate_token=token)
    wire.a.post_write(3, b"late", token, 0)
    wire.run()
    assert wire.b.error is not None and f"0x{token:08x} was invalidated" in str(wire.b.error)
    assert memory == bytes(64)


def test_send_with_no_posted_receive() -> None:
    wire = Wire()
    wire.a.post_send(1, b"nobody listens")
    wire.run()
    quoted = bytes.fromhex("000e 4143 00000000 00000000 00000001 00000000")
    assert_victim(
        wire,
        "Send MSN 1 arrived with no receive posted",
        Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_NO_BUFFER, quoted),
    )


def test_send_longer_than_receive_buffer() -> None:
    wire = Wire()
    wire.b.post_recv(9, memoryview(bytearray(4)))
    wire.a.post_send(1, b"too long")
    wire.run()
    assert wire.b.error is not None
    assert "Send of at least 8 bytes overflows the 4-byte receive buffer" in str(wire.b.error)
    [failed] = completions(wire.b)
    assert (failed.wr_id, failed.status) == (9, Status.LOCAL_LENGTH_ERROR)


def inject(wire: Wire, segment: bytes) -> None:
    wire.b.receive_bytes(frame_fpdu(segment, wire.b.negotiation.crc))
    wire.run()


def test_wrong_msn_and_mo() -> None:
    wire = Wire()
    wire.b.post_recv(1, memoryview(bytearray(64)))
    inject(wire, ddp.encode_untagged(Op.SEND, True, 0, 2, 0, b"x"))
    assert wire.b.error is not None and "Send MSN 2, expected 1" in str(wire.b.error)
    wire = Wire()
    wire.b.post_recv(1, memoryview(bytearray(64)))
    inject(wire, ddp.encode_untagged(Op.SEND, True, 0, 1, 4, b"x"))
    assert wire.b.error is not None and "Send MO 4, expected 0" in str(wire.b.error)


def test_bad_crc() -> None:
    wire = Wire(crc=True)
    fpdu = bytearray(frame_fpdu(ddp.encode_untagged(Op.SEND, True, 0, 1, 0, b"x"), crc=True))
    fpdu[-2] ^= 0xFF
    wire.b.receive_bytes(bytes(fpdu))
    wire.run()
    assert wire.b.error is not None and "FPDU CRC" in str(wire.b.error)
    assert terminates_sent(wire, wire.b) == [Terminate(Layer.LLP, 0, 0x02)]


def test_unknown_opcode() -> None:
    wire = Wire()
    inject(wire, bytes.fromhex("4148") + bytes(16))
    assert wire.b.error is not None and "RDMAP opcode 8 is unknown" in str(wire.b.error)
    assert terminates_sent(wire, wire.b) == [Terminate(Layer.RDMAP, 2, ddp.RDMAP_UNEXPECTED_OPCODE)]


def test_unsolicited_read_response() -> None:
    wire = Wire()
    inject(wire, ddp.encode_tagged(Op.READ_RESPONSE, True, 5, 0, b"x"))
    assert wire.b.error is not None and "Read Response with no read outstanding" in str(wire.b.error)


def test_read_requests_beyond_ird() -> None:
    wire = Wire(ird=1)
    memory = bytearray(8)
    region = wire.b.register(memoryview(memory), Access.REMOTE_READ)
    for msn in (1, 2):
        request = ddp.ReadRequest(7, 0, 8, region.token, 0)
        wire.b.receive_bytes(frame_fpdu(ddp.encode_read_request(msn, request), False))
    assert wire.b.error is not None and "Read Request beyond the IRD of 1" in str(wire.b.error)


def test_error_flushes_posted_work() -> None:
    wire = Wire()
    wire.b.post_recv(1, memoryview(bytearray(8)))
    wire.b.post_recv(2, memoryview(bytearray(8)))
    wire.b.connection_lost(RdmaError(errno.ECONNRESET, "gone"))
    assert [(c.wr_id, c.status) for c in completions(wire.b)] == [(1, Status.FLUSHED), (2, Status.FLUSHED)]
    wire.b.post_send(3, b"late")
    assert completions(wire.b) == [Completion(3, Opcode.SEND, Status.FLUSHED)]


def test_responder_waits_for_initiator() -> None:
    wire = Wire()
    wire.b.post_send(1, b"too early")
    assert wire.b.data_to_send() == b""
    wire.a.post_recv(1, memoryview(bytearray(16)))
    wire.b.post_recv(1, memoryview(bytearray(16)))
    wire.a.post_send(2, b"first")
    wire.run()
    assert [c.opcode for c in completions(wire.a)] == [Opcode.SEND, Opcode.RECV]


def test_unsignaled_sends_complete_only_when_they_fail() -> None:
    wire = Wire()
    buffer = bytearray(100)
    wire.b.post_recv(1, memoryview(buffer))
    wire.a.post_send(10, b"quiet", signaled=False)
    wire.a.post_send(11, b"loud")
    wire.run()
    assert [c.wr_id for c in completions(wire.a)] == [11]
    assert bytes(buffer[:5]) == b"quiet"
    # A failure is reported whether signaled or not.
    wire.a.post_send(12, b"never sent", signaled=False)
    wire.a.connection_lost(RdmaError(errno.ECONNRESET, "gone"))
    assert [(c.wr_id, c.status) for c in completions(wire.a)] == [(12, Status.FLUSHED)]


def test_graceful_close_still_sends_what_was_posted() -> None:
    wire = Wire()
    buffer = bytearray(100)
    wire.b.post_recv(1, memoryview(buffer))
    wire.a.post_send(10, b"last words")
    wire.a.close()
    assert wire.a.wants_to_send  # framed before the close: it goes out, as on a device
    wire.run()
    assert [(c.wr_id, bytes(buffer[: c.byte_len])) for c in completions(wire.b)] == [(1, b"last words")]


def test_segments_survive_the_reuse_of_the_receive_buffer() -> None:
    """TCP delivers into one reused buffer: an FPDU cut in two must still arrive whole."""
    wire = Wire()
    buffers = [bytearray(3000) for _ in range(3)]
    for i, buffer in enumerate(buffers):
        wire.b.post_recv(i, memoryview(buffer))
    messages = [bytes([65 + i]) * 2500 for i in range(3)]
    for i, message in enumerate(messages):
        wire.a.post_send(i, message)
    stream = wire.a.data_to_send()
    reused = bytearray(1000)
    for start in range(0, len(stream), len(reused)):
        chunk = stream[start : start + len(reused)]
        reused[: len(chunk)] = chunk
        wire.b.receive_bytes(memoryview(reused)[: len(chunk)])
        reused[:] = bytes(len(reused))  # the caller reuses its buffer at once
    assert [bytes(b[:2500]) for b in buffers] == messages


def test_full_queues_refuse_work_and_the_queue_pair_carries_on() -> None:
    wire = Wire(max_send_wr=1, max_recv_wr=1)
    a, b = wire.a, wire.b
    memory = bytearray(b"x" * 64)
    region = b.register(memoryview(memory), Access.REMOTE_READ)
    into = bytearray(64)
    a.post_read(1, memoryview(into), region.token, 0)  # outstanding until its response: the queue is full
    with pytest.raises(RdmaError) as info:
        a.post_send(2, b"framed at once, but no room")
    assert (info.value.errno, info.value.strerror) == (errno.ENOMEM, "send queue full (1 work requests)")
    a.post_recv(3, memoryview(bytearray(64)))
    with pytest.raises(RdmaError) as info:
        a.post_recv(4, memoryview(bytearray(64)))
    assert (info.value.errno, info.value.strerror) == (errno.ENOMEM, "receive queue full (1 work requests)")
    wire.run()
    assert [(c.wr_id, c.status) for c in completions(a)] == [(1, Status.SUCCESS)]
    assert into == memory
    # The responder queues sends until the initiator speaks: there a second one finds no room.
    quiet = IwarpQueuePair(Negotiation(crc=False, ord=8, ird=8), initiator=False, max_send_wr=1)
    quiet.post_send(5, b"waits for the initiator")
    with pytest.raises(RdmaError) as info:
        quiet.post_send(6, b"no room behind it")
    assert info.value.errno == errno.ENOMEM
    b.post_recv(7, memoryview(bytearray(64)))
    a.post_send(8, b"room again")
    wire.run()
    assert [c.wr_id for c in completions(b)] == [7] and [c.wr_id for c in completions(a)] == [8]
