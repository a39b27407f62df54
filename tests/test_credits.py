"""The credit policy on its own, and its rules checked on the wire of two connected protocols.

The rules are [MS-SMBD] 3.1.5.8-3.1.5.10 as Linux applies them: a message
needs a credit, the last one never carries data and only goes with a grant
(stricter than Linux, see credits.py), a grant never promises
more receives than are posted, and a single credit is not granted on its own
to a peer that is not stalled.
"""

from __future__ import annotations

import copy
import random
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from smbdirect_socket import DataTransferMessage, Parameters, RemoteProtocolError, State
from smbdirect_socket.constants import SMB_DIRECT_RESPONSE_REQUESTED
from smbdirect_socket.credits import INITIAL_RECEIVES, MAX_CREDITS, Credits
from smbdirect_socket.pdu import ReceivedBatch, ReceiveLimits, check_data_transfers
from smbdirect_socket.protocol import Action, PostReceives, SendFragments, SendPDU, SMBDirectProtocol
from smbdirect_socket.testing import ProtocolPair


def credits(send: int = 0, posted: int = 0, granted: int = 0, target: int = 10, maximum: int = 255) -> Credits:
    result = Credits(maximum, 255)
    result.send, result.posted, result.granted, result.target = send, posted, granted, target
    result.window = maximum  # a connection past its start
    return result


def arrive(c: Credits, *messages: DataTransferMessage) -> ReceivedBatch:
    """The peer's messages fill posted receives and are checked as one batch, as the protocol does."""
    pdus = [m.pack() for m in messages]
    state = c.receiving(0)
    limits = ReceiveLimits(1 << 20, 1 << 20, c.recv_credit_max)
    batch = check_data_transfers(pdus, bytearray(sum(map(len, pdus))), state, limits)
    c.peer_messages(state, batch.applied, batch.applied - len(batch.totals))
    return batch


def empty(c: Credits) -> DataTransferMessage:
    return DataTransferMessage(c.target, 0)


def data(c: Credits) -> DataTransferMessage:
    return DataTransferMessage(c.target, 0, data=b"x")


# ---- sending ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "posted", "granted", "expected"),
    [
        (0, 5, 0, 0),  # no credit: nothing goes
        (1, 5, 5, 0),  # the last credit, nothing to grant: kept
        (1, 5, 4, 0),  # the last credit is kept for a grant without data
        (2, 5, 5, 1),  # all but the last
        (10, 5, 0, 9),  # all but the last: the first grants, the others may not
    ],
)
def test_sendable(send: int, posted: int, granted: int, expected: int) -> None:
    assert credits(send, posted, granted).sendable() == expected


def test_take_spends_a_batch_and_the_first_grants_everything() -> None:
    c = credits(send=5, posted=7, granted=4)
    assert c.take(10) == (4, 3)
    assert (c.send, c.granted) == (1, 7)
    assert c.take(1) == (0, 0)  # the last credit never carries data
    assert c.take_empty() is None  # nor goes without a grant
    c.refill(held=0)  # three more receives posted (target 10)
    assert c.take(1) == (0, 0)
    assert c.take_empty() == 3 and c.send == 0
    assert c.take_empty() is None


def test_take_fewer_than_allowed() -> None:
    c = credits(send=10, posted=3)
    assert c.take(2) == (2, 3)
    assert c.send == 8


def test_grant_without_a_credit() -> None:
    c = credits(send=0, posted=6, granted=1)
    assert c.grant() == 5
    assert (c.send, c.granted) == (0, 6)


# ---- posting --------------------------------------------------------------------


def test_refill_up_to_the_target_less_the_held_buffers() -> None:
    c = credits(posted=2, target=10, maximum=12)
    assert c.refill(held=0) == 8 and c.posted == 10
    assert c.refill(held=0) == 0
    c = credits(posted=2, target=10, maximum=12)
    assert c.refill(held=7) == 3 and c.posted == 5  # 12 buffers at most, 7 hold unread data
    assert credits(posted=9, target=4).refill(held=0) == 0  # a lower target leaves the extra posted


def test_receives_are_posted_as_the_peer_uses_them() -> None:
    c = Credits(255, 255)
    c.target = 255
    assert c.refill(held=0) == INITIAL_RECEIVES  # not the whole target at once
    assert c.grant() == INITIAL_RECEIVES
    arrive(c, *[data(c)] * 10)  # each message the peer sends lets one more be posted
    assert c.refill(held=10) == 20 and c.posted == INITIAL_RECEIVES + 10
    assert c.refill(held=0) == 0  # reading frees buffers, not room in the window
    for _ in range(30):
        arrive(c, *[empty(c)] * c.granted)
        c.refill(held=0)
        c.grant()
    assert c.window == 255 == c.posted  # never past recv_credit_max


