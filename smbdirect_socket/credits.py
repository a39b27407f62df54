"""The SMB-Direct credit policy: who may send, how many receives to post, what to grant.

SMB-Direct has no flow-control window in bytes: it counts messages.  Each
side posts receive buffers and *grants* the peer one credit per buffer; every
message, data or not, spends one credit of the sender's, and lands in one
posted buffer of the receiver's ([MS-SMBD] 3.1.1.1, 3.1.5.1, 3.1.5.8).  A
message sent without a buffer posted for it breaks the queue pair (RDMA's
receiver-not-ready), so these counters are the whole of the protocol's flow
control.  :class:`Credits` keeps them for one connection and answers the two
questions the sending code asks, for a batch of fragments at once: *how many
may go now*, and *what does the first of them grant*.

The counters
    ``send``
        credits we hold: messages we may still send.
    ``posted``
        receive buffers posted and not yet filled.
    ``granted``
        credits the peer holds; never more than ``posted`` (a grant promises
        a buffer), so ``posted - granted`` (:attr:`~Credits.ungranted`) is
        what the next message can grant.
    ``target``
        the peer's latest CreditsRequested, clamped to [1,
        ``recv_credit_max``] as Linux does; 1 before negotiation, which is
        the one receive the negotiate message needs.

The decisions, and why
    Sending: a message needs a credit, and the **last** credit never carries
    data: it only goes with a message without data that grants credits.
    Linux lets the last credit carry data as long as the message grants
    ([MS-SMBD] 3.1.5.1; a separate gate after a hang against Windows), but
    that still deadlocks an echo whose server reads only after its writes:
    the client's last credit brings data and its grant into the server's
    last free buffer, the server then holds one credit and nothing to grant
    (every buffer holds unread data), and the client waits for the credit it
    needs to grant more.  TCP's window updates cost nothing; here an update
    costs a credit, so one is kept for it.  Hence :meth:`~Credits.sendable`
    and :meth:`~Credits.take` are ``send - 1``, and :meth:`~Credits.take_empty`
    spends the last credit only with a grant.

    Granting: every message carries all the credits posted but not yet
    granted, so in a batch the first message grants them and the others
    grant nothing.  :meth:`~Credits.take` spends the credits of a whole batch
    in one call and gives the grant of its first message.

    Posting: receives are kept posted up to ``min(target, recv_credit_max -
    held, window)``, where ``held`` counts buffers holding data the
    application has not read, and ``window`` starts at
    :data:`INITIAL_RECEIVES` and grows by one for each message the peer
    sends (as TCP's slow start grows its window): receives are posted as the
    peer uses them, so a connection that moves little holds little and
    starts fast.  Linux posts the whole target at once (255 receives, 16 MiB
    with 64 KiB messages).  A buffer holding unread data is reposted only
    once read: a reader that stops reading stops the grants, the sender
    stalls, and memory stays bounded by ``recv_credit_max`` buffers.
    Receives are always posted before the message that grants them is sent
    (:meth:`~Credits.refill` comes first).

    A message with no data, only credits (:meth:`~Credits.grant_due`): grants
    ride on data messages, and credits alone are worth a message when the
    peer may be stalled (it holds at most one credit, which data may not
    spend), or when it has fallen to a quarter of its target or less and at
    least two credits can be granted (a refill, as Linux does at target/4;
    while the window is below the target, a quarter of the window).  While
    buffers hold unread data, a reader that fell behind holds small grants
    back, as TCP's receiver holds back small window updates: a stalled peer
    is granted once a quarter of the window is free or everything is read,
    and a refill counts a quarter of what can be posted now (the buffers
    holding data cannot).  Granted two or three credits for each message
    read, such a reader would spend a message per read and stay behind.
    Handing back the buffers that the peer's own messages without data took
    (``returned``) is not news: two peers that stopped reading would
    otherwise hand each other one credit back and forth for ever.  A reader
    that has read everything does hand them back, to a peer holding at most
    one credit, when it holds two or more itself: that peer's data may be
    waiting for them, and it cannot hand them back in turn.  Two
    exceptions keep a connection alive: a peer holding no credit is granted
    one whenever that does not spend our last credit (else it could not
    answer a keepalive), and when our data waits for our last credit and the
    peer holds none, we spend it on a grant (the echo above: the peer's
    answer is how more credits come).  A single credit that is news is not
    granted on its own to a peer that is not stalled, and
    :class:`~smbdirect_socket.parameters.Parameters` keeps
    ``recv_credit_max`` and ``send_credit_target`` at 3 or more: with two, a
    full grant would let the peer send one data message at a time.  (The
    specification asks for a prompt grant whenever there are new credits,
    3.1.5.8; like Linux, we hold single credits back.)  A message the peer
    asked for (RESPONSE_REQUESTED) or a keepalive is the protocol's
    decision; it spends a credit the same way.

The peer's side is checked too: a message when the peer holds no credit, or
grants that take our credits above 65535 (a u16 on the wire, the kernel's
limit), end the connection with :class:`RemoteProtocolError`.  For data
messages :func:`~smbdirect_socket.pdu.check_data_transfers` checks a whole
batch against :meth:`~Credits.receiving` and :meth:`~Credits.peer_messages`
takes the result; the negotiation goes through :meth:`~Credits.peer_credits`.
"""

from __future__ import annotations

from .errors import RemoteProtocolError
from .pdu import ReceiveState

__all__ = ["INITIAL_RECEIVES", "MAX_CREDITS", "Credits"]

#: The most credits a side may hold: CreditsGranted and CreditsRequested are u16.
MAX_CREDITS = 0xFFFF
#: Receives posted at most when a connection starts (then one more for each
#: message the peer sends, up to ``recv_credit_max``).
INITIAL_RECEIVES = 16


