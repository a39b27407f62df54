"""The software iWARP provider over loopback TCP, with honest and hostile peers."""

from __future__ import annotations

import collections
import errno
import hashlib
import random
import struct

import pytest
import trio

from smbdirect_socket.rdma import Access, Opcode, RdmaError, Status, get_provider
from smbdirect_socket.rdma.soft import ddp
from smbdirect_socket.rdma.soft.ddp import Layer, Op, Terminate
from smbdirect_socket.rdma.soft.mpa import FpduReader, MpaFrame, frame_fpdu
from smbdirect_socket.rdma.soft.provider import SoftListener, SoftQueuePair


async def pair(
    crc: bool = False, *, peer_to_peer: bool = False, listener: SoftListener | None = None
) -> tuple[SoftQueuePair, SoftQueuePair]:
    provider = get_provider("softiwarp", crc=crc, peer_to_peer=peer_to_peer)
    own = listener is None
    if listener is None:
        listener = provider.listen(("127.0.0.1", 0))  # type: ignore[assignment]
    assert listener is not None
    async with trio.open_nursery() as nursery:
        result: dict[str, SoftQueuePair] = {}

        async def serve() -> None:
            request = await listener.get_request()
            result["server"] = await request.accept(b"welcome", initiator_depth=8, responder_resources=8)

        nursery.start_soon(serve)
        result["client"] = await provider.connect(  # type: ignore[assignment]
            listener.address, b"hello", initiator_depth=8, responder_resources=8
        )
    if own:
        await listener.aclose()
    return result["client"], result["server"]


async def test_connect_exchanges_private_data_and_depths() -> None:
    client, server = await pair()
    assert client.peer_private_data == b"welcome" and server.peer_private_data == b"hello"
    assert (client.initiator_depth, client.responder_resources) == (8, 8)
    await client.disconnect()
    with pytest.raises(RdmaError) as info:
        with trio.fail_after(5):
            await server.get_completion()
    assert info.value.errno == errno.ECONNRESET


@pytest.mark.parametrize("crc", [False, True])
@pytest.mark.parametrize("peer_to_peer", [False, True])
async def test_random_traffic_of_every_kind(crc: bool, peer_to_peer: bool) -> None:
    rng = random.Random(f"{crc}{peer_to_peer}")
    client, server = await pair(crc, peer_to_peer=peer_to_peer)
    exposed = bytearray(rng.randbytes(1 << 20))
    region = server.register(memoryview(exposed), Access.REMOTE_READ | Access.REMOTE_WRITE)
    expected = bytearray(exposed)
    receives = [bytearray(200_000) for _ in range(30)]
    for i, buffer in enumerate(receives):
        server.post_recv(i, memoryview(buffer))
    sent = []
    reads: list[tuple[bytearray, bytes]] = []
    for wr in range(60):
        kind = rng.choice(["send", "write", "read"])
        if kind == "send" and len(sent) < len(receives):
            message = rng.randbytes(rng.randrange(0, 200_000))
            sent.append(message)
            client.post_send(wr, message)
        elif kind == "write":
            offset = rng.randrange(0, len(exposed))
            data = rng.randbytes(rng.randrange(1, len(exposed) - offset + 1))
            expected[offset : offset + len(data)] = data
            client.post_write(wr, data, region.token, region.address + offset)
        else:
            offset = rng.randrange(0, len(exposed))
            length = rng.randrange(1, len(exposed) - offset + 1)
            into = bytearray(length)
            client.post_read(wr, memoryview(into), region.token, region.address + offset)
            # Work requests run in order: the read sees every earlier write.
            reads.append((into, bytes(expected[offset : offset + length])))
    with trio.fail_after(30):
        for _ in range(60):  # every work request completes
            completion = await client.get_completion()
            assert completion.status is Status.SUCCESS, (completion, client.error, server.error)
        got = [await server.get_completion() for _ in sent]
    for completion, message in zip(got, sent, strict=True):
        assert completion.opcode is Opcode.RECV
        assert bytes(receives[completion.wr_id][: completion.byte_len]) == message
    for into, want in reads:
        assert hashlib.sha256(into).digest() == hashlib.sha256(want).digest()
    assert exposed == expected
    await client.disconnect()
    await server.disconnect()


