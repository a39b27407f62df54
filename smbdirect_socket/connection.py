"""One SMB-Direct connection: the sans-IO protocol driven over a queue pair.

:class:`Connection` posts the receives the protocol asks for, sends its PDUs,
feeds it receive completions and the trio clock, and wakes the tasks that
wait to send or receive.

Completions are polled by one task at a time.  A task waiting to send or
receive polls the queue pair itself, so a message costs no switch to another
task, the way a TCP socket's reader is woken by the kernel directly; while
no such task waits, a background task polls (so the peer's keepalives and
credits are answered) and it always runs the protocol's timers (negotiate,
idle, keepalive).  Senders post their own fragments.

A thread outside the connection's trio loop drives it the same way with
:meth:`Connection.drive`, as a caller drives a kernel socket: it tries the
operation, polls the queue pair itself, and sleeps in ``poll()`` on the
queue pair's descriptor (the GIL released) until there may be more.  The
loop's tasks keep off the wire meanwhile and take over again once it leaves.
:attr:`Connection.lock` keeps the protocol and the queue pair to one
thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import select
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

import attrs
import trio

from ._tasks import Handover
from .errors import LocalProtocolError, RemoteProtocolError, socket_error
from .options import SocketInfo
from .parameters import Parameters
from .pdu import BufferDescriptorV1
from .protocol import (
    Action,
    Disconnect,
    Negotiated,
    PostReceives,
    Role,
    SendFragments,
    SendPDU,
    SMBDirectProtocol,
    State,
)
from .rdma import (
    Access,
    Completion,
    ConnectionRequest,
    Disconnected,
    MemoryRegion,
    Opcode,
    Provider,
    QueuePair,
    RdmaError,
    Status,
)

__all__ = ["Connection", "Registration"]

T = TypeVar("T")

_RECEIVE_WR_BASE = 1 << 32  # receive work request ids; sends use small ids
_RDMA_WR_BASE = 1 << 48  # RDMA read/write work request ids
#: How long the background task leaves the polling to a task that just polled:
#: such a task usually comes straight back, and taking it over costs a switch
#: (the background task wakes at most once a grace while tasks come and go).
_HANDOVER_GRACE = 0.02
#: The same while a program waits on the socket's descriptor between calls:
#: its readiness must follow the data.
_WATCHED_GRACE = 0.001
#: How long a connection that ends may take to disconnect (the providers' own
#: lingers are shorter: this only bounds one that waits for what never comes).
_DISCONNECT_BOUND = 5.0
#: Completions taken at once: one TCP read of the software provider brings hundreds.
_POLL_BATCH = 1024
_RECV = Opcode.RECV
_SUCCESS = Status.SUCCESS
#: How often the loop's tasks look whether callers in other threads still
#: drive (they wake nobody when they leave: the next look finds them gone).
_CALLER_GRACE = 0.02
#: How often a caller looks again when it cannot be woken: the queue pair's
#: descriptor is closed already, or the process had no descriptor for its waker.
_LOOK = 0.01


class _Waker:
    """A thread's own eventfd, set when another thread changed the connection it
    sleeps on, and the ``poll`` it sleeps in."""

    def __init__(self) -> None:
        self._poll = select.poll()
        try:
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:  # out of descriptors: this sleeper looks again every _LOOK instead
            self.fd = -1
        else:
            self._poll.register(self.fd, select.POLLIN)

    def set(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.fd, 1)

    def sleep(self, descriptor: int, writing: bool, timeout: float | None) -> int:
        """Sleep (the GIL released) until ``descriptor`` is ready or this waker is
        set; the descriptor's events."""
        poll = self._poll
        if descriptor < 0 or self.fd < 0:
            # The wire is closing (its completions are moments away), or nobody can
            # wake this sleeper: look again soon.
            timeout = _LOOK if timeout is None else min(timeout, _LOOK)
        if descriptor >= 0:
            poll.register(descriptor, select.POLLIN | select.POLLOUT if writing else select.POLLIN)
        try:
            ready = poll.poll(None if timeout is None else math.ceil(timeout * 1000))
        finally:
            if descriptor >= 0:
                poll.unregister(descriptor)
        events = 0
        for fd, event in ready:
            if fd == descriptor:
                events = event
            else:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.fd)  # taken: the caller looks again
        return events

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