def test_a_refill_is_worth_a_message_at_a_quarter_of_the_window() -> None:
    c = credits(posted=16, granted=14, target=255)
    c.window = 16
    assert c.grant_due(stalled=False) is False  # the peer holds 14 of the 16 it may
    c.granted = 4
    assert c.grant_due(stalled=False) is True  # a quarter of the window


def test_a_reader_behind_refills_at_a_quarter_of_what_it_can_post() -> None:
    # 200 buffers hold unread data: 55 can be posted, and the peer holding 51 of
    # them is not short; granted three at a time, each read would cost a message.
    c = credits(posted=54, granted=51, target=255)
    assert c.grant_due(stalled=False, held=200) is False
    c.granted = 13  # a quarter of the 55
    assert c.grant_due(stalled=False, held=200) is True
    c.granted = 51
    assert c.grant_due(stalled=False, held=0) is True  # all read: a quarter of 255 is 63


def test_a_stalled_peer_is_granted_in_bursts_while_data_waits_to_be_read() -> None:
    c = credits(posted=4, granted=1, target=255)
    assert c.grant_due(stalled=False, held=248) is False  # three credits, a message a read
    assert c.grant_due(stalled=False, held=0) is True  # all read: the reader waits for more
    c.posted = 64
    assert c.grant_due(stalled=False, held=184) is True  # a quarter of the window


def test_before_negotiation_one_receive() -> None:
    c = Credits(255, 255)
    assert c.refill(held=0) == 1
    assert c.sendable() == 0


# ---- credit-only messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("posted", "granted", "target", "due"),
    [
        (5, 5, 20, False),  # nothing to grant
        (5, 4, 20, False),  # one credit to a peer holding 4: wait for data to carry it
        (5, 1, 20, True),  # the peer holds one credit: it may be stalled
        (5, 0, 20, True),
        (7, 5, 20, True),  # two or more to a peer at a quarter of its target
        (8, 6, 20, False),  # two to a peer above a quarter of its target (6 > 20 // 4)
        (20, 5, 20, True),
    ],
)
def test_grant_due(posted: int, granted: int, target: int, due: bool) -> None:
    assert credits(send=3, posted=posted, granted=granted, target=target).grant_due(stalled=False) is due


def test_handing_back_what_messages_without_data_took_is_not_news() -> None:
    c = credits(send=1, posted=3, granted=3, target=3, maximum=3)
    arrive(c, empty(c), empty(c))  # the peer holds one credit and granted us none
    c.refill(held=0)
    assert c.ungranted == 2 and not c.grant_due(stalled=False)  # else two such peers would never stop
    arrive(c, data(c))
    c.refill(held=0)  # its data was read: that buffer is news
    assert c.grant_due(stalled=False)


def test_a_reader_that_read_everything_hands_back_to_a_peer_short_of_credits() -> None:
    # The peer's messages without data took two of our buffers; it holds one credit,
    # which its data may not spend, and has nothing to grant us (we hold three).
    c = credits(send=3, posted=3, granted=1, target=3)
    c.returned = 2
    assert c.grant_due(stalled=False, held=0)  # else its data would wait for ever
    assert not c.grant_due(stalled=False, held=1)  # a reader that stopped: no exchange of hand-backs
    c.send = 1
    assert not c.grant_due(stalled=False, held=0)  # our last credit: the peer may hold it back too


def test_a_stalled_sender_spends_its_last_credit_on_a_grant() -> None:
    # Data waits for our last credit and the peer holds none: only our grant
    # lets it send the grant we wait for (an echo whose server reads after
    # its writes, with every buffer of the server holding unread data).
    c = credits(send=1, posted=1, granted=1, target=3, maximum=3)
    arrive(c, empty(c))
    c.refill(held=2)
    assert c.granted == 0 and c.ungranted == 1
    assert not c.grant_due(stalled=False)  # our last credit is not spent on handing back alone
    assert c.grant_due(stalled=True)
    assert c.take(1) == (0, 0) and c.take_empty() == 1 and c.send == 0


def test_a_peer_with_no_credit_is_always_granted() -> None:
    c = credits(send=3, posted=1, granted=1, target=255)
    arrive(c, empty(c))
    c.refill(held=254)
    assert c.granted == 0 and c.grant_due(stalled=False)  # else a keepalive could never be answered


