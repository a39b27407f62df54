"""The software iWARP provider: RDMA over trio TCP streams.

It speaks the wire of Linux siw and iWARP NICs (MPA v2 with RFC 6581 setup,
DDP, RDMAP), so it works between any two machines and against real kernels
(ksmbd and cifs.ko on siw).  The protocol work is
:class:`~smbdirect_socket.rdma.soft.rdmap.IwarpQueuePair`; this module only
moves bytes.

Each queue pair runs two background tasks: a reader that feeds received
bytes to the queue pair, and a writer that sends what it produced.  The
reader never writes, so two peers both sending bulk data cannot deadlock on
full TCP buffers.  The tasks are trio system tasks: a socket has no nursery
of its own, and they end with the connection.

A thread outside the queue pair's trio loop may drive it too, as a caller
drives a kernel socket: between :meth:`SoftQueuePair.caller_enters` and
:meth:`~SoftQueuePair.caller_leaves` it reads the socket itself (in
:meth:`~SoftQueuePair.poll_completions`, under :attr:`~SoftQueuePair.lock`)
and waits in ``poll()`` on :meth:`~SoftQueuePair.fileno`; the loop's tasks
keep off the socket meanwhile, so no wake-up is taken from under it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..._addresses import bound_tcp_socket, connect_any
from ..._tasks import Handover, serve_accepted, spawn_background
from ..base import Access, Buffer, Completion, ConnectionRequest, Disconnected, Listener, Provider, QueuePair, RdmaError
from .memory import SoftMemoryRegion
from .mpa import (
    IRD_P2P,
    MAX_PRIVATE_DATA,
    ORD_READ_RTR,
    ORD_WRITE_RTR,
    MpaError,
    MpaFrame,
    Negotiation,
    NotMpaError,
    answer_request,
    check_reply,
    reject_reply,
)
from .rdmap import DEFAULT_MAX_FPDU, IwarpQueuePair

__all__ = ["SoftIwarpProvider", "SoftQueuePair"]

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 256 * 1024
#: How long the reader task leaves the socket to a task that just took completions.
_HANDOVER_GRACE = 0.05
#: How long the loop's tasks keep off the socket before looking whether callers
#: in other threads still drive it (they wake nobody when they leave).
CALLER_GRACE = 0.02
# How long a graceful disconnect waits for the peer's FIN, discarding what
# still arrives: bytes left unread at close() turn the FIN into a reset.
_LINGER = 1.0
#: The fix, when the peer turns out to be a plain TCP service.
_GATEWAY_HINT = "; for a TCP SMB server put `smbdirect gateway` in front of it"
#: How long a responder waits for a complete MPA request (siw: 5 s).
MPA_REQUEST_TIMEOUT = 5.0


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise RdmaError(errno.ECONNRESET, f"connection closed after {len(data)} of {size} bytes of MPA setup")
        data += chunk
    return bytes(data)


async def _open_tcp(address: tuple[str, int], source: tuple[str, int] | None = None) -> trio.SocketStream:
    """A TCP connection made directly, never through trio's custom socket factory
    (which may be routing TCP to SMB-Direct, that is, back to us)."""

    def make(family: int) -> trio.socket.SocketType:
        return trio.socket.from_stdlib_socket(
            socket.socket(family) if source is None else bound_tcp_socket(family, source)
        )

    return trio.SocketStream(await connect_any(address[0], address[1], make))


async def _read_frame(stream: trio.SocketStream, *, reply: bool) -> MpaFrame:
    header = await _receive_exactly(stream, MpaFrame.HEADER_SIZE)
    _, length = MpaFrame.parse_header(header, reply=reply)
    body = await _receive_exactly(stream, length) if length else b""
    return MpaFrame.unpack(header, body, reply=reply)


def _address(sock: trio.socket.SocketType, peer: bool) -> tuple[str, int]:
    name = sock.getpeername() if peer else sock.getsockname()
    return (name[0], name[1])


class _Batch:
    """The ``with`` block of :meth:`SoftQueuePair.batch`: one write for all it posted."""

    __slots__ = ("_qp",)

    def __init__(self, qp: SoftQueuePair) -> None:
        self._qp = qp

    def __enter__(self) -> None:
        self._qp._batched += 1

    def __exit__(self, *exc: object) -> None:
        qp = self._qp
        qp._batched -= 1
        if not qp._batched:
            qp._notify()  # a receive posted to a dead queue pair completes at once
            if qp.core.wants_to_send:
                qp._transmit()


#: The live queue pairs, for a forked child to disown.
_live: weakref.WeakSet[SoftQueuePair] = weakref.WeakSet()


def _disown_after_fork() -> None:
    """In a forked child: the queue pairs are the parent's (their TCP connections
    are shared with it).  The child's copies never touch the wire again, so
    closing them leaves the parent's connections alone, as closing an inherited
    descriptor does; a lock another thread of the parent held is not inherited."""
    for qp in list(_live):
        qp.lock = threading.RLock()
        qp._callers = 0
        qp._closed = True  # nothing reads or writes the socket; it is closed with the object


os.register_at_fork(after_in_child=_disown_after_fork)


class SoftQueuePair(QueuePair):
    """A queue pair whose wire is a TCP connection.

    Posting writes to the socket at once when it can (no task switch on the
    send path); a writer task finishes what the socket did not take, and a
    reader task feeds what arrives to the queue pair.
    """

    def __init__(self, stream: trio.SocketStream, core: IwarpQueuePair, peer_private_data: bytes) -> None:
        self.core = core
        self.peer_private_data = peer_private_data
        self.initiator_depth = core.negotiation.ord
        self.responder_resources = core.negotiation.ird
        self.local_address = _address(stream.socket, peer=False)
        self.peer_address = _address(stream.socket, peer=True)
        # Take the descriptor over from trio: we drive it with wait_readable/writable.
        self._sock = socket.socket(fileno=stream.socket.detach())
        self._sock.setblocking(False)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._writable = trio.lowlevel.ParkingLot()
        self._completed = trio.lowlevel.ParkingLot()
        self._closed = False
        self._lingering = False
        # Who reads the socket: a task waiting for completions, else the reader task.
        self._handover = Handover(_HANDOVER_GRACE)  # counts the tasks waiting for completions
        self._consumer_reading = False
        self._reader_wait: trio.CancelScope | None = None
        self._consumer_wait: trio.CancelScope | None = None
        self._socket_free = trio.lowlevel.ParkingLot()
        self._batched = 0  # depth of batch() blocks: posting waits for the outermost to end
        self._batch = _Batch(self)
        #: Held by whoever touches the queue pair: the loop's tasks, or a caller in another thread.
        self.lock = threading.RLock()
        self._callers = 0  # threads outside the loop driving the queue pair now
        self._caller_left = -math.inf  # when the last one left (time.monotonic)
        #: How long the loop's tasks keep off the wire after the last caller left.
        self.caller_grace = CALLER_GRACE
        self._handed_out = False  # get_completions returned some not yet acted on
        self._reader_pause: trio.CancelScope | None = None
        self._home_thread = threading.get_ident()
        self._home = trio.lowlevel.current_trio_token()
        _live.add(self)
        self._reader_scope = spawn_background("smbdirect softiwarp reader", self._reader)
        self._writer_scope = spawn_background("smbdirect softiwarp writer", self._writer)

    # ---- verbs -------------------------------------------------------------------

    def post_recv(self, wr_id: int, buffer: memoryview) -> None:
        self.core.post_recv(wr_id, buffer)
        if not self._batched:
            self._notify()

    def post_recvs(self, first_wr_id: int, buffers: list[memoryview]) -> None:
        self.core.post_recvs(first_wr_id, buffers)
        if not self._batched:
            self._notify()

    def batch(self) -> _Batch:
        return self._batch

    def post_send(
        self,
        wr_id: int,
        data: bytes | bytearray | memoryview,
        *,
        invalidate_token: int | None = None,
        solicited: bool = False,
        signaled: bool = True,
    ) -> None:
        self.core.post_send(wr_id, data, invalidate_token=invalidate_token, solicited=solicited, signaled=signaled)
        if not self._batched:
            self._transmit()

    def post_sends(self, wr_id: int, datas: Sequence[Buffer], *, signaled: bool = False) -> None:
        self.core.post_sends(wr_id, datas, signaled=signaled)
        if not self._batched:
            self._transmit()

    def post_write(self, wr_id: int, data: bytes | bytearray | memoryview, token: int, address: int) -> None:
        self.core.post_write(wr_id, data, token, address)
        if not self._batched:
            self._transmit()

    def post_read(self, wr_id: int, into: memoryview, token: int, address: int) -> None:
        self.core.post_read(wr_id, into, token, address)
        if not self._batched:
            self._transmit()

    def poll_completions(self, max_count: int = 64) -> list[Completion]:
        if self._callers and not self._in_home():
            if self._handed_out:
                return []  # the loop's task acts on older ones first: completions stay in order
            if not self._lingering:
                self._read_once()  # a caller drives: it reads the socket itself
        return self.core.poll_many(max_count)

    def completions_taken(self) -> None:
        self._handed_out = False

    # ---- a caller in another thread drives --------------------------------------------

    def fileno(self) -> int:
        """The TCP socket: readable when :meth:`poll_completions` may find more."""
        return self._sock.fileno()

    @property
    def wants_write(self) -> bool:
        """Output waits for room in the socket (wait for it to be writable, then :meth:`flush`)."""
        return self.core.wants_to_send and not self._closed

    def flush(self) -> None:
        self._transmit()

    def caller_enters(self) -> bool:
        """A thread outside the loop starts driving (call under :attr:`lock`);
        False when this queue pair cannot be driven so."""
        self._callers += 1
        return True

    def caller_leaves(self) -> None:
        self._callers -= 1
        self._caller_left = time.monotonic()
        if not self._callers and not self.caller_grace and self._reader_pause is not None:
            self._at_home(self._reader_pause.cancel)  # the reader takes the wire again now

    @property
    def callers(self) -> int:
        return self._callers

    @property
    def callers_recent(self) -> bool:
        """Callers drive, or did within :attr:`caller_grace` (they usually come
        straight back, and taking the socket from them costs a switch)."""
        return bool(self._callers) or time.monotonic() - self._caller_left < self.caller_grace

    def _in_home(self) -> bool:
        return threading.get_ident() == self._home_thread

    def _at_home(self, fn: Callable[[], object]) -> None:
        """Have the loop's thread call ``fn`` (trio's objects are its alone)."""
        with contextlib.suppress(trio.RunFinishedError):
            self._home.run_sync_soon(fn)

    async def get_completions(self, max_count: int = 64) -> list[Completion]:
        """Wait for completions; a waiting task reads the socket itself.

        Reading in the waiting task saves the hop through the reader task,
        which only reads while nobody waits here (it must answer RDMA reads
        and notice a Terminate even then).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._handover.enter()
        try:
            blocked = False
            while True:
                with self.lock:  # a caller in another thread may be taking them too
                    completions = self.core.poll_many(max_count)
                    # Until they are acted on (completions_taken), callers take none after them.
                    self._handed_out = bool(completions)
                if completions:
                    if not blocked:
                        await trio.lowlevel.cancel_shielded_checkpoint()  # cancelled, they would be lost
                    return completions
                if self.core.error is not None:
                    raise self.core.error
                if self.core.closed or self._closed:
                    raise RdmaError(errno.EPIPE, "queue pair is disconnected")
                blocked = True
                if self._callers:
                    return []  # a caller in another thread reads the socket: ask again later
                if self._reader_wait is not None:
                    self._reader_wait.cancel()  # take the socket over from the reader task
                    await self._socket_free.park()
                elif self._consumer_reading:
                    await self._completed.park()
                else:
                    self._consumer_reading = True
                    try:
                        with trio.CancelScope() as self._consumer_wait:
                            await trio.lowlevel.wait_readable(self._sock)
                    except trio.ClosedResourceError:
                        continue
                    finally:
                        self._consumer_wait = None
                        self._consumer_reading = False
                        self._completed.unpark_all()  # another waiter may read now
                    with self.lock:
                        if not self._callers:
                            self._read_once()
        finally:
            self._handover.leave()

    def register(self, buffer: memoryview, access: Access) -> SoftMemoryRegion:
        return self.core.register(buffer, access)

    def deregister(self, region: SoftMemoryRegion) -> None:  # type: ignore[override]
        with self.lock:
            self.core.deregister(region)

    def invalidate(self, region: SoftMemoryRegion) -> None:  # type: ignore[override]
        with self.lock:
            self.core.invalidate(region.token)  # local invalidate: as a send with invalidate would

    @property
    def error(self) -> RdmaError | None:
        return self.core.error

    async def disconnect(self) -> None:
        """Send what was posted, flush the rest and close TCP gracefully (a FIN, no Terminate)."""
        with self.lock:
            self.core.close()
        self._notify()  # tasks waiting for completions see the close and leave
        while self._handover.tasks and not self._closed:
            await self._handover.wait_free()
        if not self._closed:
            await self._linger()
        self._close_socket()
        self._notify()
        await trio.lowlevel.checkpoint()

    async def _linger(self) -> None:
        """Finish sending, send our FIN, then read and drop what still comes until the peer's."""
        self._lingering = True  # the reader and writer tasks let go of the socket
        self._reader_scope.cancel()
        self._writer_scope.cancel()
        with trio.move_on_after(_LINGER), contextlib.suppress(OSError):
            while self.core.wants_to_send and not self._closed:
                await self._wait(trio.lowlevel.wait_writable)
                with self.lock:  # a caller may still be leaving
                    self._transmit()
            self._sock.shutdown(socket.SHUT_WR)
            while True:
                await self._wait(trio.lowlevel.wait_readable)
                try:
                    if not self._sock.recv(_RECEIVE_SIZE):
                        return
                except BlockingIOError:
                    continue

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Wait for the socket once a cancelled reader or writer task has let go of it."""
        while True:
            try:
                return await wait(self._sock)
            except trio.BusyResourceError:
                await trio.sleep(0)

    # ---- I/O ---------------------------------------------------------------------

    def _transmit(self) -> None:
        """Write what the socket takes now; the writer task waits for the rest."""
        core = self.core
        while core.wants_to_send and not self._closed:
            try:
                sent = self._sock.sendmsg(core.output())
            except BlockingIOError:
                if self._in_home():
                    self._writable.unpark_all()
                else:
                    self._at_home(self._writable.unpark_all)  # the writer finishes it
                return
            except OSError as exc:
                self._lost(RdmaError(errno.ECONNRESET, f"connection lost: {exc}"))
                return
            core.written(sent)
            self._notify()
        if core.error is not None and not core.wants_to_send:
            self._close_socket()  # the Terminate is out: close, as siw does

    def _notify(self) -> None:
        """Wake the tasks waiting for completions, the one reading the socket too,
        if there is anything for them: completions, or the end."""
        core = self.core
        if not (core.completions_ready or core.closed or core.error is not None or self._closed):
            return
        if not self._in_home():
            if self._completed or self._consumer_wait is not None:
                self._at_home(self._notify)
            return
        if self._completed:
            self._completed.unpark_all()
        if self._consumer_wait is not None:
            self._consumer_wait.cancel()

    def _lost(self, error: RdmaError) -> None:
        self.core.connection_lost(error)
        self._close_socket()
        self._notify()

    def _close_socket(self) -> None:
        if not self._closed:
            self._closed = True  # from here on nobody touches the socket
            if self._in_home():
                self._release_socket()
            else:
                self._at_home(self._release_socket)

    def _release_socket(self) -> None:
        self._reader_scope.cancel()
        self._writer_scope.cancel()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        self._handover.release()
        self._socket_free.unpark_all()

    def _read_once(self) -> None:
        """Read what the socket has and feed it to the queue pair."""
        if self._closed:
            return
        try:
            count = self._sock.recv_into(self.core.read_buffer())
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(RdmaError(errno.ECONNRESET, f"connection lost: {exc}"))
            return
        if not count:
            if not self.core.closed:
                self._lost(Disconnected(errno.ECONNRESET, "peer closed the connection"))
            return
        self.core.received(count)
        self._notify()
        self._transmit()

    async def _reader(self) -> None:
        """Read while no task waits for completions."""
        while not (self._closed or self._lingering):
            await self._handover.background_turn()
            if self._closed or self._lingering:
                return
            if self.callers_recent:
                with trio.CancelScope() as self._reader_pause:
                    await trio.sleep(CALLER_GRACE)  # a caller in another thread reads the socket
                self._reader_pause = None
                continue
            with trio.CancelScope() as self._reader_wait:
                await trio.lowlevel.wait_readable(self._sock)
            self._reader_wait = None
            self._socket_free.unpark_all()
            with self.lock:
                if not (self._handover.tasks or self._callers):
                    self._read_once()

    async def _writer(self) -> None:
        """Finish writes the socket could not take at once."""
        while not (self._closed or self._lingering):
            if self.core.wants_to_send:
                await trio.lowlevel.wait_writable(self._sock)
                with self.lock:
                    self._transmit()
            else:
                await self._writable.park()


class SoftConnectionRequest(ConnectionRequest):
    def __init__(self, provider: SoftIwarpProvider, stream: trio.SocketStream, request: MpaFrame) -> None:
        self._provider = provider
        self._stream = stream
        self._request = request
        self.private_data = request.private_data
        self.initiator_depth = (request.ord or 0) & 0x3FFF
        self.responder_resources = (request.ird or 0) & 0x3FFF
        self.peer_address = _address(stream.socket, peer=True)
        self._answered = False

    async def accept(
        self, private_data: bytes = b"", *, initiator_depth: int = 1, responder_resources: int = 1
    ) -> SoftQueuePair:
        self._answer()
        reply, negotiation = answer_request(
            self._request,
            private_data,
            initiator_depth=initiator_depth,
            responder_resources=responder_resources,
            want_crc=self._provider.crc,
        )
        try:
            await self._stream.send_all(reply.pack())
        except (trio.BrokenResourceError, OSError) as exc:
            raise RdmaError(errno.ECONNABORTED, f"peer went away during MPA setup: {exc}") from None
        return SoftQueuePair(self._stream, self._provider.make_core(negotiation, initiator=False), self.private_data)

    async def reject(self, private_data: bytes = b"") -> None:
        self._answer()
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await self._stream.send_all(reject_reply(self._request, private_data).pack())
        await self._stream.aclose()

    def _answer(self) -> None:
        if self._answered:
            raise RdmaError(errno.EINVAL, "connection request already answered")
        self._answered = True


class SoftListener(Listener):
    def __init__(self, provider: SoftIwarpProvider, listener: trio.SocketListener, backlog: int) -> None:
        self._provider = provider
        self._listener = listener
        self.address = _address(listener.socket, peer=False)
        self._send, self._receive = trio.open_memory_channel[SoftConnectionRequest](max(backlog, 1))
        self._scope = spawn_background("smbdirect softiwarp listener", self._accept_loop)
        #: Why recent connection attempts failed (bad MPA requests), newest last.
        self.rejected: list[str] = []

    async def _accept_loop(self) -> None:
        await serve_accepted(self._listener.accept, self._handshake, f"software iWARP listener {self.address}")

    async def _handshake(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(MPA_REQUEST_TIMEOUT):
                request = await _read_frame(stream, reply=False)
            if request.markers:
                raise MpaError("peer asked for MPA markers", reply=reject_reply(request))
        except MpaError as exc:
            self._note(str(exc))
            if isinstance(exc, NotMpaError):
                log.info(
                    "client %s: not MPA (a plain TCP client? use `smbdirect run` or patch())",
                    _address(stream.socket, peer=True)[0],
                )
            if exc.reply is not None:
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await stream.send_all(exc.reply.pack())
            await stream.aclose()
            return
        except (trio.TooSlowError, RdmaError, trio.BrokenResourceError, OSError) as exc:
            self._note(f"MPA request not received: {exc or 'timed out'}")
            await stream.aclose()
            return
        try:
            # A full backlog holds the initiator in MPA setup until accept() catches up.
            await self._send.send(SoftConnectionRequest(self._provider, stream, request))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()

    def _note(self, reason: str) -> None:
        self.rejected = [*self.rejected[-15:], reason]

    async def get_request(self) -> SoftConnectionRequest:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise RdmaError(errno.EBADF, "listener is closed") from None

    async def aclose(self) -> None:
        self._scope.cancel()
        await self._listener.aclose()
        await self._receive.aclose()


class SoftIwarpProvider(Provider):
    """Software iWARP over TCP.

    ``crc`` asks for MPA CRC32C (it is on when either side asks);
    ``peer_to_peer`` makes the initiator offer RFC 6581 ready-to-receive;
    ``max_fpdu`` bounds the FPDUs we build; ``siw_terminate_layout`` emits
    Terminates with Linux siw's x86 bit layout instead of RFC 5040's.
    """

    name = "softiwarp"

    def __init__(
        self,
        *,
        crc: bool = False,
        peer_to_peer: bool = False,
        max_fpdu: int = DEFAULT_MAX_FPDU,
        siw_terminate_layout: bool = False,
    ) -> None:
        self.crc = crc
        self.peer_to_peer = peer_to_peer
        self.max_fpdu = max_fpdu
        self.siw_terminate_layout = siw_terminate_layout

    def make_core(self, negotiation: Negotiation, *, initiator: bool) -> IwarpQueuePair:
        return IwarpQueuePair(
            negotiation, initiator=initiator, max_fpdu=self.max_fpdu, siw_terminate_layout=self.siw_terminate_layout
        )

    async def connect(
        self,
        address: tuple[str, int],
        private_data: bytes = b"",
        *,
        initiator_depth: int = 1,
        responder_resources: int = 1,
        timeout: float = 5.0,
        source: tuple[str, int] | None = None,
    ) -> SoftQueuePair:
        if len(private_data) > MAX_PRIVATE_DATA - 4:
            raise RdmaError(errno.EINVAL, f"private data of {len(private_data)} bytes exceeds {MAX_PRIVATE_DATA - 4}")
        ird, ord_ = min(responder_resources, 0x3FFF), min(initiator_depth, 0x3FFF)
        if self.peer_to_peer:
            ird |= IRD_P2P
            ord_ |= ORD_WRITE_RTR | ORD_READ_RTR
        request = MpaFrame(reply=False, revision=2, crc=self.crc, ird=ird, ord=ord_, private_data=private_data)
        where = f"{address[0]}:{address[1]}"
        answered = False  # TCP is up and the MPA request sent: only the reply is missing
        try:
            with trio.fail_after(timeout):
                stream = await _open_tcp(address, source)
                try:
                    await stream.send_all(request.pack())
                    answered = True
                    reply = await _read_frame(stream, reply=True)
                    if reply.reject:
                        raise RdmaError(errno.ECONNREFUSED, "connection rejected by the peer (MPA reject)")
                    negotiation = check_reply(request, reply)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except trio.TooSlowError:
            if answered:
                raise RdmaError(
                    errno.ETIMEDOUT,
                    f"RDMA connect to {where} timed out: no MPA reply: the peer accepted TCP but does not speak "
                    f"iWARP/SMB-Direct{_GATEWAY_HINT}",
                ) from None
            raise RdmaError(errno.ETIMEDOUT, f"RDMA connect to {where} timed out") from None
        except NotMpaError as exc:
            # siw fails such a reply with EPROTO: something answered, in another protocol.
            what = "echoed our MPA request" if exc.echoed else f"answered with non-MPA bytes ({exc.key!r})"
            raise RdmaError(
                errno.EPROTO,
                f"the peer at {where} {what}: it is a plain TCP service, not SMB-Direct/iWARP{_GATEWAY_HINT}",
            ) from None
        except MpaError as exc:  # a reply we cannot work with
            raise RdmaError(errno.ECONNABORTED, str(exc)) from None
        except trio.BrokenResourceError as exc:
            raise RdmaError(errno.ECONNRESET, f"connection lost during MPA setup: {exc}") from None
        return SoftQueuePair(stream, self.make_core(negotiation, initiator=True), reply.private_data)

    def listen(self, address: tuple[str, int], backlog: int = 10, *, sock: socket.socket | None = None) -> SoftListener:
        """Listen on ``address`` (or on ``sock``, a TCP socket already bound there)."""
        if sock is None:
            sock = bound_tcp_socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, address)
        # The TCP queue is kept long: a dropped SYN costs the initiator a second's
        # retransmission; the backlog that counts is the one of connection requests.
        sock.listen(max(backlog, socket.SOMAXCONN))
        return SoftListener(self, trio.SocketListener(trio.socket.from_stdlib_socket(sock)), backlog)
