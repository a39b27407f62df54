"""Two protocol objects wired together in memory, with RDMA's receive rules.

:class:`ProtocolPair` plays the queue pairs: a message reaches the peer only
into a receive buffer the peer posted, and must fit in it; otherwise the
transfer fails the way a reliable-connected queue pair would.  Used by the
tests and by ``benchmarks/bench_protocol.py``.
"""

from __future__ import annotations

import errno
from collections import deque

from .errors import ProtocolError
from .parameters import Parameters
from .protocol import Action, Disconnect, PostReceives, Role, SendPDU, SMBDirectProtocol

__all__ = ["ProtocolPair", "ReceiverNotReady"]


class ReceiverNotReady(ProtocolError):
    """A message arrived where the receiver had no (large enough) buffer posted."""

    errno = errno.ECONNRESET


class _Side:
    def __init__(self, protocol: SMBDirectProtocol) -> None:
        self.protocol = protocol
        self.posted: deque[int] = deque()  # sizes of posted receive buffers
        self.in_flight: deque[bytes] = deque()  # PDUs on their way to this side
        self.disconnected = False


class ProtocolPair:
    """A client and a server protocol object joined by two in-memory queues."""

    def __init__(
        self,
        client_parameters: Parameters | None = None,
        server_parameters: Parameters | None = None,
    ) -> None:
        self.client = SMBDirectProtocol(Role.CLIENT, client_parameters)
        self.server = SMBDirectProtocol(Role.SERVER, server_parameters)
        self._sides = {id(self.client): _Side(self.client), id(self.server): _Side(self.server)}
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
        side = self.side(protocol)
        peer = self.side(self.peer(protocol))
        for action in actions:
            if isinstance(action, PostReceives):
                side.posted.extend([action.size] * action.count)
            elif isinstance(action, SendPDU):
                if not side.disconnected:
                    peer.in_flight.append(action.data)
            elif isinstance(action, Disconnect):
                side.disconnected = True

    def deliver_one(self, protocol: SMBDirectProtocol) -> bool:
        """Complete one receive on ``protocol``; False if nothing was in flight."""
        side = self.side(protocol)
        if not side.in_flight:
            return False
        pdu = side.in_flight.popleft()
        if not side.posted or len(pdu) > side.posted[0]:
            size = side.posted[0] if side.posted else 0
            protocol.connection_lost(ReceiverNotReady(f"{len(pdu)}-byte message, receive buffer {size}"))
        else:
            side.posted.popleft()
            protocol.receive(pdu, self.now)
        self.collect(protocol)
        return True

    def run(self, limit: int = 1_000_000) -> int:
        """Deliver in both directions until nothing moves; return the deliveries."""
        moved = 0
        while moved < limit:
            step = self.deliver_one(self.client) + self.deliver_one(self.server)
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