# ---- the peer's side -------------------------------------------------------------------


def test_receive_with_none_posted() -> None:
    c = credits(posted=0)
    with pytest.raises(RemoteProtocolError, match=r"^message arrived with no receive posted$"):
        c.receive_completed()


def test_peer_sending_without_a_credit() -> None:
    c = credits(posted=3, granted=1)
    batch = arrive(c, data(c), data(c))
    assert batch.applied == 1 and c.granted == 0
    assert isinstance(batch.error, RemoteProtocolError)
    assert str(batch.error) == "peer sent a message without holding a credit"


def test_peer_request_is_clamped_and_grants_add_up() -> None:
    c = credits(send=2, maximum=8)
    c.peer_credits(500, 3)
    assert (c.target, c.send) == (8, 5)
    c.peer_credits(0, 0)
    assert c.target == 1


def test_peer_granting_beyond_a_u16() -> None:
    c = credits(send=MAX_CREDITS - 2)
    c.peer_credits(1, 2)
    with pytest.raises(
        RemoteProtocolError, match=r"^DataTransferMessage.credits_granted: peer granted 65536 credits in all$"
    ):
        c.peer_credits(1, 1)


# ---- properties of the policy ---------------------------------------------------------------


class CreditMachine(RuleBasedStateMachine):
    """One side's credits under any order of peer messages, reads and sends."""

    @initialize(maximum=st.integers(3, 40), send=st.integers(0, 40))
    def start(self, maximum: int, send: int) -> None:
        self.credits = Credits(maximum, 255)
        self.credits.send = send
        self.held = 0  # receives filled by data the application has not read
        self.credits.refill(self.held)

    @precondition(lambda self: self.credits.granted > 0)
    @rule(requested=st.integers(1, 0xFFFF), granted=st.integers(0, 40), data=st.booleans())
    def peer_sends(self, requested: int, granted: int, data: bool) -> None:
        c = self.credits
        message = DataTransferMessage(requested, granted, data=b"x" if data else b"")
        assert arrive(c, message).error is None
        self.held += data

    @precondition(lambda self: self.held > 0)
    @rule(count=st.integers(1, 40))
    def application_reads(self, count: int) -> None:
        self.held -= min(count, self.held)

    @rule()
    def refill(self) -> None:
        self.credits.refill(self.held)

    @rule(fragments=st.integers(0, 100))
    def send(self, fragments: int) -> None:
        c = self.credits
        before = copy.copy(c)
        count, grant = c.take(fragments)
        assert 0 <= count <= fragments
        assert count <= before.send  # never send without a credit
        assert c.send >= 1 or not count  # data never spends the last credit
        assert grant == (before.ungranted if count else 0)
        assert count == min(fragments, max(before.send - 1, 0))  # as many as that rule allows
        # One call for N fragments is the same as N calls for one.
        one_by_one = copy.copy(before)
        singles = [one_by_one.take(1) for _ in range(fragments)]
        assert sum(n for n, _ in singles) == count
        assert sum(g for _, g in singles) == grant
        assert one_by_one.send == c.send and one_by_one.granted == c.granted

    @rule(stalled=st.booleans())
    def credit_only_message(self, stalled: bool) -> None:
        c = self.credits
        if c.grant_due(stalled, self.held):
            if c.ungranted == 1:
                assert c.granted <= 1  # a lone credit only to a peer that may be stalled
            if c.ungranted >= 2 and c.granted > 1:
                # Otherwise only a refill is worth a message: a quarter of what can be posted.
                assert c.granted <= min(c.target, c.recv_credit_max - self.held) // 4
            if c.granted == 1 and self.held:  # a stalled peer, while data waits to be read
                assert c.ungranted - c.returned >= min(c.target, c.window) // 4
            before = c.send
            grant = c.take_empty()
            assert (grant is None) == (before == 0)  # a due grant goes whenever a credit is left
            assert grant is None or grant > 0

    @invariant()
    def counters(self) -> None:
        c = self.credits
        assert c.send >= 0
        assert 0 <= c.granted <= c.posted  # never grant more than is posted
        assert c.posted + self.held <= c.recv_credit_max
        assert 1 <= c.target <= c.recv_credit_max


TestCreditMachine = CreditMachine.TestCase
TestCreditMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# ---- the rules on the wire --------------------------------------------------------------


