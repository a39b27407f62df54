"""The sans-IO SMB-Direct connection: negotiation, credits, fragments, timers.

:class:`SMBDirectProtocol` is one state machine for both roles.  It does no
I/O and never reads a clock: the caller feeds it receive completions and the
current time, and collects

* :meth:`~SMBDirectProtocol.actions`: receive buffers to post and PDUs to
  send, in the order they must reach the queue pair (a receive is always
  posted before the message that grants its credit is sent); what the
  receives since the last call allow to send is worked out here, once;
* :meth:`~SMBDirectProtocol.next_event`: :class:`Connected` and
  :class:`Terminated`;
* :meth:`~SMBDirectProtocol.next_deadline`: when to call
  :meth:`~SMBDirectProtocol.handle_timer` (negotiate, idle and keepalive).

Received data waits in a :class:`~smbdirect_socket.reassembly.ReceiveQueue`
until :meth:`~SMBDirectProtocol.read`; the receive buffers it holds are
reposted, and their credits granted, only once read.

Credits follow [MS-SMBD] 3.1.5 and Linux; the whole policy (what may be
sent, what to post and grant, when credits alone are worth a message) is
:class:`~smbdirect_socket.credits.Credits`, which this class asks once per
batch of fragments.
"""

from __future__ import annotations

import enum
import errno
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import attrs

from . import constants as c
from .credits import Credits
from .errors import LocalProtocolError, PDUError, RemoteProtocolError
from .parameters import Parameters
from .pdu import (
    Buffer,
    NegotiateRequest,
    NegotiateResponse,
    ReceiveLimits,
    check_data_transfers,
    encode_data_transfer,
    encode_data_transfer_list,
)
from .reassembly import ReceiveQueue

__all__ = [
    "Connected",
    "Disconnect",
    "Negotiated",
    "PostReceives",
    "Role",
    "SMBDirectProtocol",
    "SendFragments",
    "SendPDU",
    "State",
    "Statistics",
    "Terminated",
]


#: Received messages up to this size have their payloads gathered into one buffer
#: per batch; larger ones are queued where they lie (a copy of each would cost
#: more than the view that keeps it).
_GATHER_MAX = 16384


class Role(enum.Enum):
    """Which side of the connection: the client sends the Negotiate Request, the server answers."""

    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """Connection states; the socket layers map them onto TCP's."""

    IDLE = "idle"  # created, start() not called
    NEGOTIATING = "negotiating"  # negotiate request/response in flight
    CONNECTED = "connected"  # data transfer
    CLOSED = "closed"  # terminated; error says why


# ---- outputs ---------------------------------------------------------------


@attrs.frozen
class PostReceives:
    """Post ``count`` more receive buffers of ``size`` bytes."""

    count: int
    size: int


class SendPDU(NamedTuple):
    """Send ``data`` as one message; with ``invalidate_token`` use send with invalidate."""

    data: bytes
    invalidate_token: int | None = None


class SendFragments(NamedTuple):
    """Send each of ``datas`` as one message, in order (plain sends): the data
    transfer messages a batch of credits lets go, one action for them all, not
    one a fragment."""

    datas: list[bytes]


@attrs.frozen
class Disconnect:
    """Tear down the queue pair once the sends before this action are out."""


Action = PostReceives | SendPDU | SendFragments | Disconnect
_new_action = tuple.__new__  # a named tuple without its Python-level __new__ (one a batch)


@attrs.frozen
class Negotiated:
    """What both sides agreed on ([MS-SMBD] 3.1.1.1)."""

    max_send_size: int
    max_receive_size: int
    max_fragmented_send_size: int
    max_fragmented_receive_size: int
    max_read_write_size: int
    send_credit_target: int


@attrs.frozen
class Connected:
    """Negotiation succeeded; data may flow."""

    negotiated: Negotiated


@attrs.frozen
class Terminated:
    """The connection is over; ``error`` says why (its ``errno`` is the socket's)."""

    error: Exception


Event = Connected | Terminated