class Credits:
    """The credit counters of one connection and the policy that moves them.

    ``recv_credit_max`` bounds the receives we post; ``send_target`` is the
    CreditsRequested every message of ours carries (our
    ``send_credit_target``).
    """

    __slots__ = (
        "_state",
        "granted",
        "posted",
        "recv_credit_max",
        "returned",
        "send",
        "send_target",
        "target",
        "window",
    )

    def __init__(self, recv_credit_max: int, send_target: int) -> None:
        self.recv_credit_max = recv_credit_max
        self.send_target = send_target
        self.send = 0
        self.posted = 0
        self.granted = 0
        self.target = 1
        self.returned = 0  # receives the peer's messages without data filled since our last grant
        self.window = INITIAL_RECEIVES  # receives we may keep posted: grows as the peer sends
        self._state = ReceiveState(0, 0)

    def __repr__(self) -> str:
        return (
            f"<Credits send={self.send} posted={self.posted} granted={self.granted} "
            f"target={self.target}/{self.recv_credit_max} window={self.window}>"
        )

    # ---- receiving -----------------------------------------------------------

    def receive_completed(self) -> None:
        """A posted receive was filled (by any message, negotiation included)."""
        if not self.posted:
            raise RemoteProtocolError("message arrived with no receive posted")
        self.posted -= 1

    def peer_credits(self, requested: int, granted: int) -> None:
        """The peer's message asked for ``requested`` credits in all and granted us ``granted`` more."""
        self.target = max(1, min(requested, self.recv_credit_max))
        self.send += granted
        if self.send > MAX_CREDITS:
            raise RemoteProtocolError(f"DataTransferMessage.credits_granted: peer granted {self.send} credits in all")

    def receiving(self, message_remaining: int) -> ReceiveState:
        """The state a batch of the peer's data messages is checked against (the same
        object each time, reset)."""
        # One object, reset for each batch: a new one would cost more than the batch's check.
        state = self._state
        state.granted = self.granted
        state.send_credits = self.send
        state.message_remaining = message_remaining
        state.receive_target = self.target
        state.response_requested = False
        state.fragments = state.messages = state.bytes = 0
        return state

    def peer_messages(self, state: ReceiveState, count: int, without_data: int) -> None:
        """``count`` messages of the peer filled posted receives and were checked into
        ``state`` (the credits they spent, granted and asked for); ``without_data``
        of them carried no data."""
        self.posted -= count
        self.returned += without_data
        if self.window < self.recv_credit_max:
            self.window = min(self.window + count, self.recv_credit_max)
        self.granted = state.granted
        self.send = state.send_credits
        self.target = state.receive_target

    def postable(self, held: int) -> int:
        """How many receives may be posted at once while ``held`` buffers hold unread data."""
        return min(self.target, self.recv_credit_max - held, self.window)

    def refill(self, held: int) -> int:
        """How many receives to post now (counted as posted); ``held`` buffers hold unread data."""
        more = self.postable(held) - self.posted
        if more <= 0:
            return 0
        self.posted += more
        return more

    # ---- sending -------------------------------------------------------------

    @property
    def ungranted(self) -> int:
        """Receives posted but not yet granted: what the next message grants."""
        return self.posted - self.granted

    def sendable(self) -> int:
        """How many data messages may go now: all credits but the last, which is kept
        for a message without data that grants."""
        return self.send - 1 if self.send > 1 else 0

    def take(self, fragments: int) -> tuple[int, int]:
        """Spend credits on up to ``fragments`` data messages; ``(how many go now, what the first grants)``.

        The others of the batch grant nothing.  ``(0, 0)`` when none may go.
        """
        send = self.send
        count = min(fragments, send - 1)
        if count <= 0:
            return 0, 0
        self.send = send - count
        return count, self.grant()

    def take_empty(self) -> int | None:
        """Spend a credit on a message without data; what it grants, or None when it may not go
        (the last credit goes only with a grant)."""
        send = self.send
        if send > 1 or (send == 1 and self.posted > self.granted):
            self.send = send - 1
            return self.grant()
        return None

    def grant(self) -> int:
        """Grant every posted receive not yet granted (the negotiate response does, with no credit)."""
        grant = self.posted - self.granted
        self.granted = self.posted
        self.returned = 0
        return grant

    def grant_due(self, stalled: bool, held: int = 0) -> bool:
        """Whether credits alone are worth a message: the peer may be stalled, or needs a
        refill, or we are ``stalled`` (data waits for our last credit) and the peer holds none.
        ``held`` buffers hold data not yet read."""
        new = self.posted - self.granted
        if not new:
            return False
        peer = self.granted
        if not peer and (stalled or self.send > 1):
            # A peer with no credit can neither answer a keepalive nor grant us more:
            # it gets one when that costs us no more than a last credit that data may not spend.
            return True
        # Handing back what its own messages without data took is not news, except from
        # a reader that has read everything to a peer short of credits, when we hold two
        # or more: the peer's data may wait for them.
        if held or peer > 1 or self.send < 2:
            new -= self.returned
        if new <= 0:
            return False
        if peer <= 1:
            # A stalled peer waits for the reader.  While unread data remains, the
            # grant waits until it is worth a quarter of the window, as TCP's
            # receiver holds back small window updates: a grant per read would cost
            # the reader a message each time and keep it behind.  All read, it goes.
            return not held or new >= self.postable(0) // 4
        # A refill: the peer is down to a quarter of what can be posted now.
        return new >= 2 and peer <= self.postable(held) // 4
