"""The RDMA engine interface: verbs and rdma_cm, as one async trio API.

A provider makes connections; a connection is a reliable-connected
:class:`QueuePair`.  Work requests are posted without blocking, as in verbs,
and finish as :class:`Completion` objects read with
:meth:`QueuePair.get_completion`.  Memory is registered per queue pair (its
own protection domain) and addressed by the peer through a token (the iWARP
STag, the InfiniBand rkey) and an offset.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import socket
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

__all__ = [
    "Access",
    "Completion",
    "ConnectionRequest",
    "Disconnected",
    "Listener",
    "MemoryRegion",
    "Opcode",
    "Provider",
    "QueuePair",
    "RdmaError",
    "Status",
]

Buffer = bytes | bytearray | memoryview


class Access(enum.IntFlag):
    """Access rights of a memory registration (``IBV_ACCESS_*``)."""

    LOCAL_WRITE = 1
    REMOTE_WRITE = 2
    REMOTE_READ = 4


class Opcode(enum.Enum):
    """What a work completion completes (``IBV_WC_*``)."""

    SEND = "send"
    RDMA_WRITE = "rdma_write"
    RDMA_READ = "rdma_read"
    RECV = "recv"


class Status(enum.Enum):
    """Work completion status (``IBV_WC_*``)."""

    SUCCESS = "success"
    LOCAL_LENGTH_ERROR = "local_length_error"  # the message did not fit the receive buffer
    LOCAL_PROTECTION_ERROR = "local_protection_error"
    REMOTE_ACCESS_ERROR = "remote_access_error"  # the peer refused our RDMA read/write
    REMOTE_INVALID_REQUEST = "remote_invalid_request"
    REMOTE_OPERATION_ERROR = "remote_operation_error"
    RECEIVER_NOT_READY = "receiver_not_ready"  # a Send found no posted receive
    FLUSHED = "flushed"  # the queue pair went to the error state first
    FATAL = "fatal"


class Completion(NamedTuple):
    """One finished work request (a tuple: completions are made per message)."""

    wr_id: int
    opcode: Opcode
    status: Status = Status.SUCCESS
    byte_len: int = 0
    #: For receives of a send with invalidate: the token the peer invalidated.
    invalidated_token: int | None = None
    #: For receives of a send with solicited event.
    solicited: bool = False
    #: Why the request failed, in words.
    reason: str = ""


class RdmaError(OSError):
    """An RDMA operation or connection failed; ``errno`` is the socket's."""


class Disconnected(RdmaError):
    """The peer disconnected in good order (no Terminate, no protocol error)."""


class MemoryRegion(abc.ABC):
    """A registered buffer the peer may address by ``token`` and offset."""

    token: int
    #: The tagged offset of the first byte (what buffer descriptors carry).
    address: int
    length: int
    access: Access

    @property
    @abc.abstractmethod
    def valid(self) -> bool:
        """False once invalidated (locally, remotely) or deregistered."""


