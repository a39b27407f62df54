"""A sans-IO iWARP queue pair: RDMAP over DDP over MPA FPDUs.

:class:`IwarpQueuePair` takes the bytes TCP delivered and the work requests
the application posts, and produces the bytes to write and the completions.
It is the whole of the software provider except the sockets, so it is tested
by wiring two of them together in memory.

Reliable-connected semantics, as siw implements them:

* a Send fills the oldest posted receive; with none posted the connection is
  terminated (iWARP has no receiver-not-ready retry);
* RDMA Write, Read and Send with Invalidate touch only memory the peer
  registered, within its bounds, with its rights, until it is invalidated;
  any fault sends a Terminate naming it and puts both ends in the error state;
* outstanding RDMA reads are bounded by the negotiated ORD/IRD;
* the responder sends nothing before the initiator's first FPDU (RFC 5044).
"""

from __future__ import annotations

import errno
import itertools
import operator
import secrets
from collections import deque
from collections.abc import Iterator, Sequence

from ..._wire import core as _core
from ..base import Access, Buffer, Completion, Opcode, RdmaError, Status, post_each_receive, post_each_send
from . import ddp
from .ddp import Layer, Op, ReadRequest, Segment, Terminate, TerminateError
from .memory import AccessFault, MemoryAccessError, MemoryTable, SoftMemoryRegion
from .mpa import MPA_CRC_ERROR, FpduReader, MpaError, Negotiation, fpdu_pieces

__all__ = ["IwarpQueuePair"]

#: Largest FPDU we build: a ULPDU_Length still fits its 16 bits.
DEFAULT_MAX_FPDU = 65536

#: Payloads up to this size are framed by the compiled core, which copies them
#: into one buffer; larger ones go out as views between their headers, as a copy
#: would cost more than the few FPDUs' Python work it saves.
_FRAME_COPY_LIMIT = 16384


_view_kind = operator.attrgetter("format", "ndim", "readonly")
#: What the compiled receive path makes its completions of.
_COMPLETION_KINDS = (Completion, Opcode.RECV, Opcode.RDMA_READ, Status.SUCCESS)


class _Send:
    __slots__ = ("data", "invalidate_token", "signaled", "solicited", "wr_id")

    def __init__(self, wr_id: int, data: Buffer, invalidate_token: int | None, solicited: bool, signaled: bool) -> None:
        self.wr_id = wr_id
        self.data = data
        self.invalidate_token = invalidate_token
        self.solicited = solicited
        self.signaled = signaled


class _Write:
    __slots__ = ("address", "data", "token", "wr_id")

    def __init__(self, wr_id: int, data: Buffer, token: int, address: int) -> None:
        self.wr_id = wr_id
        self.data = data
        self.token = token
        self.address = address


class _Read:
    __slots__ = ("address", "into", "placed", "rtr", "sink_token", "token", "wr_id")

    def __init__(self, wr_id: int, into: memoryview, token: int, address: int, sink_token: int) -> None:
        self.wr_id = wr_id
        self.into = into
        self.token = token
        self.address = address
        self.sink_token = sink_token
        self.placed = 0
        self.rtr = False


#: A posted receive: a tuple, which needs no Python call per receive to make
#: (its bytes placed so far are in IwarpQueuePair._placed while it is current).
_Receive = tuple[int, memoryview]  # (wr_id, buffer)


_TAGGED_FAULTS = {
    AccessFault.INVALID_TOKEN: ddp.DDP_TAGGED_INVALID_STAG,
    AccessFault.ACCESS_RIGHTS: ddp.DDP_TAGGED_INVALID_STAG,  # as siw: no separate code in DDP
    AccessFault.BASE_BOUNDS: ddp.DDP_TAGGED_BASE_BOUNDS,
}
_READ_FAULTS = {
    AccessFault.INVALID_TOKEN: ddp.RDMAP_INVALID_STAG,
    AccessFault.ACCESS_RIGHTS: ddp.RDMAP_ACCESS_RIGHTS,
    AccessFault.BASE_BOUNDS: ddp.RDMAP_BASE_BOUNDS,
}


