"""The sans-IO protocol: negotiation, credits, fragments, timers, termination."""

from __future__ import annotations

import errno
import random

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbdirect_socket import (
    DataTransferMessage,
    LocalProtocolError,
    NegotiateRequest,
    NegotiateResponse,
    Parameters,
    RemoteProtocolError,
    Role,
    SMBDirectProtocol,
    State,
)
from smbdirect_socket.constants import SMB_DIRECT_RESPONSE_REQUESTED
from smbdirect_socket.credits import INITIAL_RECEIVES
from smbdirect_socket.protocol import Connected, Disconnect, PostReceives, SendPDU, Terminated
from smbdirect_socket.testing import ProtocolPair, sent_messages


def connected_pair(client: Parameters | None = None, server: Parameters | None = None) -> ProtocolPair:
    pair = ProtocolPair(client, server)
    pair.start()
    pair.run()
    assert pair.client.state is State.CONNECTED
    assert pair.server.state is State.CONNECTED
    return pair


def events(protocol: SMBDirectProtocol) -> list[object]:
    found = []
    while (event := protocol.next_event()) is not None:
        found.append(event)
    return found


def drain(protocol: SMBDirectProtocol) -> bytes:
    return protocol.read(protocol.readable)


# ---- negotiation --------------------------------------------------------------


def test_handshake_with_linux_defaults() -> None:
    pair = connected_pair()
    for protocol in (pair.client, pair.server):
        [event] = events(protocol)
        assert isinstance(event, Connected)
        assert event.negotiated.max_send_size == 1364
        assert event.negotiated.max_receive_size == 1364
        assert event.negotiated.max_fragmented_send_size == 173910
        assert event.negotiated.max_fragmented_receive_size == 173910
    # Each side posts INITIAL_RECEIVES of the peer's requested 255 at first, and
    # one more for each message the peer sends: the server one more for the
    # client's initial grant (spent as cifs.ko does), which it does not answer
    # (handing back what a message without data took is not news).
    assert pair.client.posted_receives == INITIAL_RECEIVES == 16
    assert pair.server.posted_receives == INITIAL_RECEIVES + 1
    assert (pair.client.send_credits, pair.server.receive_credits) == (15, 15)
    assert (pair.server.send_credits, pair.client.receive_credits) == (16, 16)


def test_receives_are_posted_as_the_peer_sends() -> None:
    pair = connected_pair()
    client, server = pair.client, pair.server
    client.send_message(bytes(1364 * 100))  # 102 fragments of 1344 bytes
    pair.collect(client)
    sent = 0
    while sent < 1364 * 100:
        pair.run()
        sent += len(server.read(server.readable))
        pair.collect(server)
    # Each message the peer sent let one more receive be posted, up to its target.
    assert client.statistics.fragments_sent == 1 + 102  # its initial grant, then the data
    assert server.posted_receives == INITIAL_RECEIVES + client.statistics.fragments_sent
    assert client.posted_receives == INITIAL_RECEIVES + server.statistics.fragments_sent
    for _ in range(4):
        client.send_message(bytes(1364 * 100))
        pair.collect(client)
        pair.run()
        server.read(server.readable)
        pair.collect(server)
        pair.run()
    assert server.posted_receives == 255  # recv_credit_max, and the peer's target


def test_negotiate_request_is_what_cifs_sends() -> None:
    client = SMBDirectProtocol(Role.CLIENT)
    client.start(0.0)
    post, send = client.actions()
    assert post == PostReceives(1, 1364)  # the response's buffer comes first
    assert isinstance(send, SendPDU)
    assert send.data == bytes.fromhex("0001 0001 0000 ff00 54050000 54050000 56a70200")


def test_sizes_are_the_minimum_of_both_sides() -> None:
    client = Parameters(max_send_size=8192, max_recv_size=4096, max_fragmented_recv_size=1 << 20)
    server = Parameters(max_send_size=2048, max_recv_size=16384, max_read_write_size=1 << 23)
    pair = connected_pair(client, server)
    c = pair.client.negotiated
    s = pair.server.negotiated
    assert c is not None and s is not None
    assert (c.max_send_size, s.max_receive_size) == (8192, 8192)
    assert (s.max_send_size, c.max_receive_size) == (2048, 4096)
    assert s.max_fragmented_send_size == 1 << 20
    assert c.max_read_write_size == 1 << 23