_thread_state = threading.local()
#: The live connections, whose locks a forked child takes from their queue pairs anew.
_live: weakref.WeakSet[Connection] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _thread_state
    _thread_state = threading.local()  # the parent's eventfd is not this process's to wait on
    for connection in list(_live):
        connection._sleepers = set()  # the parent's threads


os.register_at_fork(after_in_child=_after_fork_in_child)


def _waker() -> _Waker:
    waker: _Waker | None = getattr(_thread_state, "waker", None)
    if waker is None:
        waker = _Waker()
        if waker.fd >= 0:  # one that could not get its eventfd tries again next time
            _thread_state.waker = waker
    return waker


#: Receive slabs from this size on are anonymous mappings: their pages are
#: zeroed by the kernel when first written, so buffers posted ahead (255 of
#: 64 KiB with large messages) cost nothing until messages arrive.
_MAPPED_SLAB = 256 * 1024


def _receive_slab(size: int) -> memoryview:
    """Memory for receives posted together, which their buffers slice (it lives
    as long as any of them)."""
    if size >= _MAPPED_SLAB:
        return memoryview(mmap.mmap(-1, size))
    return memoryview(bytearray(size))


class NotDriven(Exception):
    """:meth:`Connection.drive` cannot drive this connection from here (the
    provider cannot be driven from another thread): go through its loop."""


@attrs.frozen
class Registration:
    """A buffer the peer may RDMA-read (and, if writable, RDMA-write)."""

    region: MemoryRegion
    descriptors: list[BufferDescriptorV1]

    def pack(self) -> bytes:
        """The Buffer Descriptor V1 list as SMB2 READ/WRITE channel info carries it."""
        return BufferDescriptorV1.pack_list(self.descriptors)


def iwarp_private_data(parameters: Parameters) -> bytes:
    """What Linux puts in iWARP connect private data: be32 IRD, be32 ORD (ksmbd reads it)."""
    return struct.pack("!II", parameters.responder_resources, parameters.initiator_depth)


#: What an over-size message suggests (SMB clients size their messages by the server's limits).
_TOO_LARGE_HINT = (
    "; for an SMB client call smbdirect_socket.smb.clients.fit_sizes() (patch() and run do),"
    " or negotiate larger messages: Parameters().with_large_messages(), `smbdirect run --large-messages`"
)