class QueuePair(abc.ABC):
    """One reliable connection with its queues, completions and memory."""

    #: Private data the peer sent in its connect request or accept.
    peer_private_data: bytes
    #: RDMA reads of the peer we may have outstanding (ORD).
    initiator_depth: int
    #: RDMA reads of our memory the peer may have outstanding (IRD).
    responder_resources: int
    local_address: tuple[str, int]
    peer_address: tuple[str, int]
    #: Held by whoever posts, polls or reads the queue pair's wire: its trio
    #: loop's tasks, or a caller in another thread (see :meth:`caller_enters`).
    lock: threading.RLock

    @abc.abstractmethod
    def post_recv(self, wr_id: int, buffer: memoryview) -> None:
        """Post a receive buffer; a Send from the peer fills the oldest one."""

    def post_recvs(self, first_wr_id: int, buffers: list[memoryview]) -> None:
        """Post receive buffers in order, with work request ids from ``first_wr_id``
        on (receives posted together); by default each is posted in turn."""
        post_each_receive(self.post_recv, first_wr_id, buffers)

    @abc.abstractmethod
    def post_send(
        self,
        wr_id: int,
        data: Buffer,
        *,
        invalidate_token: int | None = None,
        solicited: bool = False,
        signaled: bool = True,
    ) -> None:
        """Send a message; with ``invalidate_token`` the peer invalidates that token.

        Unless ``signaled``, a send that succeeds reports no completion (as one
        posted without ``IBV_SEND_SIGNALED``); a failed or flushed one does.
        """

    def post_sends(self, wr_id: int, datas: Sequence[Buffer], *, signaled: bool = False) -> None:
        """Post plain sends of ``datas`` in order, all with ``wr_id`` (a message's
        fragments); ``signaled`` asks a completion of the last alone.  A provider
        may frame them in one go, and then a failure or flush completes the
        batch once; by default each is posted in turn."""
        post_each_send(self.post_send, wr_id, datas, signaled)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Post the work requests of a ``with`` block together, as one doorbell
        rings for a chain of them: a provider may hold them until the block
        ends and then send them in one go.  By default each goes at once."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def post_write(self, wr_id: int, data: Buffer, token: int, address: int) -> None:
        """RDMA-write ``data`` into the peer's registration ``token`` at ``address``."""

    @abc.abstractmethod
    def post_read(self, wr_id: int, into: memoryview, token: int, address: int) -> None:
        """RDMA-read ``len(into)`` bytes of the peer's registration ``token`` at ``address``."""

    @abc.abstractmethod
    async def get_completions(self, max_count: int = 64) -> list[Completion]:
        """Wait until completions are ready and take up to ``max_count`` of them.

        Every work request completes exactly once, in the order it completed.
        When none will come any more (the queue pair failed or disconnected and
        everything was flushed) this raises the queue pair's error.
        """

    @abc.abstractmethod
    def poll_completions(self, max_count: int = 64) -> list[Completion]:
        """The completions ready now, without waiting (``ibv_poll_cq``)."""

    # ---- a caller in another thread drives ----------------------------------------------

    def caller_enters(self) -> bool:
        """A thread outside the queue pair's trio loop starts driving it (call
        under :attr:`lock`): until :meth:`caller_leaves`, its
        :meth:`poll_completions` takes what arrived on the wire too, the caller
        waits for :meth:`fileno` to be readable (and writable while
        :attr:`wants_write`, then calls :meth:`flush`), and the loop's tasks keep
        off the wire.  False (the default) when the provider cannot be driven
        so: the caller then goes through the loop."""
        return False

    def caller_leaves(self) -> None:
        """The caller of :meth:`caller_enters` stops driving (under :attr:`lock`)."""
        return None

    @property
    def callers(self) -> int:
        """Callers in other threads driving now."""
        return 0

    @property
    def callers_recent(self) -> bool:
        """Callers drive now, or did so lately that they are expected back: the
        loop's background tasks keep off the wire meanwhile."""
        return False

    #: How long :attr:`callers_recent` holds after the last caller left (0 when
    #: a program waits on the socket's descriptor between calls instead).
    caller_grace = 0.0

    def completions_taken(self) -> None:
        """What :meth:`get_completions` returned has been acted on (under
        :attr:`lock`): callers may take later ones now (they must not act on
        them before the earlier ones)."""
        return None

    def fileno(self) -> int:
        """What a caller that drives waits on: readable when :meth:`poll_completions` may find more."""
        raise NotImplementedError

    @property
    def wants_write(self) -> bool:
        """Output waits for :meth:`fileno` to be writable."""
        return False

    def flush(self) -> None:
        """Write what waited for room."""
        return None

    async def get_completion(self) -> Completion:
        """Wait for the next completion."""
        return (await self.get_completions(1))[0]

    @abc.abstractmethod
    def register(self, buffer: memoryview, access: Access) -> MemoryRegion:
        """Register ``buffer`` (kept alive until deregistered) with ``access`` rights."""

    @abc.abstractmethod
    def deregister(self, region: MemoryRegion) -> None:
        """Deregister; the token is no longer valid."""

    @abc.abstractmethod
    def invalidate(self, region: MemoryRegion) -> None:
        """Invalidate locally: the peer's later accesses fail."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close gracefully; outstanding work requests are flushed."""

    @property
    @abc.abstractmethod
    def error(self) -> RdmaError | None:
        """Why the queue pair went to the error state, if it did."""


def post_each_send(post_send: Callable[..., None], wr_id: int, datas: Sequence[Buffer], signaled: bool) -> None:
    """A batch of sends posted one at a time: only the last may be signaled."""
    last = len(datas) - 1
    for index, data in enumerate(datas):
        post_send(wr_id, data, signaled=signaled and index == last)


def post_each_receive(
    post_recv: Callable[[int, memoryview], None], first_wr_id: int, buffers: list[memoryview]
) -> None:
    """A batch of receives posted one at a time, with ids from ``first_wr_id`` on."""
    for wr_id, buffer in enumerate(buffers, first_wr_id):
        post_recv(wr_id, buffer)


class ConnectionRequest(abc.ABC):
    """An incoming connection waiting to be accepted or rejected."""

    private_data: bytes
    #: The peer's IRD and ORD as announced.
    initiator_depth: int
    responder_resources: int
    peer_address: tuple[str, int]

    @abc.abstractmethod
    async def accept(
        self, private_data: bytes = b"", *, initiator_depth: int = 1, responder_resources: int = 1
    ) -> QueuePair:
        """Accept: the queue pair of the connection, ``private_data`` sent to the peer."""

    @abc.abstractmethod
    async def reject(self, private_data: bytes = b"") -> None:
        """Refuse the connection, with ``private_data`` for the peer."""


class Listener(abc.ABC):
    """Connection requests arriving at ``address``, as :meth:`Provider.listen` returns."""

    address: tuple[str, int]

    @abc.abstractmethod
    async def get_request(self) -> ConnectionRequest:
        """The next connection request."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop listening."""


class Provider(abc.ABC):
    """A way to make RDMA connections: software iWARP, verbs, ..."""

    name: str

    @abc.abstractmethod
    async def connect(
        self,
        address: tuple[str, int],
        private_data: bytes = b"",
        *,
        initiator_depth: int = 1,
        responder_resources: int = 1,
        timeout: float = 5.0,
        source: tuple[str, int] | None = None,
    ) -> QueuePair:
        """Connect to ``address`` (from ``source``, rdma_resolve_addr's src_addr, if given)."""

    @abc.abstractmethod
    def listen(self, address: tuple[str, int], backlog: int = 10, *, sock: socket.socket | None = None) -> Listener:
        """Bind and listen at once (``rdma_bind_addr`` and ``rdma_listen``).

        ``sock`` is a TCP socket already bound to ``address``, for providers
        whose wire is TCP (so that ``bind()`` reports EADDRINUSE itself).
        """