def server_after(request: bytes) -> SMBDirectProtocol:
    server = SMBDirectProtocol(Role.SERVER)
    server.start(0.0)
    server.actions()
    server.receive(request, 0.0)
    return server


def assert_terminated(protocol: SMBDirectProtocol, message: str, code: int = errno.ECONNABORTED) -> None:
    assert protocol.state is State.CLOSED
    assert isinstance(protocol.error, RemoteProtocolError)
    assert str(protocol.error) == message
    assert protocol.error.errno == code
    assert isinstance(events(protocol)[-1], Terminated)


GOOD_REQUEST = NegotiateRequest(
    credits_requested=255, preferred_send_size=1364, max_receive_size=1364, max_fragmented_size=173910
)


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        (GOOD_REQUEST.pack()[:19], "NegotiateRequest.length: 19 bytes is shorter than the 20-byte minimum"),
        (attrs.evolve(GOOD_REQUEST, credits_requested=0).pack(), "NegotiateRequest.credits_requested: must not be 0"),
        (
            attrs.evolve(GOOD_REQUEST, max_receive_size=127).pack(),
            "NegotiateRequest.max_receive_size: 127 is below 128",
        ),
        (
            attrs.evolve(GOOD_REQUEST, max_fragmented_size=131071).pack(),
            "NegotiateRequest.max_fragmented_size: 131071 is below 131072",
        ),
    ],
)
def test_server_terminates_on_bad_request(request_bytes: bytes, message: str) -> None:
    server = server_after(request_bytes)
    assert_terminated(server, message)
    assert server.actions() == [Disconnect()]  # no response is sent


def test_server_answers_unsupported_version_then_terminates() -> None:
    server = server_after(attrs.evolve(GOOD_REQUEST, min_version=0x0200, max_version=0x0200).pack())
    assert_terminated(server, "NegotiateRequest.max_version: range 0x0200-0x0200 excludes 0x0100")
    send, disconnect = server.actions()
    assert isinstance(send, SendPDU) and disconnect == Disconnect()
    # Exactly what ksmbd answers: Status NOT_SUPPORTED, everything else zero.
    assert send.data == bytes.fromhex("0001 0001 0000 0000 0000 0000 bb0000c0") + bytes(16)


GOOD_RESPONSE = NegotiateResponse(
    status=0,
    credits_requested=255,
    credits_granted=254,
    max_read_write_size=1 << 23,
    preferred_send_size=1364,
    max_receive_size=1364,
    max_fragmented_size=173910,
)


def client_after(response: bytes) -> SMBDirectProtocol:
    client = SMBDirectProtocol(Role.CLIENT)
    client.start(0.0)
    client.actions()
    client.receive(response, 0.0)
    return client


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": 0xC00000BB}, "NegotiateResponse.status: 0xc00000bb is not STATUS_SUCCESS"),
        ({"negotiated_version": 0x0200}, "NegotiateResponse.negotiated_version: 0x0200 is not 0x0100"),
        ({"credits_requested": 0}, "NegotiateResponse.credits_requested: must not be 0"),
        ({"credits_granted": 0}, "NegotiateResponse.credits_granted: must not be 0"),
        ({"max_receive_size": 127}, "NegotiateResponse.max_receive_size: 127 is below 128"),
        ({"max_fragmented_size": 131071}, "NegotiateResponse.max_fragmented_size: 131071 is below 131072"),
        (
            {"preferred_send_size": 1365},
            "NegotiateResponse.preferred_send_size: 1365 exceeds our max receive size 1364",
        ),
    ],
)
def test_client_terminates_on_bad_response(changes: dict[str, int], message: str) -> None:
    client = client_after(attrs.evolve(GOOD_RESPONSE, **changes).pack())
    assert_terminated(client, message)
    assert client.actions() == [Disconnect()]


def test_client_terminates_on_short_response() -> None:
    client = client_after(GOOD_RESPONSE.pack()[:31])
    assert_terminated(client, "NegotiateResponse.length: 31 bytes is shorter than the 32-byte minimum")


def test_client_accepts_ksmbd_response() -> None:
    client = client_after(bytes.fromhex("0001 0001 0001 0000 ff00 fe00 00000000 00008000 54050000 54050000 56a70200"))
    assert client.state is State.CONNECTED
    client.actions()  # what the response lets us send is worked out here
    assert client.send_credits == 253  # one went on the initial grant
    assert client.negotiated is not None and client.negotiated.max_read_write_size == 8 * 1024 * 1024