async def test_sixteen_mib_write_and_read() -> None:
    client, server = await pair()
    exposed = bytearray(16 << 20)
    region = server.register(memoryview(exposed), Access.REMOTE_READ | Access.REMOTE_WRITE)
    data = random.Random(1).randbytes(16 << 20)
    client.post_write(1, data, region.token, region.address)
    back = bytearray(16 << 20)
    client.post_read(2, memoryview(back), region.token, region.address)
    with trio.fail_after(60):
        assert (await client.get_completion()).status is Status.SUCCESS
        assert (await client.get_completion()).status is Status.SUCCESS
    assert exposed == data and back == data
    await client.disconnect()


# ---- hostile peers --------------------------------------------------------------------


class RawPeer:
    """A TCP client that speaks MPA and FPDUs by hand."""

    def __init__(self, stream: trio.SocketStream, crc: bool) -> None:
        self.stream = stream
        self.reader = FpduReader(crc)
        self.crc = crc

    @classmethod
    async def connect(cls, address: tuple[str, int], request: bytes, crc: bool = False) -> tuple[RawPeer, bytes]:
        stream = await trio.open_tcp_stream(*address)
        await stream.send_all(request)
        reply = b""
        with trio.move_on_after(5):
            while len(reply) < 20 or len(reply) < 20 + struct.unpack("!H", reply[18:20])[0]:
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                    break
                if not chunk:
                    break
                reply += chunk
        return cls(stream, crc), reply

    async def send_segment(self, segment: bytes) -> None:
        await self.stream.send_all(frame_fpdu(segment, self.crc))

    async def terminate_received(self) -> Terminate:
        with trio.fail_after(5):
            while True:
                segment = self.reader.next_segment()
                if segment is not None:
                    parsed = ddp.parse_segment(segment)
                    if parsed.op is Op.TERMINATE:
                        return Terminate.unpack(parsed.payload)
                    continue
                data = await self.stream.receive_some(65536)
                assert data, "closed without a Terminate"
                self.reader.feed(data)

    async def closed(self) -> bool:
        with trio.fail_after(5):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return True


def good_request(crc: bool = False) -> bytes:
    return MpaFrame(reply=False, crc=crc, ird=8, ord=8).pack()


@pytest.fixture
async def server_side() -> tuple[SoftListener, trio.MemoryReceiveChannel[SoftQueuePair]]:  # type: ignore[misc]
    """A listener whose accepted queue pairs arrive on a channel."""
    provider = get_provider("softiwarp")
    listener = provider.listen(("127.0.0.1", 0))
    send, receive = trio.open_memory_channel[SoftQueuePair](10)

    async def accept_forever() -> None:
        while True:
            request = await listener.get_request()
            send.send_nowait(await request.accept(initiator_depth=8, responder_resources=8))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_forever)
        yield listener, receive  # type: ignore[misc]
        nursery.cancel_scope.cancel()
    await listener.aclose()


async def assert_listener_still_serves(listener: SoftListener, accepted: trio.MemoryReceiveChannel) -> None:  # type: ignore[type-arg]
    """A well-behaved client still gets through, and its data arrives."""
    provider = get_provider("softiwarp")
    client = await provider.connect(listener.address, initiator_depth=8, responder_resources=8)
    with trio.fail_after(5):
        server = await accepted.receive()
    buffer = bytearray(16)
    server.post_recv(1, memoryview(buffer))
    client.post_send(2, b"still serving")
    with trio.fail_after(5):
        done = await server.get_completion()
    assert bytes(buffer[: done.byte_len]) == b"still serving"
    await client.disconnect()


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (
            b"MPA ID Rep Frame" + bytes.fromhex("1002 0004 0008 0008"),
            "MPA key b'MPA ID Rep Frame' is not b'MPA ID Req Frame'",
        ),
        (b"MPA ID Req Frame" + bytes.fromhex("1003 0004 0008 0008"), "MPA revision 3 is not supported"),
        (b"MPA ID Req Frame" + bytes.fromhex("1002"), "MPA request not received: "),
    ],
)
async def test_bad_mpa_requests_are_closed_silently(
    server_side: tuple[SoftListener, trio.MemoryReceiveChannel],
    request_bytes: bytes,
    reason: str,  # type: ignore[type-arg]
) -> None:
    listener, accepted = server_side
    peer, reply = await RawPeer.connect(listener.address, request_bytes)
    if len(request_bytes) < 20:
        await peer.stream.send_eof()
    assert reply == b""  # no reply, just a close, as siw does
    with trio.fail_after(6):
        while not listener.rejected:
            await trio.sleep(0.01)
    assert listener.rejected[-1].startswith(reason)
    await assert_listener_still_serves(listener, accepted)