class _Book:
    """What the wire says about one side: credits it holds, receives it posted, credits it granted."""

    def __init__(self) -> None:
        self.sent = 0  # messages sent, the negotiate message first
        self.received = 0
        self.credits = 0  # send credits, from the grants it received
        self.posted = 0  # receives posted and not yet filled
        self.outstanding = 0  # credits granted to the peer and not yet used
        self.answer_owed = False  # the peer set RESPONSE_REQUESTED


class AuditedPair(ProtocolPair):
    """A protocol pair that checks every message against [MS-SMBD]'s credit rules as it passes."""

    def __init__(self, client: Parameters, server: Parameters) -> None:
        super().__init__(client, server)
        self.books = {id(self.client): _Book(), id(self.server): _Book()}
        self.credit_only = 0

    @classmethod
    def connected(cls, client: Parameters, server: Parameters) -> AuditedPair:
        """A pair past its negotiation, every message audited from the first."""
        pair = cls(client, server)
        pair.start()
        pair.run()
        return pair

    def carry_out(self, protocol: SMBDirectProtocol, actions: list[Action]) -> None:
        book = self.books[id(protocol)]
        for action in actions:
            if isinstance(action, PostReceives):
                book.posted += action.count
            elif isinstance(action, SendPDU) and protocol.state is not State.CLOSED:
                self._check_send(protocol, book, action.data)
            elif isinstance(action, SendFragments) and protocol.state is not State.CLOSED:
                for data in action.datas:
                    self._check_send(protocol, book, data)
        super().carry_out(protocol, actions)

    def _check_send(self, protocol: SMBDirectProtocol, book: _Book, pdu: bytes) -> None:
        first = book.sent == 0
        book.sent += 1
        if first:  # negotiate: spends no credit; the server's response grants
            granted = struct.unpack_from("<H", pdu, 10)[0] if protocol is self.server else 0
        else:
            message = DataTransferMessage.unpack(pdu)
            assert book.credits >= 1, "a message sent without a credit"
            if book.credits == 1:
                assert message.credits_granted > 0, "the last credit spent on a message that grants none"
                assert not message.data_length, "the last credit spent on data"
            assert message.credits_requested == protocol.parameters.send_credit_target
            if not message.data_length and not message.flags and not book.answer_owed:
                self.credit_only += 1
                if message.credits_granted == 1:
                    assert book.outstanding <= 1, "a lone credit granted to a peer that is not stalled"
            book.answer_owed = False
            book.credits -= 1
            granted = message.credits_granted
        book.outstanding += granted
        assert book.outstanding <= book.posted, "credits granted beyond the receives posted"

    def hand_over(self, protocol: SMBDirectProtocol, pdus: list[bytes]) -> None:
        book = self.books[id(protocol)]
        for pdu in pdus:
            first = book.received == 0
            book.received += 1
            assert book.posted >= 1, "a message arrived with no receive posted"
            book.posted -= 1
            if first:
                book.credits += struct.unpack_from("<H", pdu, 10)[0] if protocol is self.client else 0
            else:
                message = DataTransferMessage.unpack(pdu)
                book.credits += message.credits_granted
                book.outstanding -= 1
                assert book.outstanding >= 0, "the peer sent a message without a credit"
                book.answer_owed |= bool(message.flags & SMB_DIRECT_RESPONSE_REQUESTED)
        super().hand_over(protocol, pdus)


tight = st.builds(
    Parameters,
    recv_credit_max=st.integers(3, 40),  # past INITIAL_RECEIVES: the window grows too
    send_credit_target=st.integers(3, 12),
    max_send_size=st.sampled_from([128, 1364]),
    max_recv_size=st.sampled_from([1364]),
)