class IwarpQueuePair:
    """One iWARP queue pair after MPA setup, with no I/O."""

    def __init__(
        self,
        negotiation: Negotiation,
        *,
        initiator: bool,
        max_fpdu: int = DEFAULT_MAX_FPDU,
        siw_terminate_layout: bool = False,
        max_send_wr: int = 4096,
        max_recv_wr: int = 4096,
    ) -> None:
        if not 64 <= max_fpdu <= DEFAULT_MAX_FPDU:
            raise ValueError(f"max_fpdu must be in [64, {DEFAULT_MAX_FPDU}], got {max_fpdu}")
        self.negotiation = negotiation
        self.memory = MemoryTable()
        self.error: RdmaError | None = None
        self.closed = False
        self._crc = negotiation.crc
        #: The compiled wire core, or None for the pure-Python path (the reference).
        self.wire = _core
        self._siw_layout = siw_terminate_layout
        self._reader = FpduReader(negotiation.crc)
        self._tagged_chunk = (max_fpdu - 2 - ddp.TAGGED_HEADER - 4) & ~3
        self._untagged_chunk = (max_fpdu - 2 - ddp.UNTAGGED_HEADER - 4) & ~3
        self._max_send_wr = max_send_wr
        self._max_recv_wr = max_recv_wr
        # May we transmit?  The responder waits for the initiator's first FPDU.
        self._may_transmit = initiator
        self._rtr_pending = initiator and negotiation.rtr is not None
        # outbound
        self._pending: deque[_Send | _Write | _Read] = deque()
        self._outstanding_reads: deque[_Read] = deque()
        self._send_msn = itertools.count(1)
        self._read_msn = itertools.count(1)
        self._sink_tokens = itertools.count(secrets.randbelow(1 << 31) | 1)
        # Output: buffers to write in order, and completions due once the
        # byte count written reaches their mark.
        self._output: deque[Buffer] = deque()
        # Marks: (position, wr_id, opcode, byte_len, signaled); the completion is
        # built only when it is reported.  A mark without an opcode is the end of a
        # Read Response (IRD accounting).
        self._marks: deque[tuple[int, int, Opcode | None, int, bool]] = deque()
        self._queued = 0  # bytes ever queued
        self._written = 0  # bytes ever written
        self._responses_queued = 0  # inbound reads answered but not yet written
        # Read Responses queued as views of registered memory and not yet all
        # written: (start, end) in the bytes queued; copied out (_freeze) before
        # anything may change that memory, dropped as they are written.
        self._lent: deque[tuple[int, int]] = deque()
        # inbound
        self._receives: deque[_Receive] = deque()
        self._current: _Receive | None = None  # the receive a Send is being placed in
        self._placed = 0  # how much of it
        self._expected_send_msn = 1
        self._expected_read_msn = 1
        self._completions: deque[Completion] = deque()
        self._handlers = {
            Op.WRITE: self._on_write,
            Op.READ_REQUEST: self._on_read_request,
            Op.READ_RESPONSE: self._on_read_response,
            Op.TERMINATE: self._on_terminate,
        }

    # ---- posting (verbs) --------------------------------------------------------

    def post_recv(self, wr_id: int, buffer: memoryview) -> None:
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.readonly:
            raise ValueError("a receive buffer must be writable")
        if self._dead:
            self._completions.append(Completion(wr_id, Opcode.RECV, Status.FLUSHED))
            return
        if len(self._receives) >= self._max_recv_wr:
            raise RdmaError(errno.ENOMEM, f"receive queue full ({self._max_recv_wr} work requests)")
        self._receives.append((wr_id, view))

    def post_recvs(self, first_wr_id: int, buffers: list[memoryview]) -> None:
        """:meth:`post_recv` of each buffer, with ids from ``first_wr_id`` on."""
        if self._dead or len(self._receives) + len(buffers) > self._max_recv_wr:
            post_each_receive(self.post_recv, first_wr_id, buffers)  # flushed, or refused at the limit
            return
        if set(map(_view_kind, buffers)) - {("B", 1, False)}:  # (no Python frame per buffer)
            raise ValueError("receive buffers must be writable memoryviews of bytes")
        self._receives.extend(zip(range(first_wr_id, first_wr_id + len(buffers)), buffers, strict=True))

    def post_send(
        self,
        wr_id: int,
        data: Buffer,
        *,
        invalidate_token: int | None = None,
        solicited: bool = False,
        signaled: bool = True,
    ) -> None:
        if self._pending or self._rtr_pending or not self._may_transmit or self._dead:
            self._post(_Send(wr_id, data, invalidate_token, solicited, signaled), Opcode.SEND)
        else:
            self._check_send_queue()
            self._emit_send(wr_id, data, invalidate_token, solicited, signaled)  # nothing waits ahead of it

    def post_sends(self, wr_id: int, datas: Sequence[Buffer], *, signaled: bool = False) -> None:
        """Plain Sends of ``datas``, in order, all with ``wr_id``: the compiled core frames
        them in one call (a message's fragments); ``signaled`` completes only the last."""
        if not datas:
            return
        if (
            self.wire is None
            or self._pending
            or self._rtr_pending
            or not self._may_transmit
            or self._dead
            or len(datas) > self._max_send_wr
            or max(map(len, datas)) > _FRAME_COPY_LIMIT
        ):
            post_each_send(self.post_send, wr_id, datas, signaled)
            return
        msn = next(self._send_msn)
        if len(datas) > 1:
            self._send_msn = itertools.count(msn + len(datas))
        framed = self.wire.frame_sends(msn, list(datas), self._untagged_chunk, self._crc)
        self._output.append(framed)
        self._queued += len(framed)
        self._marks.append((self._queued, wr_id, Opcode.SEND, len(datas[-1]), signaled))

    def post_write(self, wr_id: int, data: Buffer, token: int, address: int) -> None:
        self._post(_Write(wr_id, data, token, address), Opcode.RDMA_WRITE)

    def post_read(self, wr_id: int, into: memoryview, token: int, address: int) -> None:
        view = memoryview(into).cast("B")
        if view.readonly:
            raise ValueError("an RDMA read needs a writable buffer")
        if self.negotiation.ord == 0:
            raise RdmaError(errno.EINVAL, "RDMA read with an ORD of 0: the peer allows no reads")
        self._post(_Read(wr_id, view, token, address, next(self._sink_tokens) & 0xFFFFFFFF), Opcode.RDMA_READ)

    def _post(self, request: _Send | _Write | _Read, opcode: Opcode) -> None:
        if self._dead:
            self._completions.append(Completion(request.wr_id, opcode, Status.FLUSHED))
            return
        self._check_send_queue()
        self._pending.append(request)
        self._pump()

    def _check_send_queue(self) -> None:
        """Requests waiting to be framed and reads waiting for their response fill the send queue."""
        if len(self._pending) + len(self._outstanding_reads) >= self._max_send_wr:
            raise RdmaError(errno.ENOMEM, f"send queue full ({self._max_send_wr} work requests)")

    # ---- memory -------------------------------------------------------------------

    def register(self, buffer: memoryview, access: Access, address: int = 0) -> SoftMemoryRegion:
        return self.memory.register(buffer, access, address)

    # ---- I/O side -----------------------------------------------------------------

    def read_buffer(self) -> memoryview:
        """Where to read the next bytes from TCP into, then call :meth:`received`
        (this saves the copy :meth:`receive_bytes` makes of a read that
        completes an FPDU the last one began)."""
        return self._reader.read_buffer()

    def received(self, count: int) -> None:
        """``count`` bytes were read into :meth:`read_buffer`."""
        if self._dead:
            return
        self._reader.filled(count)
        self._take_segments()

    def receive_bytes(self, data: Buffer) -> None:
        """Feed bytes TCP delivered; ``data`` may be reused once this returns."""
        if self._dead:
            return
        self._reader.feed(data)
        self._take_segments()

    def _take_segments(self) -> None:
        """Handle the complete FPDUs the reader holds."""
        reader = self._reader
        try:
            if self.wire is not None:
                while self._receive_compiled(reader):  # the compiled core stopped in front of this FPDU
                    segment = reader.next_segment()
                    assert segment is not None
                    self._handle(segment)
                    if self._dead:
                        return
            else:
                while (segment := reader.next_segment()) is not None:
                    self._handle(segment)
                    if self._dead:
                        return
            reader.keep_rest()
        except MpaError as exc:
            self._terminate(str(exc), Terminate(Layer.LLP, ddp.LLP_MPA, MPA_CRC_ERROR))
            return
        except TerminateError as exc:
            self._terminate(str(exc), exc.terminate)
            return
        self._pump()  # once for all the segments: the first may have let us transmit, a response freed ORD

    def output(self, max_buffers: int = 512) -> list[Buffer]:
        """The next buffers to write, in order (they stay queued until :meth:`written`)."""
        return list(itertools.islice(self._output, max_buffers))

    def written(self, count: int) -> None:
        """``count`` bytes of :meth:`output` reached TCP: drop them, complete what they finish."""
        self._written += count
        while count:
            head = self._output[0]
            if len(head) <= count:
                count -= len(head)
                self._output.popleft()
            else:
                self._output[0] = memoryview(head)[count:]
                count = 0
        marks = self._marks
        while marks and marks[0][0] <= self._written:
            _, wr_id, opcode, byte_len, signaled = marks.popleft()
            if opcode is None:
                self._responses_queued -= 1  # a Read Response is out
                lent = self._lent
                while lent and lent[0][1] <= self._written:
                    lent.popleft()
            elif signaled:
                self._completions.append(Completion(wr_id, opcode, Status.SUCCESS, byte_len))

    def data_to_send(self) -> bytes:
        """Everything queued, as one buffer, taken as written (for tests and tools)."""
        data = b"".join(self._output)
        self.written(len(data))
        return data

    @property
    def wants_to_send(self) -> bool:
        return bool(self._output)

    @property
    def completions_ready(self) -> bool:
        return bool(self._completions)

    def poll(self) -> Completion | None:
        return self._completions.popleft() if self._completions else None

    def poll_many(self, max_count: int) -> list[Completion]:
        completions = self._completions
        if len(completions) <= max_count:
            self._completions = deque()
            return list(completions)
        return [completions.popleft() for _ in range(max_count)]

    def connection_lost(self, error: RdmaError) -> None:
        """TCP failed or the peer closed it."""
        if not self._dead:
            self._enter_error(error)

    def close(self) -> None:
        """Graceful close (no Terminate): what is framed still goes out, as posted
        sends do on a device; requests not yet framed and receives are flushed."""
        if not self._dead:
            self.closed = True
            self._flush_all(framed=False)

    @property
    def _dead(self) -> bool:
        return self.closed or self.error is not None

    # ---- outbound --------------------------------------------------------------------

    def _pump(self) -> None:
        if not self._may_transmit or self._dead:
            return
        if self._rtr_pending:
            self._rtr_pending = False
            self._send_rtr()
        while self._pending:
            request = self._pending[0]
            if isinstance(request, _Read):
                if len(self._outstanding_reads) >= self.negotiation.ord:
                    return  # ORD reached: the send queue waits, as on a real device
                self._pending.popleft()
                self._outstanding_reads.append(request)
                read = ReadRequest(request.sink_token, 0, len(request.into), request.token, request.address)
                self._queue(ddp.encode_read_request(next(self._read_msn), read), b"")
                continue
            self._pending.popleft()
            if isinstance(request, _Send):
                self._emit_send(
                    request.wr_id, request.data, request.invalidate_token, request.solicited, request.signaled
                )
            else:
                self._emit_tagged(Op.WRITE, request.token, request.address, request.data)
                self._marks.append((self._queued, request.wr_id, Opcode.RDMA_WRITE, len(request.data), True))

    def _queue(self, header: bytes, payload: Buffer) -> None:
        """Queue one FPDU."""
        for piece in fpdu_pieces(header, payload, self._crc):
            self._output.append(piece)
            self._queued += len(piece)

    def _send_rtr(self) -> None:
        """The zero-length ready-to-receive message of MPA peer-to-peer mode."""
        if self.negotiation.rtr == "write":
            self._queue(ddp.tagged_header(Op.WRITE, True, 1, 0), b"")
        else:
            rtr = _Read(-1, memoryview(bytearray()), 1, 0, 0)
            rtr.rtr = True
            self._outstanding_reads.append(rtr)
            self._queue(ddp.encode_read_request(next(self._read_msn), ReadRequest(0, 0, 0, 1, 0)), b"")

    def _chunks(self, data: Buffer, size: int) -> Iterator[tuple[int, memoryview, bool]]:
        view = memoryview(data).cast("B")
        if not len(view):
            yield 0, view, True
            return
        for start in range(0, len(view), size):
            yield start, view[start : start + size], start + size >= len(view)

    def _emit_send(
        self, wr_id: int, data: Buffer, invalidate_token: int | None, solicited: bool, signaled: bool
    ) -> None:
        """Frame one Send and mark where it completes."""
        if invalidate_token is None:
            op = Op.SEND_SE if solicited else Op.SEND
        else:
            op = Op.SEND_SE_INVALIDATE if solicited else Op.SEND_INVALIDATE
        msn = next(self._send_msn)
        word = invalidate_token or 0
        size = len(data)
        wire = self.wire
        if wire is not None and size <= _FRAME_COPY_LIMIT:  # most sends: one call frames them
            framed = wire.frame_one(op, word, msn, data, self._untagged_chunk, self._tagged_chunk, self._crc)
            self._output.append(framed)
            self._queued += len(framed)
        elif size <= self._untagged_chunk:  # one FPDU: most sends
            self._queue(ddp.untagged_header(op, True, ddp.QN_SEND, msn, 0, word), data)
        else:
            for start, chunk, last in self._chunks(data, self._untagged_chunk):
                self._queue(ddp.untagged_header(op, last, ddp.QN_SEND, msn, start, word), chunk)
        self._marks.append((self._queued, wr_id, Opcode.SEND, size, signaled))

    def _emit_tagged(self, op: Op, token: int, address: int, data: Buffer) -> None:
        if self.wire is not None and len(data) <= _FRAME_COPY_LIMIT:
            framed = self.wire.frame_one(op, token, address, data, self._untagged_chunk, self._tagged_chunk, self._crc)
            self._output.append(framed)
            self._queued += len(framed)
            return
        for start, chunk, last in self._chunks(data, self._tagged_chunk):
            self._queue(ddp.tagged_header(op, last, token, (address + start) & 0xFFFFFFFFFFFFFFFF), chunk)

    # ---- inbound ---------------------------------------------------------------------

    def _receive_compiled(self, reader: FpduReader) -> bool:
        """Let the compiled core handle the usual FPDUs (Sends, Writes, Read Responses) at
        the reader's position; True if it stopped in front of one for :meth:`_handle`."""
        assert self.wire is not None
        if self._lent:
            opcode = ddp.opcode_of(reader.next_segment_start())
            if opcode is not None and opcode != Op.READ_REQUEST:
                self._freeze()  # the core places what comes before the next Read Request
        current = self._current
        reads = self._outstanding_reads
        state = (
            self._expected_send_msn,
            current is not None,
            self._placed if current is not None else 0,
            reads[0].placed if reads else 0,
        )
        consumed, fpdus, current, state, fallback = self.wire.receive(
            reader.unread(),
            self._crc,
            state,
            current,
            self._receives,
            self.memory.regions,
            reads,
            self.memory,
            self._completions,
            _COMPLETION_KINDS,
        )
        if not fpdus:
            return bool(fallback)
        reader.skip(consumed)
        self._may_transmit = True  # the initiator spoke first: we may answer
        self._expected_send_msn, _, receive_placed, read_placed = state
        self._current = current
        self._placed = receive_placed
        if reads:
            reads[0].placed = read_placed
        return bool(fallback)

    def _handle(self, raw: memoryview) -> None:
        segment = ddp.parse_segment(raw)
        if self._lent and segment.op is not Op.READ_REQUEST:
            self._freeze()  # it may place data, or invalidate
        if not self._may_transmit:
            self._may_transmit = True  # the initiator spoke first: we may answer
        self._handlers.get(segment.op, self._on_send)(segment)

    def _on_send(self, segment: Segment) -> None:
        if segment.msn != self._expected_send_msn:
            raise TerminateError(
                f"Send MSN {segment.msn}, expected {self._expected_send_msn}",
                Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_INVALID_MSN, segment.header),
            )
        receive = self._current
        if receive is None:
            if not self._receives:
                raise TerminateError(
                    f"Send MSN {segment.msn} arrived with no receive posted",
                    Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_NO_BUFFER, segment.header),
                )
            receive = self._current = self._receives.popleft()
            self._placed = 0
        wr_id, buffer = receive
        placed = self._placed
        if segment.message_offset != placed:
            raise TerminateError(
                f"Send MO {segment.message_offset}, expected {placed}",
                Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_INVALID_MO, segment.header),
            )
        end = placed + len(segment.payload)
        if end > len(buffer):
            self._completions.append(
                Completion(wr_id, Opcode.RECV, Status.LOCAL_LENGTH_ERROR, end, reason="message too long")
            )
            self._current = None
            raise TerminateError(
                f"Send of at least {end} bytes overflows the {len(buffer)}-byte receive buffer",
                Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_TOO_LONG, segment.header),
            )
        buffer[placed:end] = segment.payload
        self._placed = end
        if not segment.last:
            return
        self._current = None
        self._expected_send_msn += 1
        invalidated = None
        if segment.op in (Op.SEND_INVALIDATE, Op.SEND_SE_INVALIDATE):
            try:
                self.memory.invalidate(segment.invalidate_token)
            except MemoryAccessError as exc:
                self._completions.append(
                    Completion(wr_id, Opcode.RECV, Status.REMOTE_INVALID_REQUEST, end, reason=str(exc))
                )
                raise TerminateError(
                    f"Send with Invalidate: {exc}",
                    Terminate(Layer.RDMAP, ddp.RDMAP_REMOTE_OPERATION, ddp.RDMAP_CANNOT_INVALIDATE, segment.header),
                ) from None
            invalidated = segment.invalidate_token
        solicited = segment.op in (Op.SEND_SE, Op.SEND_SE_INVALIDATE)
        self._completions.append(
            Completion(wr_id, Opcode.RECV, byte_len=end, invalidated_token=invalidated, solicited=solicited)
        )

    def _on_write(self, segment: Segment) -> None:
        if not len(segment.payload):
            return  # a zero-length Write (the RTR of peer-to-peer mode) touches nothing
        try:
            target = self.memory.lookup(segment.token, segment.offset, len(segment.payload), Access.REMOTE_WRITE)
        except MemoryAccessError as exc:
            raise TerminateError(
                f"RDMA Write: {exc}",
                Terminate(Layer.DDP, ddp.DDP_TAGGED, _TAGGED_FAULTS[exc.fault], segment.header),
            ) from None
        target[:] = segment.payload

    def _on_read_request(self, segment: Segment) -> None:
        if segment.msn != self._expected_read_msn:
            raise TerminateError(
                f"Read Request MSN {segment.msn}, expected {self._expected_read_msn}",
                Terminate(Layer.DDP, ddp.DDP_UNTAGGED, ddp.DDP_UNTAGGED_INVALID_MSN, segment.header),
            )
        self._expected_read_msn += 1
        request = ddp.decode_read_request(segment.payload)
        if self._responses_queued >= max(self.negotiation.ird, 1):
            raise TerminateError(
                f"Read Request beyond the IRD of {self.negotiation.ird}",
                Terminate(
                    Layer.RDMAP, ddp.RDMAP_REMOTE_OPERATION, ddp.RDMAP_REMOTE_STREAM_CATASTROPHIC, segment.header
                ),
            )
        if request.size:
            try:
                source = self.memory.lookup(
                    request.source_token, request.source_offset, request.size, Access.REMOTE_READ
                )
            except MemoryAccessError as exc:
                raise TerminateError(
                    f"RDMA Read: {exc}",
                    Terminate(
                        Layer.RDMAP,
                        ddp.RDMAP_REMOTE_PROTECTION,
                        _READ_FAULTS[exc.fault],
                        segment.header,
                        bytes(segment.payload),
                    ),
                ) from None
            # Requests execute in order, so what the peer sends after this one
            # must not show through: the response goes out of the memory itself,
            # as an RNIC's does, and is copied out first if anything that could
            # change it comes before it is written (_freeze). With CRC, a copy
            # now: the CRC must match the bytes written.
            data: Buffer = bytes(source) if self._crc else source
        else:
            data = b""
        self._responses_queued += 1
        start = self._queued
        self._emit_tagged(Op.READ_RESPONSE, request.sink_token, request.sink_offset, data)
        self._marks.append((self._queued, 0, None, 0, False))
        if isinstance(data, memoryview):
            self._lent.append((start, self._queued))

    def _freeze(self) -> None:
        """Copy the Read Responses still queued out of the memory they read: what
        comes next (data from the peer, an invalidation) may change it."""
        lent = self._lent
        output = self._output
        position = self._written
        for index, piece in enumerate(output):
            while lent and lent[0][1] <= position:
                lent.popleft()
            if not lent:
                break
            if lent[0][0] <= position and isinstance(piece, memoryview):
                output[index] = bytes(piece)
            position += len(piece)
        lent.clear()

    def invalidate(self, token: int) -> SoftMemoryRegion:
        """Invalidate a region locally; Read Responses queued from it are copied first."""
        if self._lent:
            self._freeze()
        return self.memory.invalidate(token)

    def deregister(self, region: SoftMemoryRegion) -> None:
        if self._lent:
            self._freeze()
        self.memory.deregister(region)

    def _on_read_response(self, segment: Segment) -> None:
        if not self._outstanding_reads:
            raise TerminateError(
                "Read Response with no read outstanding",
                Terminate(Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_INVALID_STAG, segment.header),
            )
        read = self._outstanding_reads[0]
        if segment.token != read.sink_token:
            raise TerminateError(
                f"Read Response to STag 0x{segment.token:08x}, expected 0x{read.sink_token:08x}",
                Terminate(Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_INVALID_STAG, segment.header),
            )
        end = read.placed + len(segment.payload)
        if segment.offset != read.placed or end > len(read.into) or (segment.last and end != len(read.into)):
            raise TerminateError(
                f"Read Response [{segment.offset}, +{len(segment.payload)}) does not continue the "
                f"{len(read.into)}-byte read at {read.placed}",
                Terminate(Layer.DDP, ddp.DDP_TAGGED, ddp.DDP_TAGGED_BASE_BOUNDS, segment.header),
            )
        read.into[read.placed : end] = segment.payload
        read.placed = end
        if segment.last:
            self._outstanding_reads.popleft()
            if not read.rtr:
                self._completions.append(Completion(read.wr_id, Opcode.RDMA_READ, byte_len=end))

    def _on_terminate(self, segment: Segment) -> None:
        try:
            terminate = Terminate.unpack(segment.payload, siw_layout=self._siw_layout)
        except ValueError as exc:
            self._enter_error(RdmaError(errno.ECONNRESET, f"peer terminated the connection: {exc}"))
            return
        reason = f"peer terminated the connection: {terminate.describe()}"
        refused_read = terminate.layer is Layer.RDMAP and terminate.error_type == ddp.RDMAP_REMOTE_PROTECTION
        if refused_read and self._outstanding_reads and not self._outstanding_reads[0].rtr:
            # The peer refused our oldest read: that request fails, the rest are flushed.
            read = self._outstanding_reads.popleft()
            self._completions.append(
                Completion(read.wr_id, Opcode.RDMA_READ, Status.REMOTE_ACCESS_ERROR, reason=reason)
            )
        self._enter_error(RdmaError(errno.ECONNRESET, reason))

    # ---- errors ------------------------------------------------------------------------

    def _terminate(self, reason: str, terminate: Terminate) -> None:
        """We found a fault: tell the peer, then enter the error state."""
        self._enter_error(RdmaError(errno.ECONNABORTED, reason))
        header = ddp.untagged_header(Op.TERMINATE, True, ddp.QN_TERMINATE, 1, 0)
        self._queue(header, terminate.pack(siw_layout=self._siw_layout))

    def _enter_error(self, error: RdmaError) -> None:
        self.error = error
        self._flush_all()
        self._output.clear()
        self._queued = self._written

    def _flush_all(self, *, framed: bool = True) -> None:
        """Flush every request (but those already framed, unless ``framed``) and every receive."""
        flushed = []
        if framed:
            flushed = [Completion(w, op, Status.FLUSHED) for _, w, op, _, _ in self._marks if op is not None]
            self._marks.clear()
        for request in (*self._outstanding_reads, *self._pending):
            if isinstance(request, _Read) and request.rtr:
                continue
            opcode = {
                _Send: Opcode.SEND,
                _Write: Opcode.RDMA_WRITE,
                _Read: Opcode.RDMA_READ,
            }[type(request)]
            flushed.append(Completion(request.wr_id, opcode, Status.FLUSHED))
        self._outstanding_reads.clear()
        self._pending.clear()
        if self._current is not None:
            self._receives.appendleft(self._current)
            self._current = None
        flushed.extend(Completion(wr_id, Opcode.RECV, Status.FLUSHED) for wr_id, _ in self._receives)
        self._receives.clear()
        self._completions.extend(flushed)