def test_negotiate_timeout() -> None:
    pair = ProtocolPair()
    pair.client.start(0.0)
    pair.collect(pair.client)
    assert pair.client.next_deadline() == 120.0
    pair.advance(119.9)
    assert pair.client.state is State.NEGOTIATING
    pair.advance(0.1)
    assert_terminated(pair.client, "SMB-Direct negotiation timed out", errno.ETIMEDOUT)


# ---- data transfer ----------------------------------------------------------------


def test_message_is_fragmented_and_reassembled() -> None:
    pair = connected_pair()
    payload = random.Random(1).randbytes(10_000)
    pair.client.send_message(payload)
    sends = sent_messages(pair.client.actions())
    fragments = [DataTransferMessage.unpack(s.data) for s in sends]
    # 1364-byte messages carry 1340 bytes after the 24-byte header.
    assert [f.data_length for f in fragments] == [1340] * 7 + [620]
    assert [f.remaining_data_length for f in fragments] == [10_000 - 1340 * (i + 1) for i in range(7)] + [0]
    assert all(len(s.data) <= 1364 for s in sends)
    for send in sends:
        pair.side(pair.server).in_flight.append(send.data)
    pair.run()
    assert pair.server.message_start() == 10_000
    assert pair.server.consume_message_start() == 10_000
    assert pair.server.message_start() is None
    assert drain(pair.server) == payload


def test_local_misuse_errors() -> None:
    pair = ProtocolPair()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(b"x")
    assert info.value.errno == errno.ENOTCONN
    pair.start()
    pair.run()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(bytes(173911))
    assert info.value.errno == errno.EMSGSIZE
    assert str(info.value) == ("message of 173911 bytes exceeds the negotiated max fragmented send size 173910")
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(b"")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(LocalProtocolError) as info:
        pair.client.start(0.0)
    assert info.value.errno == errno.EISCONN
    pair.client.send_message(bytes(173910))  # the maximum is fine
    pair.client.close()
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_message(b"x")
    assert info.value.errno == errno.EPIPE
    assert pair.client.actions()[-1] == Disconnect()


def data_message(**changes: object) -> bytes:
    fields: dict[str, object] = {"credits_requested": 255, "credits_granted": 0, "data": b"abc"}
    fields.update(changes)
    return DataTransferMessage(**fields).pack()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pdu", "message"),
    [
        (bytes(19), "DataTransferMessage.length: 19 bytes is shorter than the 20-byte minimum"),
        (data_message(credits_requested=0), "DataTransferMessage.credits_requested: must not be 0"),
        (
            data_message()[:12] + (20).to_bytes(4, "little") + data_message()[16:],
            "DataTransferMessage.data_offset: 20 is not 8-byte aligned",
        ),
        (
            data_message()[:-1],
            "DataTransferMessage.data_length: data_offset 24 + data_length 3 exceeds the 26-byte message",
        ),
        (
            data_message(remaining_data_length=173908),
            "DataTransferMessage.remaining_data_length: message of 173911 bytes exceeds the max fragmented "
            "receive size 173910",
        ),
        (
            data_message(data=bytes(1341)),
            "DataTransferMessage.length: 1365-byte message exceeds the max receive size 1364",
        ),
        (
            data_message(credits_granted=0xFFFF),  # on the 16 the server granted (INITIAL_RECEIVES)
            "DataTransferMessage.credits_granted: peer granted 65551 credits in all",
        ),
    ],
)
def test_data_transfer_rules_terminate(pdu: bytes, message: str) -> None:
    pair = connected_pair()
    other = connected_pair()  # an unrelated connection in the same process
    events(pair.server)
    pair.server.receive(pdu, 0.0)
    assert_terminated(pair.server, message)
    assert pair.server.actions()[-1] == Disconnect()
    other.client.send_message(b"still fine")
    other.collect(other.client)
    other.run()
    assert drain(other.server) == b"still fine"


def test_fragment_that_does_not_continue_its_message() -> None:
    pair = connected_pair()
    events(pair.server)
    pair.server.receive(data_message(remaining_data_length=10), 0.0)
    pair.server.receive(data_message(remaining_data_length=0), 0.0)
    assert_terminated(
        pair.server,
        "DataTransferMessage.remaining_data_length: 0 + data_length 3 does not continue the message (10 bytes due)",
    )