@settings(max_examples=80, deadline=None)
@given(tight, tight, st.integers(0, 2**32 - 1))
@example(  # once a deadlock: see test_a_reader_that_read_everything_hands_back_to_a_peer_short_of_credits
    Parameters(recv_credit_max=21, send_credit_target=3, max_send_size=1364, max_recv_size=1364),
    Parameters(recv_credit_max=3, send_credit_target=3, max_send_size=1364, max_recv_size=1364),
    37,
)
def test_wire_follows_the_credit_rules_and_never_deadlocks(
    client_p: Parameters, server_p: Parameters, seed: int
) -> None:
    rng = random.Random(seed)
    pair = AuditedPair.connected(client_p, server_p)
    sides = (pair.client, pair.server)
    expected = {id(p): bytearray() for p in sides}
    got = {id(p): bytearray() for p in sides}

    def read(side: SMBDirectProtocol, nbytes: int) -> None:
        got[id(side)] += side.read(nbytes)
        pair.collect(side)

    def deliver(side: SMBDirectProtocol) -> bool:
        return pair.deliver_one(side)

    def settle() -> None:
        for _ in range(100_000):
            if not any([deliver(pair.client), deliver(pair.server)]):
                return
        raise AssertionError("still delivering after 100000 rounds: a ping-pong")

    for _ in range(rng.randrange(1, 40)):
        action = rng.random()
        side = rng.choice(sides)
        if action < 0.4:
            payload = rng.randbytes(rng.choice([1, 100, 2000, 20000]))
            side.send_message(payload)
            expected[id(pair.peer(side))] += payload
            pair.collect(side)
        elif action < 0.8:
            deliver(side)
        elif action < 0.95:
            read(side, rng.randrange(1, 30000))
        else:  # idle: a keepalive, answered before its timeout
            # (Applications that stop reading for the keepalive interval lose
            # the connection, as on Linux, when no side can grant the other a
            # credit to answer with.)
            for reader in sides:
                read(reader, reader.readable)
            settle()
            pair.advance(120.0)
            settle()
    # No deadlock: an application that reads everything gets everything.
    while any(side.readable for side in sides) or any(pair.side(side).in_flight for side in sides):
        for side in sides:
            read(side, side.readable)
        settle()
    assert pair.credit_only > 0  # the credit-only path was taken and checked
    for side in sides:
        assert side.state is State.CONNECTED
        assert got[id(side)] == expected[id(side)]
        assert side.pending_send_bytes == 0


@settings(max_examples=80, deadline=None)
@given(tight, tight, st.integers(0, 2**32 - 1))
def test_an_echo_that_reads_only_after_its_writes_never_deadlocks(
    client_p: Parameters, server_p: Parameters, seed: int
) -> None:
    # The server reads only once its last echo is sent, as an asyncio echo does
    # (write, then drain, then read), so its buffers fill with unread data while
    # its own writes wait for credits.  The client reads everything as it comes
    # while it keeps writing.  TCP's window updates cost nothing; a grant costs
    # a credit, and the server's writes wait for the client's grants.
    rng = random.Random(seed)
    pair = AuditedPair.connected(client_p, server_p)
    client, server = pair.client, pair.server
    sent = bytearray(rng.randbytes(rng.choice([20_000, 100_000, 300_000])))
    written = 0
    echoed = bytearray()
    for _ in range(1_000_000):
        if written < len(sent):
            size = rng.choice([100, 2000, 20000])
            client.send_message(bytes(sent[written : written + size]))
            written += len(sent[written : written + size])
            pair.collect(client)
        echoed += client.read(client.readable)
        pair.collect(client)
        if not server.pending_send_bytes and server.readable:
            server.send_message(server.read(min(server.readable, 65536)))
            pair.collect(server)
        moved = pair.deliver(client, rng.randrange(1, 8)) + pair.deliver(server, rng.randrange(1, 8))
        if len(echoed) == len(sent):
            break
        idle = not moved and written == len(sent) and not client.readable
        if idle and (not server.readable or server.pending_send_bytes):
            raise AssertionError(
                f"deadlock: client {client._credits} pending {client.pending_send_bytes}, "
                f"server {server._credits} pending {server.pending_send_bytes} held {server.held_receives}"
            )
    assert echoed == sent
    for side in (client, server):
        assert side.state is State.CONNECTED


def test_keepalive_between_two_peers_that_stopped_reading() -> None:
    # Each side holds 253 of its 255 buffers with unread data, so it posts two
    # and the peer holds at most two credits: "may be stalled" on both sides.
    # A keepalive and its answer must not start an endless exchange of
    # single-credit grants (handing back what a message without data took is
    # not news), and reading afterwards must get the data moving.
    pair = ProtocolPair()
    pair.start()
    pair.run()
    for side in (pair.client, pair.server):
        for _ in range(253):
            side.send_message(b"x")
            pair.collect(side)
    pair.run()
    assert pair.client.held_receives == pair.server.held_receives == 253
    pair.advance(120.0)
    pair.run(limit=10_000)
    for side in (pair.client, pair.server):
        assert side.state is State.CONNECTED
        side.send_message(b"after")
        pair.collect(side)
    pair.run()
    got = {id(side): b"" for side in (pair.client, pair.server)}
    for _ in range(10):
        for side in (pair.client, pair.server):
            got[id(side)] += side.read(side.readable)
            pair.collect(side)
        pair.run()
    assert set(got.values()) == {b"x" * 253 + b"after"}