async def test_markers_get_a_reject(server_side: tuple[SoftListener, trio.MemoryReceiveChannel]) -> None:  # type: ignore[type-arg]
    listener, accepted = server_side
    _, reply = await RawPeer.connect(listener.address, MpaFrame(reply=False, markers=True, ird=8, ord=8).pack())
    assert reply == b"MPA ID Rep Frame" + bytes.fromhex("3002 0004 0000 0000")
    await assert_listener_still_serves(listener, accepted)


async def test_reject_reaches_the_initiator() -> None:
    provider = get_provider("softiwarp")
    listener = provider.listen(("127.0.0.1", 0))

    async def refuse() -> None:
        request = await listener.get_request()
        await request.reject(b"no thanks")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuse)
        with pytest.raises(RdmaError) as info:
            await provider.connect(listener.address)
    assert info.value.errno == errno.ECONNREFUSED
    await listener.aclose()


async def test_nothing_listening() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError) as info:
        await get_provider("softiwarp").connect(("127.0.0.1", port))
    assert "all attempts to connect" in str(info.value) or info.value.errno == errno.ECONNREFUSED


SEND_HEADER = bytes.fromhex("4143 00000000 00000000 00000001 00000000")


@pytest.mark.parametrize(
    ("name", "segment", "message", "terminate"),
    [
        (
            "wrong DDP version",
            bytes.fromhex("4243") + bytes(16),
            "DDP version 2 is not 1",
            Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_INVALID_VERSION),
        ),
        (
            "unknown opcode",
            bytes.fromhex("4148") + bytes(16),
            "RDMAP opcode 8 is unknown",
            Terminate(Layer.RDMAP, ddp.RDMAP_REMOTE_OPERATION, ddp.RDMAP_UNEXPECTED_OPCODE),
        ),
        (
            "send with no posted receive",
            SEND_HEADER + b"data",
            "Send MSN 1 arrived with no receive posted",
            Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_NO_BUFFER, bytes.fromhex("0004") + SEND_HEADER),
        ),
    ],
)
async def test_hostile_segments(
    server_side: tuple[SoftListener, trio.MemoryReceiveChannel],  # type: ignore[type-arg]
    name: str,
    segment: bytes,
    message: str,
    terminate: Terminate,
) -> None:
    listener, accepted = server_side
    peer, reply = await RawPeer.connect(listener.address, good_request())
    assert reply.startswith(b"MPA ID Rep Frame")
    victim = await accepted.receive()
    await peer.send_segment(segment)
    assert await peer.terminate_received() == terminate
    assert await peer.closed()
    with trio.fail_after(5):
        while victim.error is None:
            await trio.sleep(0.01)
    assert victim.error.errno == errno.ECONNABORTED
    assert message in str(victim.error)
    await assert_listener_still_serves(listener, accepted)


async def test_forged_and_out_of_bounds_tokens(server_side: tuple[SoftListener, trio.MemoryReceiveChannel]) -> None:  # type: ignore[type-arg]
    listener, accepted = server_side
    cases = [
        (lambda token: ddp.encode_tagged(Op.WRITE, True, token ^ 0x80, 0, b"evil"), "is not registered"),
        (lambda token: ddp.encode_tagged(Op.WRITE, True, token, 30, b"evil"), "is outside [0x0, +32)"),
        (
            lambda token: ddp.encode_read_request(1, ddp.ReadRequest(9, 0, 33, token, 0)),
            "[0x0, +33) is outside [0x0, +32)",
        ),
        (lambda token: ddp.encode_tagged(Op.WRITE, True, token, 0, b"evil"), "does not allow remote_write"),
    ]
    for i, (build, message) in enumerate(cases):
        peer, _ = await RawPeer.connect(listener.address, good_request())
        victim = await accepted.receive()
        memory = bytearray(32)
        access = Access.REMOTE_READ if i == 3 else Access.REMOTE_READ | Access.REMOTE_WRITE
        region = victim.register(memoryview(memory), access)
        await peer.send_segment(build(region.token))
        terminate = await peer.terminate_received()
        assert terminate.layer in (Layer.DDP, Layer.RDMAP)
        with trio.fail_after(5):
            while victim.error is None:
                await trio.sleep(0.01)
        assert message in str(victim.error)
        assert memory == bytes(32)
    await assert_listener_still_serves(listener, accepted)


