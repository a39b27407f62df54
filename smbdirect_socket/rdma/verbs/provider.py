"""The verbs provider: real RDMA devices (mlx5, irdma, bnxt, rxe, siw) through pyverbs.

Connection management is rdma_cm through :mod:`.rdmacm` (non-blocking event
channels waited on by trio).  The data path is pyverbs: one protection
domain, completion channel, completion queue and RC queue pair per
connection.  The queue pair is created by us and handed to rdma_cm by its
number (rdma_cm's "external QP"); on InfiniBand and RoCE we move it through
INIT, RTR and RTS with the attributes rdma_cm computes, on iWARP the kernel
does RTR and RTS itself.

Nothing blocks the event loop: posting and polling are non-blocking verbs
calls, and the wait for completions and rdma_cm events is one
:func:`trio.lowlevel.wait_readable` on an epoll descriptor that watches the
completion channel and the connection's event channel.  pyverbs 44 does not
expose the completion channel's descriptor, so it is found as the one
``[infinibandevent]`` descriptor that creating the channel added.

A thread outside the loop may drive the queue pair too, as a caller drives a
kernel socket: between :meth:`VerbsQueuePair.caller_enters` and
:meth:`~VerbsQueuePair.caller_leaves` it polls the completion queue itself and
sleeps in ``poll()`` on that epoll descriptor (:meth:`~VerbsQueuePair.fileno`);
the loop's tasks keep off meanwhile.

Memory: sends are copied into registered slots (the caller's buffer is free
when ``post_send`` returns, as the engine interface promises); received
messages land in registered slots and are copied into the buffer the caller
posted; RDMA reads land in the caller's buffer itself and RDMA writes are
sent from it when it is writable, registered for the one operation.
Registrations for the peer (:meth:`VerbsQueuePair.register`) register the
caller's buffer in place (read-only buffers are copied once) and, where the
device has them, bind a type 2 memory window over it, which the peer can
invalidate; a plain region (siw) cannot be.  Local invalidation deregisters.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import math
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from ..._tasks import OUT_OF_RESOURCES
from ..base import (
    Access,
    Buffer,
    Completion,
    ConnectionRequest,
    Disconnected,
    Listener,
    Opcode,
    Provider,
    QueuePair,
    RdmaError,
    Status,
)
from .loader import load_pyverbs
from .memory import SMALLEST_SLOT, Slot, SlotPool, VerbsMemoryRegion, register_region
from .rdmacm import CmError, CmEvent, CmId, EventType, forget_removed_devices, reject_request, route_address

__all__ = ["VerbsListener", "VerbsProvider", "VerbsQueuePair", "load_pyverbs"]

_SEND_DEPTH = 512
_RECEIVE_DEPTH = 512
#: Receives posted beyond the caller's, so a message that comes before the first post_recv is kept.
_RECEIVE_ALLOWANCE = 1
_ALLOWANCE_SIZE = 64 * 1024 + 4096
_DISCONNECT_LINGER = 1.0
#: How long an error completion waits for rdma_cm to say why the queue pair failed.
_CAUSE_GRACE = 0.5
#: How long the loop's tasks keep off the completion queue after the last caller
#: left (callers usually come straight back).
CALLER_GRACE = 0.02
_IWARP = 1  # IBV_TRANSPORT_IWARP

# IBV_WC_WITH_INV, and the kernel's IB_WC_WITH_INVALIDATE that rxe hands to user space unchanged.
_WC_WITH_INV = 1 << 3 | 1 << 2
_WR_RDMA_WRITE, _WR_SEND, _WR_RDMA_READ, _WR_BIND_MW, _WR_SEND_WITH_INV = 0, 2, 4, 8, 9
_MW_TYPE_2 = 2
_ACCESS_MW_BIND = 16
_SEND_SIGNALED, _SEND_SOLICITED = 2, 4
_QPS_INIT, _QPS_RTR, _QPS_RTS, _QPS_ERR = 1, 2, 3, 6
_QP_STATE = 1
_QPT_RC = 2
_QP_ACCESS_FLAGS = 8

_STATUSES = {
    0: Status.SUCCESS,
    1: Status.LOCAL_LENGTH_ERROR,
    4: Status.LOCAL_PROTECTION_ERROR,
    5: Status.FLUSHED,
    8: Status.LOCAL_PROTECTION_ERROR,
    9: Status.REMOTE_INVALID_REQUEST,
    10: Status.REMOTE_ACCESS_ERROR,
    11: Status.REMOTE_OPERATION_ERROR,
    13: Status.RECEIVER_NOT_READY,
}
_STATUS_NAMES = {
    2: "local QP operation error",
    7: "bad response",
    12: "transport retry counter exceeded",
    13: "RNR retry counter exceeded",
    15: "remote invalid RD request",
    16: "remote aborted",
    19: "fatal error",
    20: "response timeout",
    21: "general error",
}


# ---- pyverbs --------------------------------------------------------------------------


_creation_lock = threading.Lock()  # creating a completion channel: see _completion_channel


def _infiniband_event_fds() -> set[int]:
    found = set()
    for entry in os.scandir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(entry.path) == "anon_inode:[infinibandevent]":
                found.add(int(entry.name))
    return found


def _completion_channel(context: Any) -> tuple[Any, int]:
    """A pyverbs CompChannel and its descriptor, made non-blocking."""
    cq = load_pyverbs()["cq"]
    with _creation_lock:
        before = _infiniband_event_fds()
        channel = cq.CompChannel(context)
        added = _infiniband_event_fds() - before
    if len(added) != 1:
        channel.close()
        raise RdmaError(errno.EIO, f"cannot find the completion channel's descriptor ({len(added)} candidates)")
    fd = added.pop()
    os.set_blocking(fd, False)
    return channel, fd


# ---- the queue pair ----------------------------------------------------------------------


@dataclass
class _Device:
    """An open device, shared by the process's connections on it and closed with the last one
    (a device is removed only once every user has let go of it)."""

    name: str
    context: Any
    iwarp: bool
    users: int = 0
    #: Whether the device binds type 2 memory windows (found out on first use).
    windows: bool | None = None

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and _open_devices.get(self.name) is self:
            del _open_devices[self.name]
            with contextlib.suppress(Exception):
                self.context.close()


_open_devices: dict[str, _Device] = {}


@dataclass
class _Pending:
    """A send-queue work request and what to release when it completes."""

    wr_id: int
    opcode: Opcode | None  # None: ours (a window bind), not reported
    slot: Slot | None = None
    region: VerbsMemoryRegion | None = None
    #: Whether success is reported (the device signals every request: slots are freed on completion).
    signaled: bool = True


@dataclass
class _Receive:
    wr_id: int
    buffer: memoryview


@dataclass
class _Arrived:
    slot: Slot
    byte_len: int
    invalidated: int | None


@dataclass
class _Resources:
    pd: Any
    channel: Any
    cq: Any
    qp: Any
    pool: SlotPool
    channel_fd: int
    epoll: select.epoll = field(default_factory=select.epoll)


def _create_resources(device: _Device) -> _Resources:
    pv = load_pyverbs()
    pd = pv["pd"].PD(device.context)
    try:
        channel, fd = _completion_channel(device.context)
        cq = pv["cq"].CQ(device.context, _SEND_DEPTH + _RECEIVE_DEPTH + 16, None, channel, 0)
        cap = pv["qp"].QPCap(max_send_wr=_SEND_DEPTH, max_recv_wr=_RECEIVE_DEPTH, max_send_sge=1, max_recv_sge=1)
        init = pv["qp"].QPInitAttr(qp_type=_QPT_RC, scq=cq, rcq=cq, cap=cap, sq_sig_all=1)
        qp = pv["qp"].QP(pd, init)
    except Exception as exc:
        pd.close()
        raise RdmaError(getattr(exc, "error_code", 0) or errno.ENOMEM, f"cannot create the queue pair: {exc}") from None
    resources = _Resources(pd, channel, cq, qp, SlotPool(pd), fd)
    resources.epoll.register(fd, select.EPOLLIN)
    return resources


def _modify(qp: Any, cm_id: CmId, state: int) -> None:
    """Move ``qp`` to ``state`` with the attributes rdma_cm computed for its connection."""
    pv = load_pyverbs()
    source, mask = cm_id.qp_attributes(state)
    attr = pv["qp"].QPAttr(qp_state=state)
    for name in (
        "path_mtu",
        "qkey",
        "rq_psn",
        "sq_psn",
        "dest_qp_num",
        "qp_access_flags",
        "pkey_index",
        "max_rd_atomic",
        "max_dest_rd_atomic",
        "min_rnr_timer",
        "port_num",
        "timeout",
        "retry_cnt",
        "rnr_retry",
    ):
        setattr(attr, name, getattr(source, name))
    if state == _QPS_INIT:  # the peer may read and write what we register, as it asks
        attr.qp_access_flags |= int(Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ)
        mask |= _QP_ACCESS_FLAGS
    ah = source.ah_attr
    if state == _QPS_RTR:
        gid = bytes(ah.grh.dgid).hex()
        route = pv["addr"].GlobalRoute(
            dgid=pv["addr"].GID(":".join(gid[i : i + 4] for i in range(0, 32, 4))),
            flow_label=ah.grh.flow_label,
            sgid_index=ah.grh.sgid_index,
            hop_limit=ah.grh.hop_limit,
            traffic_class=ah.grh.traffic_class,
        )
        attr.ah_attr = pv["addr"].AHAttr(
            dlid=ah.dlid,
            sl=ah.sl,
            src_path_bits=ah.src_path_bits,
            static_rate=ah.static_rate,
            is_global=ah.is_global,
            port_num=ah.port_num,
            gr=route,
        )
    try:
        qp.modify(attr, mask)
    except Exception as exc:
        raise RdmaError(
            getattr(exc, "error_code", 0) or errno.EINVAL, f"cannot move the QP to {state}: {exc}"
        ) from None


_live: weakref.WeakSet[VerbsQueuePair] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Free what is still open before pyverbs' objects are collected in no useful order."""
    for qp in list(_live):
        with contextlib.suppress(Exception):
            qp._close(here=True)