@attrs.define
class Statistics:
    """Counters of one connection, for the statistics socket option."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    fragments_sent: int = 0
    fragments_received: int = 0
    keepalives_sent: int = 0
    credit_messages_sent: int = 0


class _Outgoing:
    """A message being fragmented: payload, bytes sent, remote invalidate."""

    __slots__ = ("invalidate_token", "sent", "view")

    def __init__(self, view: memoryview, invalidate_token: int | None) -> None:
        self.view = view
        self.sent = 0
        self.invalidate_token = invalidate_token


class SMBDirectProtocol:
    """One SMB-Direct connection, either role, with no I/O."""

    def __init__(self, role: Role, parameters: Parameters | None = None) -> None:
        self.role = role
        self.parameters = parameters or Parameters()
        self.state = State.IDLE
        self.negotiated: Negotiated | None = None
        #: The first error that ended the connection.
        self.error: Exception | None = None
        self.statistics = Statistics()
        self._actions: list[Action] = []
        self._events: deque[Event] = deque()
        self._credits = Credits(self.parameters.recv_credit_max, self.parameters.send_credit_target)
        # receive side
        self._incoming = ReceiveQueue()
        self._message_remaining = 0  # bytes still due for the message being reassembled
        self._response_owed = False  # the peer set RESPONSE_REQUESTED
        self._send_keepalive = False  # our idle timer expired
        self._flush_due = False  # receives came in: what to send is worked out in actions()
        self._limits = ReceiveLimits(0, 0, 0)  # set once negotiated
        self._gather = True  # whether received payloads are small enough to gather
        # send side
        self._outgoing: deque[_Outgoing] = deque()
        self._fragments = 0  # fragments the outgoing messages still make
        # timers
        self._negotiate_deadline: float | None = None
        self._idle_deadline: float | None = None
        self._keepalive_deadline: float | None = None
        self._idle_interval = self.parameters.keepalive_interval_msec / 1000  # 0: no keepalives

    # ---- inspection ----------------------------------------------------------

    @property
    def send_credits(self) -> int:
        """Credits we hold to send to the peer."""
        return self._credits.send

    @property
    def receive_credits(self) -> int:
        """Credits the peer holds to send to us."""
        return self._credits.granted

    @property
    def receive_credit_target(self) -> int:
        return self._credits.target

    @property
    def posted_receives(self) -> int:
        return self._credits.posted

    @property
    def readable(self) -> int:
        """Bytes reassembled and waiting for :meth:`read`."""
        return self._incoming.size

    @property
    def held_receives(self) -> int:
        """Receive buffers held by unread data."""
        return self._incoming.held

    @property
    def pending_send_bytes(self) -> int:
        """Bytes accepted by :meth:`send_message` but not yet handed out to send."""
        return sum(len(m.view) - m.sent for m in self._outgoing)

    @property
    def can_send(self) -> bool:
        """Whether a new message would be sent at once (the socket is writable)."""
        return self.state is State.CONNECTED and not self._outgoing and self._credits.sendable() > 0

    # ---- inputs -------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin negotiation once the RDMA connection is up."""
        if self.state is not State.IDLE:
            raise LocalProtocolError("start() called twice", errno=errno.EISCONN)
        p = self.parameters
        self.state = State.NEGOTIATING
        self._negotiate_deadline = now + p.negotiate_timeout_msec / 1000
        self._refill()  # the one receive the negotiate message needs (the target is 1 until then)
        if self.role is Role.CLIENT:
            request = NegotiateRequest(
                credits_requested=p.send_credit_target,
                preferred_send_size=p.max_send_size,
                max_receive_size=p.max_recv_size,
                max_fragmented_size=p.max_fragmented_recv_size,
            )
            self._actions.append(SendPDU(request.pack()))

    def receive(self, pdu: Buffer, now: float) -> None:
        """Feed one completed receive (the bytes the peer sent)."""
        self.receive_many((pdu,), now)

    def receive_many(self, pdus: Sequence[Buffer], now: float) -> None:
        """Feed completed receives (a list or tuple of their bytes) in the order they
        completed, such as one poll of the completion queue: one check for them all."""
        if self.state is State.CLOSED or not pdus:
            return
        try:
            if self.state is not State.CONNECTED:
                self._credits.receive_completed()  # none is posted before start()
                if self.role is Role.SERVER:
                    self._receive_negotiate_request(pdus[0], now)
                else:
                    self._receive_negotiate_response(pdus[0], now)
                pdus = pdus[1:]
            if pdus:
                self._receive_data(pdus, now)
        except (PDUError, RemoteProtocolError) as exc:
            error = exc if isinstance(exc, RemoteProtocolError) else RemoteProtocolError(str(exc))
            self._fail(error)
            return
        self._flush_due = True  # once for all the receives before the caller collects the actions

    def send_message(self, payload: Buffer, *, invalidate_token: int | None = None) -> None:
        """Queue one upper-layer message (no 4-byte length header) for sending.

        It is split into fragments of the negotiated size as credits allow.
        Raises :class:`LocalProtocolError` with ENOTCONN, EPIPE or EMSGSIZE.
        """
        if self.state is not State.CONNECTED:
            self._check_connected()
        assert self.negotiated is not None
        length = len(payload)
        if length > self.negotiated.max_fragmented_send_size:
            raise LocalProtocolError(
                f"message of {length} bytes exceeds the negotiated max fragmented send size "
                f"{self.negotiated.max_fragmented_send_size}",
                errno=errno.EMSGSIZE,
            )
        if length == 0:
            raise LocalProtocolError("an SMB-Direct message cannot be empty", errno=errno.EINVAL)
        if invalidate_token is not None and not 0 <= invalidate_token <= 0xFFFFFFFF:
            raise LocalProtocolError(f"invalidate token {invalidate_token!r} is not a u32")
        self._outgoing.append(_Outgoing(memoryview(payload).cast("B"), invalidate_token))
        self._fragments -= -length // (self.negotiated.max_send_size - c.DATA_TRANSFER_DATA_OFFSET)
        self.statistics.messages_sent += 1
        self._flush()

    def message_start(self) -> int | None:
        """Length of the message at the head of the receive queue, if none of it was read."""
        return self._incoming.message_start()

    def consume_message_start(self) -> int:
        """Take the head message's length (the kernel's synthesized 4-byte header)."""
        return self._incoming.consume_message_start()

    def read(self, nbytes: int) -> bytes:
        """Take up to ``nbytes`` of received data; freed buffers are reposted."""
        data, freed = self._incoming.read(nbytes)
        if freed and self.state is State.CONNECTED:
            self._flush()
        return data

    def read_into(self, out: bytearray, nbytes: int) -> None:
        """:meth:`read`, appending to ``out``."""
        if self._incoming.read_into(out, nbytes) and self.state is State.CONNECTED:
            self._flush()

    def handle_timer(self, now: float) -> None:
        """Run the timers that are due at ``now``."""
        if self.state is State.CLOSED:
            return
        if self._negotiate_deadline is not None and now >= self._negotiate_deadline:
            self._fail(RemoteProtocolError("SMB-Direct negotiation timed out", errno=errno.ETIMEDOUT))
            return
        if self._keepalive_deadline is not None and now >= self._keepalive_deadline:
            self._fail(RemoteProtocolError("peer did not answer a keepalive", errno=errno.ETIMEDOUT))
            return
        if self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_deadline = None
            self._keepalive_deadline = now + self.parameters.keepalive_timeout_msec / 1000
            self._send_keepalive = True
            self._flush()

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` must be called, if any."""
        earliest = None
        for deadline in (self._negotiate_deadline, self._idle_deadline, self._keepalive_deadline):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def connection_lost(self, error: Exception) -> None:
        """The transport below failed or the peer disconnected."""
        if self._message_remaining and self.state is not State.CLOSED:
            # Even an orderly disconnect cannot complete a message: that is an error.
            error = RemoteProtocolError(
                f"connection lost with {self._message_remaining} bytes of a message still due: {error}",
                errno=errno.ECONNRESET,
            )
        self._fail(error, disconnect=False)

    def close(self) -> None:
        """Close locally: everything is torn down, as kernel ``shutdown`` does."""
        if self.state is State.CLOSED:
            return
        self._fail(LocalProtocolError("connection closed locally", errno=errno.EPIPE))

    # ---- outputs ------------------------------------------------------------

    def actions(self) -> list[Action]:
        """Receive postings and sends due now, in order; the list is handed over."""
        if self._flush_due:
            self._flush()
        actions, self._actions = self._actions, []
        return actions

    def next_event(self) -> Event | None:
        """The next event (data, credits, the connection's end) for the caller, or None."""
        return self._events.popleft() if self._events else None

    # ---- negotiation ----------------------------------------------------------

    def _receive_negotiate_request(self, pdu: Buffer, now: float) -> None:
        request = NegotiateRequest.unpack(pdu)
        p = self.parameters
        if request.credits_requested == 0:
            raise RemoteProtocolError("NegotiateRequest.credits_requested: must not be 0")
        if request.max_receive_size < c.MIN_RECEIVE_SIZE:
            raise RemoteProtocolError(
                f"NegotiateRequest.max_receive_size: {request.max_receive_size} is below {c.MIN_RECEIVE_SIZE}"
            )
        if request.max_fragmented_size < c.MIN_FRAGMENTED_SIZE:
            raise RemoteProtocolError(
                f"NegotiateRequest.max_fragmented_size: {request.max_fragmented_size} is below {c.MIN_FRAGMENTED_SIZE}"
            )
        if not request.min_version <= c.SMBDIRECT_VERSION <= request.max_version:
            response = NegotiateResponse(
                status=c.NTStatus.NOT_SUPPORTED,
                negotiated_version=0,
                min_version=c.SMBDIRECT_VERSION,
                max_version=c.SMBDIRECT_VERSION,
            )
            self._actions.append(SendPDU(response.pack()))
            raise RemoteProtocolError(
                f"NegotiateRequest.max_version: range 0x{request.min_version:04x}-0x{request.max_version:04x} "
                "excludes 0x0100"
            )
        max_receive_size = max(min(p.max_recv_size, request.preferred_send_size), c.MIN_RECEIVE_SIZE)
        max_read_write_size = p.max_read_write_size or c.SERVER_MAX_READ_WRITE_SIZE  # 0 would stop RDMA I/O
        self._credits.peer_credits(request.credits_requested, 0)
        negotiated = Negotiated(
            max_send_size=min(p.max_send_size, request.max_receive_size),
            max_receive_size=max_receive_size,
            max_fragmented_send_size=min(request.max_fragmented_size, p.max_fragmented_send_size),
            max_fragmented_receive_size=p.max_fragmented_recv_size,
            max_read_write_size=max_read_write_size,
            send_credit_target=p.send_credit_target,
        )
        self._established(negotiated, now)
        self._refill()
        granted = self._credits.grant()
        response = NegotiateResponse(
            status=c.NTStatus.SUCCESS,
            credits_requested=p.send_credit_target,
            credits_granted=granted,
            max_read_write_size=max_read_write_size,
            preferred_send_size=negotiated.max_send_size,
            max_receive_size=max_receive_size,
            max_fragmented_size=p.max_fragmented_recv_size,
        )
        self._actions.append(SendPDU(response.pack()))

    def _receive_negotiate_response(self, pdu: Buffer, now: float) -> None:
        response = NegotiateResponse.unpack(pdu)
        p = self.parameters

        def require(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise RemoteProtocolError(f"NegotiateResponse.{field}: {rule}")

        require(
            response.status == c.NTStatus.SUCCESS,
            "status",
            f"0x{response.status:08x} is not STATUS_SUCCESS",
        )
        require(
            response.negotiated_version == c.SMBDIRECT_VERSION,
            "negotiated_version",
            f"0x{response.negotiated_version:04x} is not 0x0100",
        )
        require(response.credits_requested > 0, "credits_requested", "must not be 0")
        require(response.credits_granted > 0, "credits_granted", "must not be 0")
        require(
            response.max_receive_size >= c.MIN_RECEIVE_SIZE,
            "max_receive_size",
            f"{response.max_receive_size} is below {c.MIN_RECEIVE_SIZE}",
        )
        require(
            response.max_fragmented_size >= c.MIN_FRAGMENTED_SIZE,
            "max_fragmented_size",
            f"{response.max_fragmented_size} is below {c.MIN_FRAGMENTED_SIZE}",
        )
        require(
            response.preferred_send_size <= p.max_recv_size,
            "preferred_send_size",
            f"{response.preferred_send_size} exceeds our max receive size {p.max_recv_size}",
        )
        own_rw = p.max_read_write_size
        negotiated = Negotiated(
            max_send_size=min(p.max_send_size, response.max_receive_size),
            max_receive_size=p.max_recv_size,
            max_fragmented_send_size=min(response.max_fragmented_size, p.max_fragmented_send_size),
            max_fragmented_receive_size=p.max_fragmented_recv_size,
            max_read_write_size=min(own_rw, response.max_read_write_size) if own_rw else response.max_read_write_size,
            send_credit_target=p.send_credit_target,
        )
        self._credits.peer_credits(response.credits_requested, response.credits_granted)
        self._established(negotiated, now)

    def _established(self, negotiated: Negotiated, now: float) -> None:
        self.negotiated = negotiated
        self._limits = ReceiveLimits(
            negotiated.max_fragmented_receive_size, negotiated.max_receive_size, self.parameters.recv_credit_max
        )
        self._gather = negotiated.max_receive_size <= _GATHER_MAX
        self.state = State.CONNECTED
        self._negotiate_deadline = None
        self._arm_idle(now)
        self._events.append(Connected(negotiated))

    # ---- data transfer ----------------------------------------------------------

    def _receive_data(self, pdus: Sequence[Buffer], now: float) -> None:
        credits = self._credits
        count = min(len(pdus), credits.posted)
        if count:
            batch = pdus[:count] if count < len(pdus) else pdus
            state = credits.receiving(self._message_remaining)
            # Small payloads of a batch are gathered into one buffer (a read then takes one
            # slice of it); large ones, or a message alone, are kept where they were
            # received, as a copy costs more.
            into = bytearray(sum(map(len, batch))) if self._gather and len(batch) > 1 else None
            result = check_data_transfers(batch, into, state, self._limits)
            applied = result.applied
            if applied:
                credits.peer_messages(state, applied, applied - len(result.totals))
                if result.payloads is None:
                    assert into is not None
                    self._incoming.push_pieces(into, result.ends, result.totals)
                else:
                    self._incoming.push_payloads(result.payloads, result.totals)
                self._message_remaining = state.message_remaining
                self._response_owed |= state.response_requested
                idle = self._idle_interval  # _arm_idle, inline: this runs once a batch
                self._idle_deadline = now + idle if idle else None
                self._keepalive_deadline = None
                stats = self.statistics
                stats.fragments_received += state.fragments
                stats.messages_received += state.messages
                stats.bytes_received += state.bytes
            if result.error is not None:
                raise result.error
        if count < len(pdus):
            raise RemoteProtocolError("message arrived with no receive posted")

    def _arm_idle(self, now: float) -> None:
        idle = self._idle_interval
        self._idle_deadline = now + idle if idle else None

    def _refill(self) -> None:
        """Post the receives the credit policy wants, before anything that grants them is sent."""
        count = self._credits.refill(self._incoming.held)
        if count:
            size = self.negotiated.max_receive_size if self.negotiated else self.parameters.max_recv_size
            self._actions.append(PostReceives(count, size))

    def _flush(self) -> None:
        """Send what credits allow: data fragments first, then a message with no data if one is due."""
        self._flush_due = False
        if self.state is not State.CONNECTED:
            return
        self._refill()
        assert self.negotiated is not None
        credits = self._credits
        outgoing = self._outgoing
        if outgoing:
            count, grant = credits.take(self._fragments)
            if count:
                self._send_fragments(count, grant)
                return  # a data message answers a request or keepalive, and grants all there was to grant
        if self._response_owed or self._send_keepalive or credits.grant_due(bool(outgoing), self._incoming.held):
            empty_grant = credits.take_empty()
            if empty_grant is not None:
                self._send(empty_grant)

    def _send_fragments(self, count: int, grant: int) -> None:
        """Send the next ``count`` fragments of the outgoing messages, one buffer per message."""
        assert self.negotiated is not None
        chunk = self.negotiated.max_send_size - c.DATA_TRANSFER_DATA_OFFSET
        outgoing = self._outgoing
        actions = self._actions
        stats = self.statistics
        self._fragments -= count
        self._send_keepalive = self._response_owed = False
        stats.fragments_sent += count
        while count:
            message = outgoing[0]
            view = message.view
            start = message.sent
            sends = encode_data_transfer_list(self._credits.send_target, grant, 0, view, start, count, chunk)
            count -= len(sends)
            grant = 0
            message.sent = min(start + len(sends) * chunk, len(view))
            stats.bytes_sent += message.sent - start
            last = None
            if message.sent == len(view):
                outgoing.popleft()
                if message.invalidate_token is not None:
                    last = SendPDU(sends.pop(), message.invalidate_token)
            if sends:
                actions.append(_new_action(SendFragments, (sends,)))
            if last is not None:
                actions.append(last)

    def _send(self, granted: int) -> None:
        """Send a message with no data: credits, an answer, or a keepalive."""
        flags = 0
        if self._send_keepalive:
            flags = c.SMB_DIRECT_RESPONSE_REQUESTED
            self.statistics.keepalives_sent += 1
        else:
            self.statistics.credit_messages_sent += 1
        self._send_keepalive = self._response_owed = False
        self.statistics.fragments_sent += 1
        self._actions.append(SendPDU(encode_data_transfer(self._credits.send_target, granted, flags, 0, b"")))

    # ---- termination -----------------------------------------------------------

    def _check_connected(self) -> None:
        if self.state is State.CONNECTED:
            return
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed", errno=errno.EPIPE)
        raise LocalProtocolError("connection is not established", errno=errno.ENOTCONN)

    def _fail(self, error: Exception, *, disconnect: bool = True) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.error = error
        self._negotiate_deadline = self._idle_deadline = self._keepalive_deadline = None
        self._outgoing.clear()
        self._fragments = 0
        if disconnect:
            self._actions.append(Disconnect())
        self._events.append(Terminated(error))