class Connection:
    """An SMB-Direct connection over any engine provider."""

    def __init__(self, qp: QueuePair, protocol: SMBDirectProtocol) -> None:
        self.qp = qp
        self.protocol = protocol
        # The loop the connection lives on, and its clock (read from any thread).
        self._home = trio.lowlevel.current_trio_token()
        self._home_thread = threading.get_ident()
        self._clock = trio.lowlevel.current_clock()
        self._sleepers: set[_Waker] = set()  # callers in other threads asleep in poll()
        self._home_parked = 0  # the loop's tasks parked while a caller drives
        self._disconnecting = False
        self._caller_pause: trio.CancelScope | None = None  # the background task's, while callers drive
        _live.add(self)
        self._receive_buffers: dict[int, memoryview] = {}
        self._next_receive = _RECEIVE_WR_BASE
        self._changed = trio.lowlevel.ParkingLot()
        # The background task's cancel scope while it polls the queue pair (a
        # waiting task takes the polling from it), and whether a waiting task polls.
        self._poller: trio.CancelScope | None = None
        self._polling = False
        self._handover = Handover(_HANDOVER_GRACE)  # counts the tasks polling
        self._timer: trio.CancelScope | None = None  # the background task's, due at the protocol's deadline
        self._done = trio.Event()
        self._scope: trio.CancelScope | None = None
        #: Called after every change of state, data or credits.
        self.on_change: list[Callable[[], None]] = []
        self._next_rdma = _RDMA_WR_BASE
        self._rdma_results: dict[int, Completion | None] = {}
        self.rdma_reads = 0
        self.rdma_writes = 0

    # ---- set-up -------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        provider: Provider,
        address: tuple[str, int],
        parameters: Parameters | None = None,
        source: tuple[str, int] | None = None,
    ) -> Connection:
        """Connect RDMA (from ``source``, if given), then negotiate SMB-Direct as the client."""
        parameters = parameters or Parameters()
        try:
            qp = await provider.connect(
                address,
                iwarp_private_data(parameters),
                initiator_depth=parameters.initiator_depth,
                responder_resources=parameters.responder_resources,
                timeout=parameters.rdma_connect_timeout_msec / 1000,
                source=source,
            )
        except RdmaError as exc:
            raise socket_error(exc) from None
        except OSError as exc:  # nothing answered there
            raise socket_error(errno.ECONNREFUSED, f"RDMA connect to {address[0]}:{address[1]} failed: {exc}") from None
        connection = cls(qp, SMBDirectProtocol(Role.CLIENT, parameters))
        await connection._negotiate()
        return connection

    @classmethod
    async def accept(cls, request: ConnectionRequest, parameters: Parameters | None = None) -> Connection:
        """Accept an RDMA connection request, then negotiate as the server."""
        parameters = parameters or Parameters()
        qp = await request.accept(
            initiator_depth=parameters.initiator_depth, responder_resources=parameters.responder_resources
        )
        connection = cls(qp, SMBDirectProtocol(Role.SERVER, parameters))
        await connection._negotiate()
        return connection

    async def _negotiate(self) -> None:
        with self.lock:
            self.protocol.start(trio.current_time())
            self._carry_out()  # the first receive is posted before anything can arrive
        trio.lowlevel.spawn_system_task(self._run, name="smbdirect connection")
        while self.protocol.state is State.NEGOTIATING:
            await self.wait_changed()
        # Nobody receives until the program comes: the background task answers
        # what follows negotiation (the peer's first credits) now.
        self._handover.hand_back()
        if self.protocol.state is not State.CONNECTED:
            raise socket_error(self.protocol.error or errno.ECONNABORTED, "negotiation failed")

    # ---- data ---------------------------------------------------------------------

    @property
    def negotiated(self) -> Negotiated:
        assert self.protocol.negotiated is not None
        return self.protocol.negotiated

    async def send_message(self, payload: bytes | bytearray | memoryview, invalidate_token: int | None = None) -> None:
        """Send one message; return once all its fragments are posted."""
        self.queue_message(payload, invalidate_token)
        await self.wait_sent()

    async def wait_sent(self) -> None:
        """Wait until every queued fragment is posted (they may wait for credits)."""
        waited = False
        while self.protocol.pending_send_bytes and self.protocol.state is State.CONNECTED:
            await self.wait_changed()
            waited = True
        self._raise_if_failed()
        if not waited:
            await trio.lowlevel.checkpoint()

    @property
    def lock(self) -> threading.RLock:
        """Held while the protocol or the queue pair is touched (the queue pair's own lock)."""
        return self.qp.lock

    def queue_message(self, payload: bytes | bytearray | memoryview, invalidate_token: int | None = None) -> None:
        """Queue one message and post what credits allow of it now."""
        with self.lock:
            try:
                self.protocol.send_message(payload, invalidate_token=invalidate_token)
            except LocalProtocolError as exc:
                if exc.errno == errno.EMSGSIZE:  # most often an SMB client sizing its messages by the server
                    raise socket_error(exc.errno, f"{exc}{_TOO_LARGE_HINT}") from None
                raise socket_error(exc) from None
            self._carry_out()

    def check_sent(self) -> None:
        """Return once every queued fragment is posted; ``BlockingIOError`` while
        some wait for credits; the connection's error once it has ended."""
        if self.protocol.pending_send_bytes and self.protocol.state is State.CONNECTED:
            raise BlockingIOError(errno.EAGAIN, "waiting for send credits")
        self._raise_if_failed()

    async def wait_changed(self) -> None:
        """Wait until something may have happened: data, credits, the end of the connection.

        It may return with nothing new (callers check their condition again).
        """
        poller = self._poller
        if not self._open():
            await trio.lowlevel.checkpoint()
            return
        with self.lock:
            parked = bool(self.qp.callers)  # (one driving now, not lately: then we drive)
            if parked:  # a caller in another thread drives: it wakes us (the count, under the lock, tells it)
                self._home_parked += 1
        if parked:
            try:
                # Woken by the caller's changes; the timeout looks whether it has gone.
                with trio.move_on_after(_CALLER_GRACE):
                    await self._changed.park()
            finally:
                self._home_parked -= 1
            return
        if poller is None and not self._polling:
            await self._poll_here()
            return
        if poller is not None:
            # The background task polls: take the polling over (we are woken
            # when it is free, and the background task keeps off for its grace).
            self._handover.hold()
            poller.cancel()
        await self._changed.park()

    async def wait_writable(self) -> None:
        while not self.protocol.can_send and self.protocol.state is State.CONNECTED:
            await self.wait_changed()

    @property
    def established(self) -> bool:
        """Negotiated and not ended."""
        return self.protocol.state is State.CONNECTED

    @property
    def ended(self) -> bool:
        """Closed, failed or left by the peer: nothing more will arrive."""
        return self.protocol.state is State.CLOSED

    @property
    def readable(self) -> int:
        """Bytes reassembled and waiting to be read."""
        return self.protocol.readable

    @property
    def can_send(self) -> bool:
        """A data message may go now (credits allow it: the last one never carries data)."""
        return self.protocol.can_send

    @property
    def local_address(self) -> tuple[str, int]:
        return self.qp.local_address

    @property
    def peer_address(self) -> tuple[str, int]:
        return self.qp.peer_address

    def read(self, nbytes: int) -> bytes:
        with self.lock:
            data = self.protocol.read(nbytes)
            self._carry_out()  # buffers freed by reading are reposted and granted
        return data

    def read_into(self, out: bytearray, nbytes: int) -> None:
        """:meth:`read`, appending to ``out``."""
        with self.lock:
            self.protocol.read_into(out, nbytes)
            self._carry_out()

    def consume_message_start(self) -> int:
        with self.lock:
            length = self.protocol.consume_message_start()
            self._carry_out()
        return length

    def message_start(self) -> int | None:
        return self.protocol.message_start()

    # ---- RDMA read and write ------------------------------------------------------

    def register(self, buffer: memoryview, *, writable: bool = False) -> Registration:
        """Register ``buffer`` for the peer: readable, and writable if asked."""
        self._raise_if_failed()
        view = memoryview(buffer).cast("B")
        access = Access.REMOTE_READ | (Access.REMOTE_WRITE | Access.LOCAL_WRITE if writable else 0)
        try:
            with self.lock:
                region = self.qp.register(view, access)
        except ValueError as exc:
            raise socket_error(errno.EINVAL, str(exc)) from None
        return Registration(region, [BufferDescriptorV1(region.address, region.token, len(view))])

    def deregister(self, registration: Registration) -> None:
        with self.lock:
            self.qp.deregister(registration.region)

    async def rdma_read(self, into: memoryview, descriptors: list[BufferDescriptorV1]) -> None:
        """Fill ``into`` from the peer's buffers, in descriptor order."""
        await self._rdma(into, descriptors, read=True)

    async def rdma_write(self, data: bytes | bytearray | memoryview, descriptors: list[BufferDescriptorV1]) -> None:
        """Write ``data`` into the peer's buffers, in descriptor order."""
        await self._rdma(data, descriptors, read=False)

    async def _rdma(
        self, buffer: bytes | bytearray | memoryview, descriptors: list[BufferDescriptorV1], *, read: bool
    ) -> None:
        wr_ids = self.start_rdma(buffer, descriptors, read=read)
        try:
            while True:
                try:
                    self.finish_rdma(wr_ids, read=read)
                    break
                except BlockingIOError:
                    await self.wait_changed()
        finally:
            self.forget_rdma(wr_ids)
        await trio.lowlevel.checkpoint()

    def start_rdma(
        self, buffer: bytes | bytearray | memoryview, descriptors: list[BufferDescriptorV1], *, read: bool
    ) -> list[int]:
        """Post an RDMA read into ``buffer`` (or a write from it) of the peer's
        buffers, in descriptor order; the work requests to :meth:`finish_rdma`."""
        view = memoryview(buffer).cast("B")
        if read and view.readonly:
            raise socket_error(errno.EINVAL, "rdma_read needs a writable buffer")
        self._raise_if_failed()
        total = sum(d.length for d in descriptors)
        if total != len(view):
            raise socket_error(errno.EINVAL, f"descriptors cover {total} bytes, the buffer has {len(view)}")
        limit = self.negotiated.max_read_write_size
        if limit and total > limit:
            raise socket_error(errno.EMSGSIZE, f"{total} bytes exceed the negotiated max read/write size {limit}")
        wr_ids: list[int] = []
        offset = 0
        with self.lock:
            for descriptor in descriptors:
                part = view[offset : offset + descriptor.length]
                offset += descriptor.length
                wr_id = self._next_rdma
                self._next_rdma += 1
                try:
                    if read:
                        self.qp.post_read(wr_id, part, descriptor.token, descriptor.offset)
                    else:
                        self.qp.post_write(wr_id, part, descriptor.token, descriptor.offset)
                except RdmaError as exc:
                    self.forget_rdma(wr_ids)
                    raise socket_error(exc) from None
                self._rdma_results[wr_id] = None
                wr_ids.append(wr_id)
        return wr_ids

    def finish_rdma(self, wr_ids: list[int], *, read: bool) -> None:
        """Return once the work requests of :meth:`start_rdma` completed
        (``BlockingIOError`` while some have not); raise their failure."""
        results = [self._rdma_results.get(w) for w in wr_ids]
        if None in results and self.protocol.state is not State.CLOSED:
            raise BlockingIOError(errno.EAGAIN, "RDMA transfer in progress")
        self.forget_rdma(wr_ids)
        for result in results:
            if result is None:
                self._raise_if_failed()
                raise socket_error(errno.ECONNRESET, "connection ended during the RDMA transfer")
            if result.status is not Status.SUCCESS:
                raise socket_error(
                    errno.EREMOTEIO,
                    f"RDMA {'read' if read else 'write'} failed: {result.reason or result.status.value}",
                )
        if read:
            self.rdma_reads += 1
        else:
            self.rdma_writes += 1

    def forget_rdma(self, wr_ids: list[int]) -> None:
        """Stop keeping the results of these work requests (a wait that ends early)."""
        for w in wr_ids:
            self._rdma_results.pop(w, None)

    @property
    def error(self) -> OSError | None:
        """Why the connection ended, as a kernel socket reports it (None while it is up)."""
        error = self.protocol.error
        return None if error is None else socket_error(error)

    @property
    def at_eof(self) -> bool:
        """The peer disconnected in good order and every byte it sent was read."""
        return isinstance(self.protocol.error, Disconnected) and not self.protocol.readable

    def _raise_if_failed(self) -> None:
        if self.protocol.state is State.CLOSED:
            raise self.error or socket_error(errno.EPIPE, "connection is closed")

    def close_nowait(self) -> None:
        """Start tearing the connection down (there is no half-close, as in the
        kernel); the background task finishes it."""
        with self.lock:
            self.protocol.close()
            self._carry_out()

    async def aclose(self) -> None:
        """Tear the connection down and wait until it is."""
        self.close_nowait()
        with trio.CancelScope(shield=True):
            await self._done.wait()

    def info(self, state: int) -> SocketInfo:
        """The ``SMBDIRECT_INFO`` statistics, with the socket's ``state``."""
        with self.lock:
            return self._info(state)

    def _info(self, state: int) -> SocketInfo:
        protocol = self.protocol
        negotiated = protocol.negotiated
        sizes = attrs.astuple(negotiated)[:5] if negotiated is not None else (0, 0, 0, 0, 0)
        stats = protocol.statistics
        values: list[int] = [
            state,
            protocol.send_credits,
            protocol.receive_credits,
            protocol.receive_credit_target,
            *sizes,
            stats.bytes_sent,
            stats.bytes_received,
            stats.messages_sent,
            stats.messages_received,
            stats.fragments_sent,
            stats.fragments_received,
            stats.keepalives_sent,
            stats.credit_messages_sent,
            self.rdma_reads,
            self.rdma_writes,
            int(protocol.error is not None and not isinstance(protocol.error, OSError)),
        ]
        return SocketInfo(*values)

    # ---- the engine side ------------------------------------------------------------

    def _carry_out(self) -> None:
        """Do what the protocol asked: post receives, post sends, disconnect (under :attr:`lock`)."""
        protocol = self.protocol
        actions = protocol.actions()
        if actions:
            self._post(actions)
        # Events only repeat what protocol.state and protocol.error say: drop them.
        while protocol.next_event() is not None:
            pass
        if threading.get_ident() == self._home_thread:
            self._wake_home()
        elif self._home_parked or self._changed or self._disconnecting or protocol.state is State.CLOSED:
            # (The protocol's deadlines only move later here: the loop's timer stands.)
            with contextlib.suppress(trio.RunFinishedError):
                self._home.run_sync_soon(self._wake_home)
        if self._sleepers:
            for sleeper in self._sleepers:
                sleeper.set()  # callers asleep in other threads look again
        for callback in self.on_change:
            callback()

    def _post(self, actions: list[Action]) -> None:
        qp = self.qp
        sends: list[bytes] = []  # a run of plain sends (a message's fragments) is posted as one
        with qp.batch():  # all of it goes out in one write
            for action in actions:
                if type(action) is SendFragments:
                    sends += action.datas
                    continue
                if type(action) is SendPDU and action.invalidate_token is None:
                    sends.append(action.data)
                    continue
                if sends:
                    self._post_sends(sends)
                    sends = []
                if isinstance(action, SendPDU):
                    try:
                        qp.post_send(0, action.data, invalidate_token=action.invalidate_token, signaled=False)
                    except RdmaError as exc:
                        self.protocol.connection_lost(exc)
                elif isinstance(action, PostReceives):
                    size = action.size
                    slab = _receive_slab(action.count * size)
                    buffers = [slab[offset : offset + size] for offset in range(0, action.count * size, size)]
                    first = self._next_receive
                    self._next_receive += action.count
                    self._receive_buffers.update(zip(range(first, self._next_receive), buffers, strict=True))
                    try:
                        qp.post_recvs(first, buffers)
                    except RdmaError as exc:  # the queue pair failed before the protocol heard of it
                        self.protocol.connection_lost(exc)
                elif isinstance(action, Disconnect):
                    self._disconnecting = True
            if sends:
                self._post_sends(sends)

    def _post_sends(self, datas: list[bytes]) -> None:
        try:
            # Unsignaled: only a failure completes (nothing waits for a send's success).
            self.qp.post_sends(0, datas, signaled=False)
        except RdmaError as exc:
            self.protocol.connection_lost(exc)

    def _wake_home(self) -> None:
        """On the loop's thread: end, re-time and wake what waits there."""
        if self._disconnecting and self._scope is not None:
            self._scope.cancel()
        if self._caller_pause is not None and not self.qp.callers_recent:
            self._caller_pause.cancel()
        if self._poller is not None and self.protocol.state is State.CLOSED:
            self._poller.cancel()  # a waiting task looks again: it must not wait for the wire
        deadline = self.protocol.next_deadline()
        if deadline is not None and self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline
        if self._changed:  # (an empty parking lot still costs a few calls)
            self._changed.unpark_all()

    # ---- a caller in another thread drives ---------------------------------------------

    def drive(self, attempt: Callable[[], T], deadline: float | None) -> T:
        """Call ``attempt()`` (under :attr:`lock`) until it returns instead of
        raising ``BlockingIOError``, driving the connection from this thread in
        between: poll the queue pair, act on what completed, and sleep in
        ``poll()`` on its descriptor until there may be more.

        ``deadline`` (``time.monotonic``) bounds the wait: past it the
        ``BlockingIOError`` passes (a deadline of 0, non-blocking, tries
        twice and waits never).  Raises :class:`NotDriven` when the
        provider cannot be driven from another thread.
        """
        qp = self.qp
        lock = self.lock
        with lock:
            if not qp.caller_enters():
                raise NotDriven
        waker: _Waker | None = None
        try:
            while True:
                with lock:
                    try:
                        return attempt()
                    except BlockingIOError as exc:
                        blocked = exc
                    if self._drive_once():
                        try:
                            return attempt()
                        except BlockingIOError as exc:
                            blocked = exc
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        raise blocked
                    waker = waker or _waker()
                    self._sleepers.add(waker)
                    writing = qp.wants_write
                    descriptor = qp.fileno()
                try:
                    ready = waker.sleep(descriptor, writing, timeout)
                finally:
                    with lock:
                        self._sleepers.discard(waker)
                if ready & select.POLLOUT:
                    with lock:
                        qp.flush()
        finally:
            with lock:
                qp.caller_leaves()
                if not qp.callers and (self._home_parked or (self._caller_pause and not qp.caller_grace)):
                    with contextlib.suppress(trio.RunFinishedError):
                        self._home.run_sync_soon(self._wake_home)  # the loop's tasks drive again

    def watch_descriptor(self) -> None:
        """A program waits on the socket's descriptor between calls: the loop's
        tasks take the wire as soon as the last caller leaves (its readiness
        must follow the data), not a grace later."""
        with self.lock:
            self.qp.caller_grace = 0.0
        self._handover.shorten(_WATCHED_GRACE)

    def _drive_once(self) -> bool:
        """Act on what completed (under :attr:`lock`); whether anything did."""
        if self.protocol.state is State.CLOSED:
            return False
        completions = self.qp.poll_completions(_POLL_BATCH)
        if not completions:
            return False
        self._complete_all(completions, self._clock.current_time())
        self._carry_out()
        return True

    def _complete_all(self, completions: list[Completion], now: float) -> None:
        """Act on one poll's completions in order; runs of received messages go to the protocol as one batch."""
        received: list[memoryview] = []
        take = self._receive_buffers.pop
        for completion in completions:
            if completion[1] is _RECV and completion[2] is _SUCCESS:  # (opcode, status): by index, per message
                buffer = take(completion[0], None)
                if buffer is not None:
                    received.append(buffer[: completion[3]])
                    continue
            if received:
                self.protocol.receive_many(received, now)
                received = []
            self._complete(completion)
        if received:
            self.protocol.receive_many(received, now)

    def _complete(self, completion: Completion) -> None:
        """A completion that is not a received message: an RDMA result, or a failure."""
        if completion.wr_id in self._rdma_results:
            self._rdma_results[completion.wr_id] = completion
            if completion.status is Status.SUCCESS or completion.status is Status.REMOTE_ACCESS_ERROR:
                return  # a refused read fails that request; the engine reports the connection's fate
        if completion.opcode is Opcode.RECV:
            self._receive_buffers.pop(completion.wr_id, None)
        if completion.status is not Status.SUCCESS and self.protocol.state is not State.CLOSED:
            reason = completion.reason or completion.status.value
            self.protocol.connection_lost(
                self.qp.error
                or RemoteProtocolError(f"{completion.opcode.value} failed: {reason}", errno=errno.ECONNRESET)
            )

    def _open(self) -> bool:
        return self.protocol.state is not State.CLOSED

    async def _poll_here(self) -> None:
        """Take what completed from the queue pair in this (waiting) task, and act on it.

        No cancel scope of its own: nothing takes the polling from a waiting
        task, and the queue pair wakes it when it closes.
        """
        completions: list[Completion] = []
        handover = self._handover
        handover.enter()
        self._polling = True
        try:
            completions = await self.qp.get_completions(_POLL_BATCH)
        except (RdmaError, OSError) as exc:
            self.protocol.connection_lost(exc)
        finally:
            self._polling = False
            handover.leave()  # the background task takes over after its grace
            if self._changed:
                self._changed.unpark_all()  # a task that waits may poll now
        self._act_on(completions)

    def _act_on(self, completions: list[Completion]) -> None:
        """Act on what a task took from the queue pair; callers in other threads may take later ones then."""
        with self.lock:
            if completions:
                self._complete_all(completions, self._clock.current_time())
            self.qp.completions_taken()
            self._carry_out()

    async def _poll(self) -> bool:
        """Poll in the background task, until completions come or a waiting task takes
        over; whether any came."""
        completions: list[Completion] = []
        with trio.CancelScope() as self._poller:
            try:
                completions = await self.qp.get_completions(_POLL_BATCH)
            except (RdmaError, OSError) as exc:
                self.protocol.connection_lost(exc)
            finally:
                self._poller = None
                if self._changed:
                    self._changed.unpark_all()  # a task that waits may poll now
        self._act_on(completions)
        return bool(completions)

    async def _run(self) -> None:
        """Poll while no other task does, and run the timers, until the connection ends."""
        found = False  # the last poll here found work: no caller was there to take it
        try:
            with trio.CancelScope() as self._scope:
                while self._open():
                    deadline = self.protocol.next_deadline()
                    # _carry_out brings the deadline forward when the protocol's comes earlier;
                    # one that moved later fires early and changes nothing.
                    with trio.move_on_at(math.inf if deadline is None else deadline) as self._timer:
                        await self._handover.background_turn()
                        # A caller in another thread drives, or did lately and is expected
                        # back: keep off the wire for a grace.  But work that came while
                        # none was there (an RDMA read to answer) means the caller is not
                        # coming for it: keep polling while there is more.
                        if self.qp.callers or (self.qp.callers_recent and not found):
                            with trio.CancelScope() as self._caller_pause:
                                await trio.sleep(_CALLER_GRACE)
                            self._caller_pause = None
                            found = False
                        else:
                            found = await self._poll()
                    timer, self._timer = self._timer, None
                    if timer.cancelled_caught:
                        with self.lock:
                            self.protocol.handle_timer(trio.current_time())
                            self._carry_out()
        finally:
            # Also when the loop ends under us (trio.run returning): the peer and
            # the device must not be left holding the connection.  Bounded: the
            # program's exit must not wait for a peer that does not answer.
            with trio.CancelScope(shield=True) as cleanup, contextlib.suppress(RdmaError, OSError):
                cleanup.deadline = trio.current_time() + _DISCONNECT_BOUND
                await self.qp.disconnect()
            self._changed.unpark_all()
            for callback in self.on_change:
                callback()
            self._done.set()