class VerbsQueuePair(QueuePair):
    """An RC queue pair on an RDMA device, connected by rdma_cm."""

    def __init__(self, device: _Device, cm_id: CmId, resources: _Resources) -> None:
        self.lock = threading.RLock()
        self.device = device
        device.users += 1
        self._cm_id = cm_id
        self._r = resources
        self._r.epoll.register(cm_id.channel.fd, select.EPOLLIN)
        # What a caller looks at before it reads either channel (an empty read costs an exception).
        self._pending_events = select.poll()
        self._pending_events.register(resources.channel_fd, select.POLLIN)
        self._pending_events.register(cm_id.channel.fd, select.POLLIN)
        self.peer_private_data = b""
        self.initiator_depth = 0
        self.responder_resources = 0
        self.local_address = ("", 0)
        self.peer_address = ("", 0)
        self._pending: dict[int, _Pending] = {}
        self._next_tag = 1
        self._receives: collections.deque[_Receive] = collections.deque()
        self._arrived: collections.deque[_Arrived] = collections.deque()
        self._posted_slots: dict[int, Slot] = {}  # tag -> slot, in the order the device fills them
        self._ready: list[Completion] = []
        self._regions: set[VerbsMemoryRegion] = set()
        self._error: RdmaError | None = None
        self._closed = False
        self._waiting = False
        self._send_queue_failure = ""
        # Created in the loop's thread: what only it may touch (trio's wait on the
        # epoll descriptor) is handed to it from callers in other threads.
        self._home = trio.lowlevel.current_trio_token()
        self._home_thread = threading.get_ident()
        self._callers = 0  # threads outside the loop driving the queue pair now
        self._caller_left = -math.inf  # when the last one left (time.monotonic)
        self.caller_grace = CALLER_GRACE
        #: Completions the loop's task took and has not yet acted on: callers take none after them.
        self._handed_out = False
        _live.add(self)

    def initialize(self) -> None:
        """Move the QP to INIT (receives can be posted from then on) and post the allowance."""
        _modify(self._r.qp, self._cm_id, _QPS_INIT)
        for _ in range(_RECEIVE_ALLOWANCE):
            self._post_slot(_ALLOWANCE_SIZE)

    def connected(self, event: CmEvent, private_data: bytes | None = None) -> None:
        """Fill in what the connection negotiated, once it is established."""
        self.peer_private_data = event.private_data if private_data is None else private_data
        attr, _ = self._r.qp.query(0x2000 | 0x20000)  # MAX_QP_RD_ATOMIC | MAX_DEST_RD_ATOMIC
        self.initiator_depth = attr.max_rd_atomic or event.initiator_depth
        self.responder_resources = attr.max_dest_rd_atomic or event.responder_resources
        self.local_address = self._cm_id.local_address
        self.peer_address = self._cm_id.peer_address

    # ---- posting -------------------------------------------------------------------

    def _tag(self) -> int:
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RdmaError(errno.EPIPE, "queue pair is disconnected")

    def _post_slot(self, size: int) -> None:
        pv = load_pyverbs()
        slot = self._r.pool.take(size)
        tag = self._tag()
        sge = pv["wr"].SGE(slot.address, slot.size, slot.mr.lkey)
        try:
            self._r.qp.post_recv(pv["wr"].RecvWR(wr_id=tag, num_sge=1, sg=[sge]))
        except Exception as exc:
            self._r.pool.give(slot)
            raise RdmaError(errno.ENOMEM, f"cannot post a receive: {exc}") from None
        self._posted_slots[tag] = slot

    def post_recv(self, wr_id: int, buffer: memoryview) -> None:
        self._check_open()
        receive = _Receive(wr_id, buffer)
        if self._arrived:
            self._deliver(receive, self._arrived.popleft())
        else:
            self._receives.append(receive)
        self._post_slot(len(buffer))

    def _post(
        self, pending: _Pending, opcode: int, sge: Any, *, flags: int = 0, token: int = 0, address: int = 0
    ) -> None:
        """Post one send-queue request; ``token`` is the peer's (RDMA) or the one to invalidate."""
        pv = load_pyverbs()
        tag = self._tag()
        # The token to invalidate goes in the immediate-data union, and libsiw reads it from the RDMA fields.
        imm_data = token if opcode == _WR_SEND_WITH_INV else 0
        wr = pv["wr"].SendWR(
            wr_id=tag, opcode=opcode, num_sge=1, sg=[sge], send_flags=_SEND_SIGNALED | flags, imm_data=imm_data
        )
        wr.set_wr_rdma(token, address)
        try:
            self._r.qp.post_send(wr)
        except Exception as exc:
            self._release(pending)
            raise RdmaError(errno.ENOMEM, f"cannot post to the send queue: {exc}") from None
        self._pending[tag] = pending

    def _staged(self, view: memoryview) -> tuple[Slot, Any]:
        """A copy of ``view`` in a registered slot, and its scatter-gather entry."""
        slot = self._r.pool.take(len(view))
        slot.view[: len(view)] = view
        return slot, load_pyverbs()["wr"].SGE(slot.address, len(view), slot.mr.lkey)

    @staticmethod
    def _in_place(region: VerbsMemoryRegion) -> Any:
        """The scatter-gather entry of a region registered for one operation."""
        return load_pyverbs()["wr"].SGE(region.address, region.length, region.mr.lkey)

    def post_send(
        self,
        wr_id: int,
        data: Buffer,
        *,
        invalidate_token: int | None = None,
        solicited: bool = False,
        signaled: bool = True,
    ) -> None:
        self._check_open()
        slot, sge = self._staged(memoryview(data).cast("B"))
        flags = _SEND_SOLICITED if solicited else 0
        pending = _Pending(wr_id, Opcode.SEND, slot=slot, signaled=signaled)
        if invalidate_token is None:
            self._post(pending, _WR_SEND, sge, flags=flags)
        else:
            self._post(pending, _WR_SEND_WITH_INV, sge, flags=flags, token=invalidate_token)

    def post_write(self, wr_id: int, data: Buffer, token: int, address: int) -> None:
        self._check_open()
        view = memoryview(data).cast("B")
        pending = _Pending(wr_id, Opcode.RDMA_WRITE)
        if view.readonly or len(view) < SMALLEST_SLOT:
            pending.slot, sge = self._staged(view)
        else:
            pending.region = region = register_region(self._r.pd, view, Access(0))
            sge = self._in_place(region)
        self._post(pending, _WR_RDMA_WRITE, sge, token=token, address=address)

    def post_read(self, wr_id: int, into: memoryview, token: int, address: int) -> None:
        self._check_open()
        view = memoryview(into).cast("B")
        if view.readonly:
            raise RdmaError(errno.EINVAL, "an RDMA read needs a writable buffer")
        region = register_region(self._r.pd, view, Access.LOCAL_WRITE)
        pending = _Pending(wr_id, Opcode.RDMA_READ, region=region)
        self._post(pending, _WR_RDMA_READ, self._in_place(region), token=token, address=address)

    # ---- completions ---------------------------------------------------------------------

    def _release(self, pending: _Pending) -> None:
        if pending.slot is not None:
            self._r.pool.give(pending.slot)
        if pending.region is not None:
            pending.region.close()

    def _deliver(self, receive: _Receive, arrived: _Arrived) -> None:
        if arrived.byte_len > len(receive.buffer):
            self._ready.append(
                Completion(
                    receive.wr_id,
                    Opcode.RECV,
                    Status.LOCAL_LENGTH_ERROR,
                    reason=f"a {arrived.byte_len}-byte message for a {len(receive.buffer)}-byte receive",
                )
            )
        else:
            receive.buffer[: arrived.byte_len] = arrived.slot.view[: arrived.byte_len]
            self._ready.append(
                Completion(
                    receive.wr_id,
                    Opcode.RECV,
                    byte_len=arrived.byte_len,
                    invalidated_token=arrived.invalidated,
                )
            )
        self._r.pool.give(arrived.slot)

    def _reason(self, status: int) -> str:
        return _STATUS_NAMES.get(status, _STATUSES.get(status, Status.FATAL).value)

    def _take(self, wc: Any) -> None:
        status = _STATUSES.get(wc.status, Status.FATAL)
        slot = self._posted_slots.pop(wc.wr_id, None)
        if slot is not None:  # a receive
            if status is Status.SUCCESS:
                invalidated = wc.imm_data if wc.wc_flags & _WC_WITH_INV and wc.imm_data else None
                for region in self._regions:
                    if region.token == invalidated:
                        region.invalidated = True
                arrived = _Arrived(slot, wc.byte_len, invalidated)
                if self._receives:
                    self._deliver(self._receives.popleft(), arrived)
                else:
                    self._arrived.append(arrived)
                return
            self._r.pool.give(slot)
            if self._receives:
                receive = self._receives.popleft()
                self._ready.append(Completion(receive.wr_id, Opcode.RECV, status, reason=self._reason(wc.status)))
            return
        pending = self._pending.pop(wc.wr_id, None)
        if pending is None:
            return
        self._release(pending)
        if pending.opcode is None:
            if status is not Status.SUCCESS:
                self._fail(RdmaError(errno.EIO, f"binding a memory window failed: {self._reason(wc.status)}"))
            return
        if status is Status.SUCCESS and not pending.signaled:
            return
        if status is not Status.SUCCESS and not self._send_queue_failure:
            self._send_queue_failure = f"RDMA {pending.opcode.value} {self._reason(wc.status)}"
        reason = "" if status is Status.SUCCESS else self._reason(wc.status)
        self._ready.append(Completion(pending.wr_id, pending.opcode, status, wc.byte_len, reason=reason))

    def _poll_device(self, max_count: int) -> None:
        try:
            _, wcs = self._r.cq.poll(max_count)
        except Exception as exc:
            self._fail(RdmaError(errno.EIO, f"polling the completion queue failed: {exc}"))
            return
        for wc in wcs:
            self._take(wc)

    def _outstanding(self) -> bool:
        return bool(self._pending) or bool(self._receives)

    def _flush_unmatched(self) -> None:
        """Once the queue pair has failed and the device flushed everything, fail what is left."""
        if self._error is None or self._posted_slots or self._pending:
            return
        while self._receives:
            receive = self._receives.popleft()
            self._ready.append(Completion(receive.wr_id, Opcode.RECV, Status.FLUSHED, reason="flushed"))

    def poll_completions(self, max_count: int = 64) -> list[Completion]:
        caller = self._callers and not self._in_home()
        if caller and self._handed_out:
            return []  # the loop's task acts on older ones first: completions stay in order
        if not self._closed:
            events = True
            if caller:
                pending = {fd for fd, _ in self._pending_events.poll(0)}
                if self._r.channel_fd in pending:
                    self._drain_channel()  # the wake-up the caller slept for is taken
                # A caller may sleep on fileno() after any poll, even one that found
                # work: the queue is armed before it is polled, every time.
                self._r.cq.req_notify()
                events = self._cm_id.channel.fd in pending
            self._poll_device(max_count)  # before the events: a failed request explains a disconnect
            if events:
                self._handle_cm_events()
            if caller and self._error is None and any(c.status is not Status.SUCCESS for c in self._ready):
                self._wait_for_cause()
        self._flush_unmatched()
        ready, self._ready = self._ready[:max_count], self._ready[max_count:]
        return ready

    def completions_taken(self) -> None:
        self._handed_out = False

    # ---- a caller in another thread drives --------------------------------------------

    def caller_enters(self) -> bool:
        """A thread outside the loop starts driving (call under :attr:`lock`)."""
        self._callers += 1
        return True

    def caller_leaves(self) -> None:
        self._callers -= 1
        self._caller_left = time.monotonic()

    @property
    def callers(self) -> int:
        return self._callers

    @property
    def callers_recent(self) -> bool:
        return bool(self._callers) or time.monotonic() - self._caller_left < self.caller_grace

    def fileno(self) -> int:
        """The epoll descriptor that watches the completion channel and the
        connection's events: readable when :meth:`poll_completions` may find more
        (-1 once closed)."""
        return -1 if self._closed else self._r.epoll.fileno()

    def _in_home(self) -> bool:
        return threading.get_ident() == self._home_thread

    def _wait_for_cause(self) -> None:
        """:meth:`_learn_cause` for a caller in another thread: it waits in ``poll()``."""
        waiting = select.poll()
        waiting.register(self._cm_id.channel.fd, select.POLLIN)
        deadline = time.monotonic() + _CAUSE_GRACE
        while self._error is None and (remaining := deadline - time.monotonic()) > 0:
            waiting.poll(math.ceil(remaining * 1000))
            self._handle_cm_events()
        self._fail(RdmaError(errno.ECONNRESET, "the queue pair failed"))  # if rdma_cm said nothing

    async def get_completions(self, max_count: int = 64) -> list[Completion]:
        if self._waiting:
            raise trio.BusyResourceError("another task is already waiting for completions")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._waiting = True
        try:
            while True:
                with self.lock:  # a caller in another thread may be polling too
                    driven = bool(self._callers)
                    if not driven:
                        completions = self.poll_completions(max_count)
                        # Until they are acted on (completions_taken), callers take none after them.
                        self._handed_out = bool(completions)
                if driven:
                    await trio.lowlevel.checkpoint()
                    return []  # a caller drives: ask again later
                if completions:
                    # Shielded from here on: cancelled, the completions would be lost.
                    with trio.CancelScope(shield=True):
                        if any(c.status is not Status.SUCCESS for c in completions) and self._error is None:
                            await self._learn_cause()
                        await trio.lowlevel.checkpoint()
                    return completions
                if self._error is not None and not self._outstanding():
                    raise self._error
                if self._closed:
                    raise self._error or RdmaError(errno.EPIPE, "queue pair is disconnected")
                with self.lock:
                    self._r.cq.req_notify()
                    self._poll_device(max_count)  # what completed before the request
                    if self._ready:
                        continue
                try:
                    await trio.lowlevel.wait_readable(self._r.epoll.fileno())
                except trio.ClosedResourceError:
                    continue  # closed under us (a removed device): the loop says why
                with self.lock:
                    if not (self._closed or self._callers):  # a caller's wake-up is the caller's to take
                        self._drain_channel()
        finally:
            self._waiting = False

    async def _learn_cause(self) -> None:
        """An error completion: give rdma_cm a moment to say why (a disconnect, a removed device)."""
        with trio.move_on_after(_CAUSE_GRACE):
            while self._error is None:
                with self.lock:
                    self._handle_cm_events()
                if self._error is None:
                    await trio.lowlevel.wait_readable(self._cm_id.channel.fd)
        self._fail(RdmaError(errno.ECONNRESET, "the queue pair failed"))  # if rdma_cm said nothing

    def _drain_channel(self) -> None:
        events = 0
        while True:
            try:
                self._r.channel.get_cq_event(self._r.cq)
            except Exception:
                break
            events += 1
        if events:
            self._r.cq.ack_events(events)

    def _handle_cm_events(self) -> None:
        while True:
            try:
                event = self._cm_id.channel.poll()
            except CmError as exc:
                self._fail(exc)
                return
            if event is None:
                return
            if event.type is EventType.DISCONNECTED:
                if self._send_queue_failure:  # not an orderly close: our requests were failing
                    self._fail(RdmaError(errno.ECONNRESET, f"connection terminated ({self._send_queue_failure})"))
                else:
                    self._fail(Disconnected(errno.ECONNRESET, "the peer disconnected"))
            elif event.type is EventType.DEVICE_REMOVAL:
                # rdma_cm waits for the id, and the kernel for every resource, to go: let go now.
                self._fail(RdmaError(errno.ENODEV, f"RDMA device {self.device.name} was removed"))
                self._close(then=forget_removed_devices)
                return
            elif event.type in (EventType.CONNECT_ERROR, EventType.UNREACHABLE, EventType.REJECTED):
                self._fail(event.error("connection failed"))

    def _fail(self, error: RdmaError) -> None:
        if self._error is None:
            self._error = error
            self._to_error_state()

    def _to_error_state(self) -> None:
        """Flush everything posted: on InfiniBand and RoCE nobody else moves our (external) QP to ERR."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._r.qp.modify(load_pyverbs()["qp"].QPAttr(qp_state=_QPS_ERR), _QP_STATE)

    # ---- memory ---------------------------------------------------------------------------

    def register(self, buffer: memoryview, access: Access) -> VerbsMemoryRegion:
        """Register for the peer: through a type 2 memory window where the device has them
        (the peer may then invalidate it with a send with invalidate), else a plain region."""
        self._check_open()
        if access & Access.REMOTE_WRITE:
            access |= Access.LOCAL_WRITE  # verbs requires it for remote writes
        window = self._window()
        try:
            region = register_region(self._r.pd, buffer, access | (_ACCESS_MW_BIND if window is not None else 0))
        except ValueError:
            raise
        except Exception as exc:
            raise RdmaError(getattr(exc, "error_code", 0) or errno.ENOMEM, f"cannot register memory: {exc}") from None
        region.access = access
        if window is not None:
            self._bind(region, window)
        self._regions.add(region)
        return region

    def _window(self) -> Any:
        """A new type 2 memory window, or None when the device has none (siw)."""
        if self.device.windows is False:
            return None
        try:
            window = load_pyverbs()["mr"].MW(self._r.pd, _MW_TYPE_2)
        except Exception:
            self.device.windows = False
            return None
        self.device.windows = True
        return window

    def _bind(self, region: VerbsMemoryRegion, window: Any) -> None:
        """Bind ``window`` over the region; the bind runs before anything posted after it."""
        pv = load_pyverbs()
        rights = int(region.access & (Access.REMOTE_READ | Access.REMOTE_WRITE))
        info = pv["mr"].MWBindInfo(region.mr, region.address, region.length, rights)
        tag = self._tag()
        wr = pv["wr"].SendWR(wr_id=tag, opcode=_WR_BIND_MW, num_sge=0, send_flags=_SEND_SIGNALED)
        wr.set_bind_wr(window, info)
        try:
            self._r.qp.post_send(wr)
        except Exception as exc:
            window.close()
            region.close()
            raise RdmaError(errno.ENOMEM, f"cannot bind a memory window: {exc}") from None
        self._pending[tag] = _Pending(0, None)
        region.window = window
        region.token = wr.rkey

    def deregister(self, region: VerbsMemoryRegion) -> None:  # type: ignore[override]
        self._regions.discard(region)
        region.close()

    def invalidate(self, region: VerbsMemoryRegion) -> None:  # type: ignore[override]
        self.deregister(region)

    # ---- teardown ----------------------------------------------------------------------------

    @property
    def error(self) -> RdmaError | None:
        return self._error

    async def disconnect(self) -> None:
        """Let posted sends finish, disconnect, wait briefly for the peer's side, free everything."""
        if self._closed:
            return
        with trio.move_on_after(_DISCONNECT_LINGER):
            while self._error is None and self._pending:  # sends, RDMA and binds (receives are slots)
                try:
                    await self.get_completions()
                except (RdmaError, trio.BusyResourceError):
                    break
        self._cm_id.disconnect()
        with trio.move_on_after(_DISCONNECT_LINGER):
            while not isinstance(self._error, Disconnected):
                with self.lock:
                    self._handle_cm_events()
                if self._error is not None:
                    break
                await trio.lowlevel.wait_readable(self._cm_id.channel.fd)
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self, then: Callable[[], None] | None = None, *, here: bool = False) -> None:
        """Free everything, then call ``then``; in the loop's thread (whose epoll
        waits on our descriptor) unless ``here`` or the loop has ended."""
        if self._closed:
            return
        if not (here or self._in_home()):
            self._fail(RdmaError(errno.EPIPE, "queue pair is disconnected"))
            try:
                self._home.run_sync_soon(partial(self._close, then))
                return
            except trio.RunFinishedError:
                pass  # nobody waits in the loop any more: close here
        with self.lock:  # not while a caller in another thread polls
            self._free(then)

    def _free(self, then: Callable[[], None] | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail(RdmaError(errno.EPIPE, "queue pair is disconnected"))
        with contextlib.suppress(RuntimeError):  # outside trio (interpreter exit) nobody waits
            trio.lowlevel.notify_closing(self._r.epoll.fileno())
        self._r.epoll.close()
        for region in list(self._regions):
            region.close()
        for pending in self._pending.values():
            self._release(pending)
        self._pending.clear()
        with contextlib.suppress(Exception):
            self._r.qp.close()
        with contextlib.suppress(Exception):
            self._r.cq.close()
        with contextlib.suppress(Exception):
            self._r.channel.close()
        self._r.pool.close()
        with contextlib.suppress(Exception):
            self._r.pd.close()
        self._cm_id.close()
        self.device.release()
        if then is not None:
            then()


# ---- connection set-up ------------------------------------------------------------------------


class VerbsConnectionRequest(ConnectionRequest):
    def __init__(self, provider: VerbsProvider, event: CmEvent) -> None:
        self._provider = provider
        self._pointer = event.id
        self.private_data = event.private_data
        # rdma_cm reports the request from our side (its initiator_depth is the ORD we may
        # use, the peer's IRD); the interface wants the peer's own ORD and IRD.
        self.initiator_depth = event.responder_resources
        self.responder_resources = event.initiator_depth
        self._answered = False
        self.peer_address = route_address(event.id, peer=True)

    def _answer(self) -> None:
        if self._answered:
            raise RdmaError(errno.EINVAL, "connection request already answered")
        self._answered = True

    async def accept(
        self, private_data: bytes = b"", *, initiator_depth: int = 1, responder_resources: int = 1
    ) -> VerbsQueuePair:
        self._answer()
        try:
            cm_id = CmId(pointer=self._pointer)
        except CmError:
            reject_request(self._pointer)
            raise
        try:
            device = self._provider.device_for(cm_id)
            resources = _create_resources(device)
        except BaseException:
            cm_id.reject()
            cm_id.close()
            raise
        qp = VerbsQueuePair(device, cm_id, resources)
        try:
            qp.initialize()
            if not device.iwarp:
                _modify(resources.qp, cm_id, _QPS_RTR)
                _modify(resources.qp, cm_id, _QPS_RTS)
            # Never more than the peer offered: its ORD bounds our IRD and its IRD our ORD.
            ird = min(responder_resources, self.initiator_depth) if self.initiator_depth else responder_resources
            ord_ = min(initiator_depth, self.responder_resources)
            cm_id.accept(private_data, resources.qp.qp_num, ord_, ird)
            event = await cm_id.expect(EventType.ESTABLISHED, "accepting the connection")
        except BaseException:
            qp._close()
            raise
        qp.connected(event, self.private_data)
        return qp

    async def reject(self, private_data: bytes = b"") -> None:
        self._answer()
        reject_request(self._pointer, private_data)
        await trio.lowlevel.checkpoint()

    def __del__(self) -> None:
        if not getattr(self, "_answered", True):
            with contextlib.suppress(Exception):
                reject_request(self._pointer)


class VerbsListener(Listener):
    def __init__(self, provider: VerbsProvider, cm_id: CmId) -> None:
        self._provider = provider
        self._cm_id = cm_id
        self.address = cm_id.local_address

    async def get_request(self) -> VerbsConnectionRequest:
        while True:
            if not self._cm_id.pointer:
                raise RdmaError(errno.EBADF, "listener is closed")
            try:
                event = await self._cm_id.channel.next()
            except CmError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    raise  # for now: the listener's task retries
                raise RdmaError(errno.EBADF, f"listener is closed: {exc}") from None
            if event.type is EventType.CONNECT_REQUEST:
                return VerbsConnectionRequest(self._provider, event)
            if event.type is EventType.DEVICE_REMOVAL:
                self._cm_id.close()
                forget_removed_devices()
                raise RdmaError(errno.ENODEV, "the listener's RDMA device was removed")

    async def aclose(self) -> None:
        self._cm_id.close()
        await trio.lowlevel.checkpoint()


def _device_transports() -> dict[str, int]:
    """Each RDMA device's name and ``IBV_TRANSPORT_*`` (none when there is none)."""
    pv = load_pyverbs()  # a missing pyverbs is an error of its own
    try:
        found = pv["device"].get_device_list()
    except Exception:
        return {}
    return {d.name.decode(): d.transport_type for d in found}


class VerbsProvider(Provider):
    """RDMA on the machine's devices, through pyverbs and rdma_cm.

    rdma_cm picks the device from the address (bind or route resolution);
    ``device`` restricts the provider to one device by name and makes the
    others an error (EADDRNOTAVAIL).
    """

    name = "verbs"

    def __init__(self, *, device: str | None = None) -> None:
        self._transports = _device_transports()
        if not self._transports:
            raise RdmaError(
                errno.ENODEV,
                "no RDMA device: load the driver of your NIC, or make a software device "
                "(rdma link add rxe0 type rxe netdev eth0, or type siw)",
            )
        if device is not None and device not in self._transports:
            raise RdmaError(errno.ENODEV, f"no RDMA device {device!r}; there are {', '.join(self._transports)}")
        self.device = device

    @staticmethod
    def devices() -> list[tuple[str, str]]:
        """(name, transport) of every RDMA device: transport is ``"iwarp"`` or ``"ib"`` (InfiniBand, RoCE)."""
        return [(name, "iwarp" if kind == _IWARP else "ib") for name, kind in _device_transports().items()]

    def device_for(self, cm_id: CmId) -> _Device:
        name = cm_id.device_name
        if name is None:
            raise RdmaError(errno.EADDRNOTAVAIL, "rdma_cm bound no RDMA device to this address")
        if self.device is not None and name != self.device:
            raise RdmaError(errno.EADDRNOTAVAIL, f"the address is on RDMA device {name}, not {self.device}")
        if name not in _open_devices:
            context = load_pyverbs()["device"].Context(name=name)
            _open_devices[name] = _Device(name, context, self._transports.get(name) == _IWARP)
        return _open_devices[name]

    async def connect(
        self,
        address: tuple[str, int],
        private_data: bytes = b"",
        *,
        initiator_depth: int = 1,
        responder_resources: int = 1,
        timeout: float = 5.0,
        source: tuple[str, int] | None = None,
    ) -> VerbsQueuePair:
        cm_id = CmId()
        qp: VerbsQueuePair | None = None
        try:
            with trio.fail_after(timeout):
                await cm_id.resolve(address, source, max(int(timeout * 1000), 1))
                device = self.device_for(cm_id)
                qp = VerbsQueuePair(device, cm_id, _create_resources(device))
                qp.initialize()
                cm_id.connect(private_data, qp._r.qp.qp_num, initiator_depth, responder_resources)
                event = await cm_id.channel.next()
                if event.type is EventType.CONNECT_RESPONSE:  # InfiniBand, RoCE: the QP is ours to move
                    _modify(qp._r.qp, cm_id, _QPS_RTR)
                    _modify(qp._r.qp, cm_id, _QPS_RTS)
                    cm_id.establish()
                elif event.type is not EventType.ESTABLISHED:
                    raise event.error(f"RDMA connect to {address[0]}:{address[1]}")
        except trio.TooSlowError:
            self._abandon(cm_id, qp)
            raise RdmaError(errno.ETIMEDOUT, f"RDMA connect to {address[0]}:{address[1]} timed out") from None
        except BaseException:
            self._abandon(cm_id, qp)
            raise
        qp.connected(event)
        return qp

    @staticmethod
    def _abandon(cm_id: CmId, qp: VerbsQueuePair | None) -> None:
        if qp is not None:
            qp._close()
        else:
            cm_id.close()

    def listen(
        self, address: tuple[str, int], backlog: int = 10, *, sock: socket.socket | None = None
    ) -> VerbsListener:
        """Listen with rdma_cm (a TCP socket given as ``sock`` only reserved the port; it is closed)."""
        if sock is not None:
            address = (address[0], sock.getsockname()[1])
            sock.close()  # iWARP listens on the TCP port itself
        cm_id = CmId()
        try:
            cm_id.bind(address)
            if self.device is not None and cm_id.device_name not in (None, self.device):
                raise RdmaError(errno.EADDRNOTAVAIL, f"{address[0]} is on RDMA device {cm_id.device_name}")
            cm_id.listen(backlog)
        except BaseException:
            cm_id.close()
            raise
        return VerbsListener(self, cm_id)