def test_peer_sending_without_credit() -> None:
    pair = connected_pair(server=Parameters(recv_credit_max=4))
    events(pair.server)
    # The client holds 4 credits; a fifth message is a violation, even with a buffer posted.
    for _ in range(4):
        pair.server.receive(data_message(), 0.0)
        pair.server.actions()  # the grant of the fourth credit goes out with the first
    assert pair.server.state is State.CONNECTED
    pair.server._credits.posted += 1  # a buffer is there: only the credit is missing
    pair.server.receive(data_message(), 0.0)
    assert_terminated(pair.server, "peer sent a message without holding a credit")


def test_message_with_no_receive_posted() -> None:
    server = SMBDirectProtocol(Role.SERVER)
    server.receive(GOOD_REQUEST.pack(), 0.0)
    assert_terminated(server, "message arrived with no receive posted")


def test_a_batch_of_receives_is_applied_up_to_its_first_fault() -> None:
    pair = connected_pair()
    events(pair.server)
    batch = [data_message(data=b"abc", remaining_data_length=3), data_message(data=b"def")]
    pair.server.receive_many([*batch, data_message(credits_requested=0), data_message()], 0.0)
    assert_terminated(pair.server, "DataTransferMessage.credits_requested: must not be 0")
    assert pair.server.statistics.messages_received == 1
    assert pair.server.message_start() == 6
    assert drain(pair.server) == b"abcdef"


def test_a_batch_longer_than_the_receives_posted() -> None:
    pair = connected_pair(server=Parameters(recv_credit_max=4))
    events(pair.server)
    posted = pair.server.posted_receives
    pair.server._credits.granted = posted  # the peer holds a credit for each: only the buffer is missing
    pair.server.receive_many([data_message(data=bytes([i])) for i in range(posted + 1)], 0.0)
    assert_terminated(pair.server, "message arrived with no receive posted")
    assert drain(pair.server) == bytes(range(posted))


def test_a_batch_may_start_with_the_negotiate_request() -> None:
    server = SMBDirectProtocol(Role.SERVER)
    server.start(0.0)
    server.actions()
    # The data messages spend credits the negotiate response grants.
    server.receive_many([GOOD_REQUEST.pack(), data_message(), data_message(data=b"def")], 0.0)
    assert server.state is State.CONNECTED
    assert drain(server) == b"abcdef"
    assert server.statistics.fragments_received == 2


def test_last_credit_never_carries_data() -> None:
    pair = connected_pair(Parameters(send_credit_target=3), Parameters(recv_credit_max=3))
    client, server = pair.client, pair.server
    assert client.send_credits == 2  # 3 granted, one spent on the initial grant
    client.send_message(b"a")
    sends = sent_messages(client.actions())
    assert len(sends) == 1 and client.send_credits == 1
    # The last credit is kept for a grant without data: one that data took
    # would leave the server, its buffers full, nothing to grant the credit
    # it needs to answer with.
    client.send_message(b"b")
    assert client.actions() == []
    assert not client.can_send
    pair.side(server).in_flight.extend(s.data for s in sends)
    pair.run()
    assert client.pending_send_bytes == 1  # "a" is unread: the server has nothing new to grant
    assert drain(server) == b"a"
    pair.collect(server)  # its buffer, posted again, is granted
    pair.run()
    assert drain(server) == b"b"


def test_reader_that_stops_reading_stalls_the_sender() -> None:
    pair = connected_pair(server=Parameters(recv_credit_max=8))
    for _ in range(40):
        pair.client.send_message(b"m" * 1000)
        pair.collect(pair.client)
    pair.run()
    # The server holds 6 buffers with unread data and grants nothing more (the
    # one it could grant only took the client's grant); the client keeps its
    # last credit, which data never spends.
    assert pair.server.held_receives == 6
    assert pair.server.readable == 6000
    assert pair.client.send_credits == 1
    assert pair.client.pending_send_bytes == 34_000
    data = b""
    while pair.client.pending_send_bytes or pair.server.readable:
        data += pair.server.read(3000)
        pair.collect(pair.server)
        pair.run()
    assert data == b"m" * 40_000


def test_response_requested_gets_a_prompt_answer() -> None:
    pair = connected_pair()
    events(pair.client)
    pair.server.receive(data_message(flags=SMB_DIRECT_RESPONSE_REQUESTED, data=b""), 0.0)
    [send] = sent_messages(pair.server.actions())
    answer = DataTransferMessage.unpack(send.data)
    assert answer.data_length == 0 and answer.flags == 0


# ---- keepalive ------------------------------------------------------------------------