async def test_bad_crc(server_side: tuple[SoftListener, trio.MemoryReceiveChannel]) -> None:  # type: ignore[type-arg]
    listener, accepted = server_side
    peer, reply = await RawPeer.connect(listener.address, good_request(crc=True), crc=True)
    assert reply[16:18] == bytes.fromhex("5002")  # CRC echoed: on
    victim = await accepted.receive()
    victim.post_recv(1, memoryview(bytearray(64)))
    fpdu = bytearray(frame_fpdu(SEND_HEADER + b"data", crc=True))
    fpdu[-1] ^= 0x55
    await peer.stream.send_all(bytes(fpdu))
    assert await peer.terminate_received() == Terminate(Layer.LLP, 0, 0x02)
    with trio.fail_after(5):
        completion = await victim.get_completion()
    assert completion.status is Status.FLUSHED
    assert victim.error is not None and "FPDU CRC" in str(victim.error)
    await assert_listener_still_serves(listener, accepted)


async def test_peer_vanishing_mid_message(server_side: tuple[SoftListener, trio.MemoryReceiveChannel]) -> None:  # type: ignore[type-arg]
    listener, accepted = server_side
    peer, _ = await RawPeer.connect(listener.address, good_request())
    victim = await accepted.receive()
    victim.post_recv(1, memoryview(bytearray(100_000)))
    fpdu = frame_fpdu(ddp.encode_untagged(Op.SEND, False, 0, 1, 0, bytes(1000)), False)
    await peer.stream.send_all(
        fpdu + frame_fpdu(ddp.encode_untagged(Op.SEND, True, 0, 1, 1000, bytes(800)), False)[:50]
    )
    await peer.stream.aclose()
    with trio.fail_after(5):
        completion = await victim.get_completion()
    assert (completion.wr_id, completion.status) == (1, Status.FLUSHED)
    assert victim.error is not None and victim.error.errno == errno.ECONNRESET
    assert str(victim.error) == "[Errno 104] peer closed the connection"
    await assert_listener_still_serves(listener, accepted)


async def test_a_cancelled_wait_loses_no_completion() -> None:
    client, server = await pair()
    server.post_recv(1, memoryview(bytearray(64)))
    client.post_send(2, b"ping")
    with trio.fail_after(5):
        while not server.core._completions:
            await trio.sleep(0.001)  # the reader task hands the send to the server's queue pair
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.get_completions()
    assert scope.cancelled_caught
    assert [c.wr_id for c in server.poll_completions()] == [1]
    await client.disconnect()
    await server.disconnect()


async def test_tasks_that_come_straight_back_do_not_wake_the_reader(mock_clock: trio.testing.MockClock) -> None:
    """A ping-pong's tasks take their completions and come straight back for more: they
    read the socket themselves, and the reader task sleeps through its grace instead of
    being woken each time one leaves.  (The clock stands still: the grace never ends.)"""
    client, server = await pair()
    steps: collections.Counter[str] = collections.Counter()

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps[task.name] += 1

    async def next_receive(qp: SoftQueuePair) -> None:
        while not any(c.opcode is Opcode.RECV for c in await qp.get_completions()):
            pass

    async def echo() -> None:
        for _ in range(200):
            await next_receive(server)
            server.post_recv(1, memoryview(bytearray(64)))
            server.post_send(2, b"pong", signaled=False)

    counter = CountSteps()
    server.post_recv(1, memoryview(bytearray(64)))
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(200):
                client.post_recv(1, memoryview(bytearray(64)))
                client.post_send(2, b"ping", signaled=False)
                await next_receive(client)
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert steps["smbdirect softiwarp reader"] <= 4  # both queue pairs' (before: one per message)
    async with trio.open_nursery() as nursery:  # together: each lingers for the other's FIN
        nursery.start_soon(client.disconnect)
        nursery.start_soon(server.disconnect)


async def test_a_batch_goes_out_in_one_write_when_it_ends() -> None:
    client, server = await pair()
    for i in range(3):
        server.post_recv(i, memoryview(bytearray(64)))
    with client.batch():
        for i in range(3):
            client.post_send(10 + i, bytes([i]) * 10, signaled=False)
        assert client.core.wants_to_send  # held until the block ends
    assert not client.core.wants_to_send
    received = []
    with trio.fail_after(5):
        while len(received) < 3:
            received += await server.get_completions()
    assert [c.wr_id for c in received] == [0, 1, 2]
    await client.disconnect()
    await server.disconnect()
