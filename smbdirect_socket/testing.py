"""Two protocol objects wired together in memory, with RDMA's receive rules.

:class:`ProtocolPair` plays the queue pairs: a message reaches the peer only
into a receive buffer the peer posted, and must fit in it; otherwise the
transfer fails the way a reliable-connected queue pair would.  Used by the
tests and by ``benchmarks/bench_protocol.py``.
"""

from __future__ import annotations

import errno
import itertools
import operator
from collections.abc import Iterator
from typing import cast

from .errors import ProtocolError
from .parameters import Parameters
from .protocol import Action, Disconnect, PostReceives, Role, SendFragments, SendPDU, SMBDirectProtocol

__all__ = ["ProtocolPair", "ReceiverNotReady", "sent_messages"]

_DATA = operator.itemgetter(0)  # a SendPDU's data


def sent_messages(actions: list[Action]) -> list[SendPDU]:
    """The messages ``actions`` send, in order, each as a :class:`SendPDU`."""
    sent: list[SendPDU] = []
    for action in actions:
        if isinstance(action, SendFragments):
            sent += map(SendPDU, action.datas)
        elif isinstance(action, SendPDU):
            sent.append(action)
    return sent


class ReceiverNotReady(ProtocolError):
    """A message arrived where the receiver had no (large enough) buffer posted."""

    errno = errno.ECONNRESET


class _Side:
    def __init__(self, protocol: SMBDirectProtocol) -> None:
        self.protocol = protocol
        # Lists, not deques: runs of them are taken at once (in C, not a Python step each).
        self.posted: list[int] = []  # sizes of posted receive buffers
        self.in_flight: list[bytes] = []  # PDUs on their way to this side
        self.disconnected = False
        self.peer: _Side = self


class ProtocolPair:
    """A client and a server protocol object joined by two in-memory queues."""

    def __init__(
        self,
        client_parameters: Parameters | None = None,
        server_parameters: Parameters | None = None,
    ) -> None:
        self.client = SMBDirectProtocol(Role.CLIENT, client_parameters)
        self.server = SMBDirectProtocol(Role.SERVER, server_parameters)
        client, server = _Side(self.client), _Side(self.server)
        client.peer, server.peer = server, client
        self._sides = {id(self.client): client, id(self.server): server}
        self.now = 0.0

    def side(self, protocol: SMBDirectProtocol) -> _Side:
        return self._sides[id(protocol)]

    def peer(self, protocol: SMBDirectProtocol) -> SMBDirectProtocol:
        return self.server if protocol is self.client else self.client

    def start(self) -> None:
        self.server.start(self.now)
        self.collect(self.server)
        self.client.start(self.now)
        self.collect(self.client)

    def collect(self, protocol: SMBDirectProtocol) -> None:
        """Carry out ``protocol``'s actions: post its receives, queue its sends."""
        self.carry_out(protocol, protocol.actions())

    def carry_out(self, protocol: SMBDirectProtocol, actions: list[Action]) -> None:
        """Carry out ``actions`` of ``protocol`` in order (a subclass may look at them first)."""
        side = self._sides[id(protocol)]
        in_flight = side.peer.in_flight
        for kind, run in itertools.groupby(actions, type):
            if kind is SendFragments:
                if not side.disconnected:
                    for fragments in cast("Iterator[SendFragments]", run):
                        in_flight += fragments.datas
                continue
            if kind is SendPDU:
                if not side.disconnected:
                    in_flight.extend(map(_DATA, cast("Iterator[SendPDU]", run)))
                continue
            for action in run:
                if isinstance(action, PostReceives):
                    side.posted.extend([action.size] * action.count)
                elif isinstance(action, Disconnect):
                    side.disconnected = True

    def deliver(self, protocol: SMBDirectProtocol, limit: int | None = None) -> int:
        """Complete the receives in flight to ``protocol`` (at most ``limit``) as one batch,
        as a poll of the completion queue would; return how many arrived."""
        side = self._sides[id(protocol)]
        in_flight = side.in_flight
        if not in_flight:
            return 0
        posted = side.posted
        most = len(posted) if limit is None else min(limit, len(posted))
        # The messages in flight that fit, in order, the buffers posted for them.
        fits = list(map(operator.le, map(len, in_flight[:most]), posted[:most]))
        count = fits.index(False) if False in fits else len(fits)
        if count:
            pdus = in_flight[:count]
            del in_flight[:count]
            del posted[:count]
            self.hand_over(protocol, pdus)
        else:  # the next message has no (large enough) buffer
            size = posted[0] if posted else 0
            pdu = in_flight.pop(0)
            protocol.connection_lost(ReceiverNotReady(f"{len(pdu)}-byte message, receive buffer {size}"))
            count = 1
        self.collect(protocol)
        return count

    def hand_over(self, protocol: SMBDirectProtocol, pdus: list[bytes]) -> None:
        """Give ``protocol`` its completed receives (a subclass may look at them first)."""
        protocol.receive_many(pdus, self.now)

    def deliver_one(self, protocol: SMBDirectProtocol) -> bool:
        """Complete one receive on ``protocol``; False if nothing was in flight."""
        return self.deliver(protocol, 1) > 0

    def run(self, limit: int = 1_000_000) -> int:
        """Deliver in both directions until nothing moves; return the deliveries."""
        moved = 0
        while moved < limit:
            step = self.deliver(self.client) + self.deliver(self.server)
            if not step:
                return moved
            moved += step
        raise RuntimeError(f"still delivering after {limit} messages: a ping-pong")

    def advance(self, seconds: float) -> None:
        """Move the clock and run the timers that fall due."""
        self.now += seconds
        for protocol in (self.client, self.server):
            deadline = protocol.next_deadline()
            if deadline is not None and deadline <= self.now:
                protocol.handle_timer(self.now)
                self.collect(protocol)