def test_idle_connection_sends_keepalives_and_stays_up() -> None:
    pair = connected_pair()
    for _ in range(5):
        pair.advance(120.0)
        pair.run()
    assert pair.client.state is State.CONNECTED and pair.server.state is State.CONNECTED
    assert pair.client.statistics.keepalives_sent >= 2
    assert pair.server.statistics.keepalives_sent >= 2


def test_keepalive_timeout_when_peer_is_silent() -> None:
    pair = connected_pair()
    events(pair.client)
    pair.advance(119.0)
    assert pair.client.state is State.CONNECTED
    pair.advance(1.0)
    sends = [a for a in pair.client.actions()] + list(pair.side(pair.server).in_flight)
    pair.side(pair.server).in_flight.clear()  # the peer is gone: nothing answers
    keepalive = DataTransferMessage.unpack(sends[-1] if isinstance(sends[-1], bytes) else sends[-1].data)
    assert keepalive.flags == SMB_DIRECT_RESPONSE_REQUESTED
    assert pair.client.next_deadline() == 125.0
    pair.advance(4.9)
    assert pair.client.state is State.CONNECTED
    pair.advance(0.1)
    assert_terminated(pair.client, "peer did not answer a keepalive", errno.ETIMEDOUT)


def test_keepalive_disabled() -> None:
    pair = connected_pair(Parameters(keepalive_interval_msec=0))
    assert pair.client.next_deadline() is None


# ---- random traffic ---------------------------------------------------------------------

sizes = st.sampled_from([128, 200, 1364, 4096, 8192])


@st.composite
def parameter_sets(draw: st.DrawFn) -> Parameters:
    return Parameters(
        recv_credit_max=draw(st.integers(3, 40)),
        send_credit_target=draw(st.integers(3, 40)),
        max_send_size=draw(sizes),
        max_recv_size=draw(sizes),
        max_fragmented_recv_size=draw(st.sampled_from([131072, 173910, 1 << 20])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parameter_sets(), parameter_sets(), st.integers(0, 2**32 - 1))
def test_random_traffic_arrives_intact_in_order_once(client_p: Parameters, server_p: Parameters, seed: int) -> None:
    rng = random.Random(seed)
    pair = connected_pair(client_p, server_p)
    sent: dict[int, list[bytes]] = {id(pair.client): [], id(pair.server): []}
    received: dict[int, bytearray] = {id(pair.client): bytearray(), id(pair.server): bytearray()}
    for _ in range(rng.randrange(5, 60)):
        sender = rng.choice([pair.client, pair.server])
        negotiated = sender.negotiated
        assert negotiated is not None
        size = rng.choice([1, 2, 100, 1340, 5000, rng.randrange(1, negotiated.max_fragmented_send_size + 1)])
        payload = rng.randbytes(size)
        sender.send_message(payload)
        sent[id(sender)].append(payload)
        pair.collect(sender)
        # Random partial delivery and partial reads.
        for _ in range(rng.randrange(0, 30)):
            side = rng.choice([pair.client, pair.server])
            pair.deliver_one(side)
            if rng.random() < 0.3:
                received[id(side)] += side.read(rng.randrange(1, 200_000))
                pair.collect(side)
            for protocol in (pair.client, pair.server):
                assert protocol.send_credits >= 0
                assert 0 <= protocol.receive_credits <= protocol.posted_receives
                assert protocol.posted_receives + protocol.held_receives <= protocol.parameters.recv_credit_max
    # Drain: keep delivering and reading until nothing moves (no deadlock).  Each
    # round moves at least one fragment, so the bound is the most fragments that
    # can be queued (60 messages of at most 1 MiB in fragments of at least 104 bytes).
    for _ in range(60 * (1 << 20) // 104 + 1):
        moved = pair.run()
        for protocol in (pair.client, pair.server):
            if protocol.readable:
                received[id(protocol)] += drain(protocol)
                pair.collect(protocol)
                moved += 1
        if not moved:
            break
    assert pair.client.state is State.CONNECTED and pair.server.state is State.CONNECTED
    assert bytes(received[id(pair.server)]) == b"".join(sent[id(pair.client)])
    assert bytes(received[id(pair.client)]) == b"".join(sent[id(pair.server)])
    assert pair.client.pending_send_bytes == 0 and pair.server.pending_send_bytes == 0
    # An idle connection settles: no credit ping-pong.
    assert pair.run() == 0
