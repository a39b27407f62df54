"""The SMB-Direct-to-TCP gateway: SMB-Direct for any SMB server.

Each SMB-Direct client gets its own TCP connection to the target server.
SMB2 messages are relayed unchanged: over SMB-Direct each is one message
(the kernel's framing: a 4-byte length per send, stripped on the wire), over
TCP each is led by the same 4-byte Direct-TCP header.  Nothing in an SMB2
message is rewritten (SMB 3.1.1 hashes the negotiate exchange and signs
requests).

By default the gateway negotiates large fragmented sizes
(:meth:`~smbdirect_socket.Parameters.with_large_messages`), so clients of
this project can carry 8 MiB READ and WRITE inline.

Clients are not trusted: each is a session that whatever it sends can end,
but not the gateway, and :class:`GatewayLimits` bounds the connections, their
set-up time, the requests and the RDMA bytes held (docs/limits.md).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator, Set
from functools import partial

import attrs
import trio

from .. import stats
from .. import trio as sdtrio
from ..connection import Connection
from ..constants import SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE as INVALIDATE
from ..constants import SMBDIRECT_IWARP_PORT, SOL_SMBDIRECT
from ..options import SocketInfo
from ..parameters import Parameters
from ..pdu import BufferDescriptorV1
from ..rdma import ConnectionRequest, Provider, get_provider
from . import smb2
from .limits import ByteBudget, GatewayLimits

__all__ = ["Gateway", "GatewayLimits", "gateway_thread", "serve_gateway", "translate"]

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">I")
_BACKLOG = 64
#: WRITE data goes from the client's buffers to the server through a buffer this large (or the session's budget).
_CHUNK = 1024 * 1024


class _TcpMessages:
    """Reads whole Direct-TCP messages (header included) from a byte stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    async def receive(self, limit: Callable[[], int]) -> bytes | None:
        """The next message, or None at a clean end of stream; one over ``limit()`` bytes
        (asked when its header is in) is EMSGSIZE."""
        if not await self._fill(_HEADER.size):
            if self._buffer:
                raise trio.BrokenResourceError("server closed the connection inside a message header")
            return None
        length: int = _HEADER.unpack_from(self._buffer)[0]
        if length > (most := limit()):
            raise OSError(
                errno.EMSGSIZE, f"the server's reply of {length} bytes is more than the client takes ({most})"
            )
        total = _HEADER.size + length
        if not await self._fill(total):
            raise trio.BrokenResourceError("server closed the connection inside a message")
        with memoryview(self._buffer) as view:
            message = bytes(view[:total])  # one copy: a server's READ answer may be 8 MiB
        del self._buffer[:total]
        return message


@attrs.define
class Gateway:
    """Relays SMB-Direct clients to the TCP SMB server at ``target``, within ``limits``."""

    target: tuple[str, int]
    parameters: Parameters = attrs.field(factory=lambda: Parameters().with_large_messages())
    provider: Provider | None = None
    limits: GatewayLimits = attrs.field(factory=GatewayLimits, kw_only=True)
    #: Connections now (those setting up included), sessions relayed in all, connections refused by a limit.
    active: int = attrs.field(default=0, init=False)
    served: int = attrs.field(default=0, init=False)
    refused: int = attrs.field(default=0, init=False)
    #: Bytes moved by RDMA channel I/O: read from clients (WRITE), written to them (READ).
    rdma_read_bytes: int = attrs.field(default=0, init=False)
    rdma_write_bytes: int = attrs.field(default=0, init=False)
    #: RDMA bytes all sessions hold (``used``, ``peak``), within ``limits.rdma_bytes_total``.
    rdma: ByteBudget = attrs.field(init=False)
    _per_address: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    #: The SMB-Direct address it listens on, once :meth:`serve` has started.
    address: tuple[str, int] | None = attrs.field(default=None, init=False)

    #: The parameters connections are accepted with: negotiation within ``limits.setup_timeout``.
    _setup: Parameters = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.rdma = ByteBudget(self.limits.rdma_bytes_total)
        timeout = min(self.parameters.negotiate_timeout_msec, int(self.limits.setup_timeout * 1000))
        self._setup = self.parameters.replace(negotiate_timeout_msec=max(timeout, 1))

    async def serve(
        self,
        listen: tuple[str, int] = ("0.0.0.0", SMBDIRECT_IWARP_PORT),
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for SMB-Direct at ``listen``; reports the bound address when started.

        Connection requests are taken straight from the RDMA engine, so that the
        limits count and time connections from their MPA request on.
        """
        provider = self.provider or get_provider()
        listener = provider.listen(listen, _BACKLOG)
        self.address = listener.address
        summary = stats.registry.add_summary(self.summary)
        try:
            task_status.started(listener.address)
            async with trio.open_nursery() as nursery:
                while True:
                    request = await listener.get_request()
                    if self._admit(request.peer_address[0]):
                        nursery.start_soon(self._session, provider, request)
                    else:
                        nursery.start_soon(_refuse, request)
        finally:
            stats.registry.remove_summary(summary)
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def summary(self) -> dict[str, object]:
        """The gateway's counters, as ``smbdirect stat`` shows them."""
        return {
            "gateway": f"SMB-Direct {_format(self.address or ('', 0))} -> TCP {_format(self.target)}",
            "active": self.active,
            "served": self.served,
            "refused": self.refused,
            "rdma_read_bytes": self.rdma_read_bytes,
            "rdma_write_bytes": self.rdma_write_bytes,
            "rdma_bytes_held": self.rdma.used,
            "rdma_bytes_peak": self.rdma.peak,
        }

    def _admit(self, address: str) -> bool:
        limits = self.limits
        if self.active >= limits.max_connections:
            reason = f"{self.active} connections, the most allowed (max_connections)"
        elif self._per_address[address] >= limits.max_connections_per_address:
            reason = f"{self._per_address[address]} connections from it, the most allowed (max_connections_per_address)"
        else:
            self.active += 1
            self._per_address[address] += 1
            return True
        self.refused += 1
        log.warning("client %s: refused: %s", address, reason)
        return False

    async def _session(self, provider: Provider, request: ConnectionRequest) -> None:
        """One client from its MPA request to its end: the session boundary."""
        peer = request.peer_address
        session = _Session(peer)
        try:
            try:  # the set-up deadline is the negotiation timer's: on expiry the engine drops the connection
                connection = await Connection.accept(request, self._setup)
            except OSError as exc:
                session.failed_setup(exc, self.limits.setup_timeout)
                return
            client = sdtrio.SMBDirectSocket.accepted(connection, provider=provider, parameters=self.parameters)
            session.client = client
            await self._relay(client, session)
        except Exception as exc:  # whatever one client does ends its session only
            session.failed(exc)
        except BaseException:
            session.end = session.end or "the gateway stopped"
            raise
        finally:
            session.log()
            self.active -= 1
            self._per_address[peer[0]] -= 1
            if not self._per_address[peer[0]]:
                del self._per_address[peer[0]]

    async def _relay(self, client: sdtrio.SMBDirectSocket, session: _Session) -> None:
        """Carry one client's SMB2 messages to its own TCP connection and back."""
        self.served += 1
        peer = session.peer
        info = session.negotiated = client.info()
        log.info(
            "client %s: connected, relaying to %s; %s",
            _format(peer),
            _format(self.target),
            _sizes(info),
        )
        with (
            client,
            stats.registry.track(
                "gateway", _format(self.address or ("", 0)), _format(peer), client.info, session.counters
            ),
        ):
            try:
                server = await trio.open_tcp_stream(*self.target)
            except OSError as exc:
                session.end = f"error: the server {_format(self.target)} is unreachable: {exc}"
                session.level = logging.WARNING
                return
            async with server:
                relay = session.relay = _Relay(self, client, server, peer)
                try:
                    await relay.run()
                finally:
                    session.end = session.end or relay.ended
                    session.final = client.info()  # before the socket closes


def _format(address: tuple[object, ...]) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sizes(info: SocketInfo) -> str:
    return (
        f"messages up to {info.max_fragmented_send_size} bytes out, {info.max_fragmented_receive_size} in "
        f"(fragments {info.max_send_size}/{info.max_receive_size}), read/write {info.max_read_write_size}"
    )


@attrs.define
class _Session:
    """One client's session as the log tells it: how it went and how it ended."""

    peer: tuple[str, int]
    started: float = attrs.field(factory=time.monotonic)
    client: sdtrio.SMBDirectSocket | None = None
    relay: _Relay | None = None
    negotiated: SocketInfo | None = None
    final: SocketInfo | None = None
    #: How it ended: "closed by the client", "closed by the server", "error: ...", "limit: ...".
    end: str = ""
    level: int = logging.INFO
    error: BaseException | None = None

    def counters(self) -> dict[str, object]:
        """What ``smbdirect stat`` adds to the socket's statistics."""
        relay = self.relay
        return {
            "server": _format(relay.server.socket.getpeername()) if relay is not None else "",
            "rdma_read_bytes": relay.rdma_read_bytes if relay is not None else 0,
            "rdma_write_bytes": relay.rdma_write_bytes if relay is not None else 0,
            "rdma_bytes_held": relay.rdma.used if relay is not None else 0,
        }

    def failed_setup(self, exc: OSError, setup_timeout: float) -> None:
        if exc.errno == errno.ETIMEDOUT:
            self.end = f"limit: SMB-Direct set-up not done within setup_timeout ({setup_timeout:g} s)"
        else:
            self.end = f"error: SMB-Direct set-up failed: {exc}"

    def failed(self, exc: Exception) -> None:
        """Why a session ended: a malformed request as a warning, a lost peer as info, a bug with its traceback."""
        leaves = list(_leaves(exc))
        reason = "; ".join(str(leaf) or type(leaf).__name__ for leaf in leaves)
        self.end = f"error: {reason}"
        if not all(isinstance(leaf, _EXPECTED) for leaf in leaves):
            self.end = f"an unexpected error; the gateway carries on: {reason}"
            self.level, self.error = logging.ERROR, exc
        elif any(isinstance(leaf, smb2.Smb2Error) for leaf in leaves):
            self.level = logging.WARNING
        elif any(isinstance(leaf, OSError) and leaf.errno == errno.EMSGSIZE for leaf in leaves):
            self.end = f"limit: {reason}"

    def log(self) -> None:
        """One line: peer, how it ended, duration, negotiated sizes, bytes each way, RDMA bytes."""
        parts = [f"client {_format(self.peer)}: session ended: {self.end or 'closed'}"]
        parts.append(f"after {time.monotonic() - self.started:.3f} s")
        if self.negotiated is not None:
            parts.append(_sizes(self.negotiated))
        info = self.final
        if info is None and self.client is not None:
            with contextlib.suppress(Exception):  # best effort: the socket may be gone
                info = self.client.info()
        if info is not None:
            parts.append(
                f"{info.bytes_received} bytes from the client in {info.messages_received} messages, "
                f"{info.bytes_sent} to it in {info.messages_sent}"
            )
        relay = self.relay
        if relay is not None:
            parts.append(f"RDMA read {relay.rdma_read_bytes} bytes, written {relay.rdma_write_bytes}")
        log.log(self.level, "; ".join(parts), exc_info=self.error)


async def _refuse(request: ConnectionRequest) -> None:
    with contextlib.suppress(OSError):  # the peer may be gone already
        await request.reject()


_EXPECTED = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, smb2.Smb2Error)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _span(descriptors: list[BufferDescriptorV1], offset: int, length: int) -> list[BufferDescriptorV1]:
    """The part of ``descriptors`` that holds bytes [offset, offset + length) of their concatenation."""
    covered = []
    for descriptor in descriptors:
        if length <= 0:
            break
        if offset >= descriptor.length:
            offset -= descriptor.length
            continue
        take = min(descriptor.length - offset, length)
        covered.append(BufferDescriptorV1(descriptor.offset + offset, descriptor.token, take))
        offset = 0
        length -= take
    if length > 0:
        raise smb2.Smb2Error("the buffer descriptors are shorter than the I/O")
    return covered


@attrs.frozen
class PendingRead:
    """A READ whose data goes by RDMA into the client's ``descriptors`` when the server answers."""

    descriptors: list[BufferDescriptorV1]
    invalidate: bool
    length: int


@attrs.frozen
class Part:
    """One command of a translated request: ``head`` (NextCommand set), then for an
    RDMA WRITE ``length`` bytes RDMA-read from ``source``, then ``pad`` zero bytes."""

    head: bytes
    pad: int
    source: list[BufferDescriptorV1] = attrs.field(factory=list)
    length: int = 0


@attrs.frozen
class Translation:
    """A request as it goes to the server, and what the gateway holds for it."""

    parts: list[Part]
    reads: dict[int, PendingRead]
    #: MessageId -> token to invalidate with the response of an RDMA WRITE.
    write_tokens: dict[int, int]
    #: The buffer the WRITE data passes through, a chunk at a time.
    chunk: int

    @property
    def size(self) -> int:
        return sum(len(part.head) + part.length + part.pad for part in self.parts)

    @property
    def hold(self) -> int:
        """RDMA bytes the session holds for it: READ data to come, and the WRITE chunk."""
        return sum(read.length for read in self.reads.values()) + self.chunk


def translate(
    commands: list[smb2.Command], limits: GatewayLimits, max_read_write_size: int = 0, in_use: Set[int] = frozenset()
) -> Translation:
    """The request ``commands`` make, RDMA channel I/O made ordinary, within ``limits``: sans-IO.

    Raises only :class:`~smbdirect_socket.smb.smb2.Smb2Error`, with the status a
    server would answer every command with.  ``in_use``: MessageIds of RDMA
    I/O still pending.
    """
    if len(commands) > limits.max_compound_commands:
        raise smb2.Smb2Error(
            f"{len(commands)} commands in a compound, more than {limits.max_compound_commands}",
            smb2.STATUS_INSUFFICIENT_RESOURCES,
        )
    heads: list[smb2.Command] = []
    sources: list[tuple[list[BufferDescriptorV1], int]] = []
    reads: dict[int, PendingRead] = {}
    write_tokens: dict[int, int] = {}
    for command in commands:
        channel = command.channel()
        if channel == smb2.CHANNEL_NONE:
            heads.append(command)
            sources.append(([], 0))
            continue
        if channel not in (smb2.CHANNEL_RDMA_V1, smb2.CHANNEL_RDMA_V1_INVALIDATE):
            raise smb2.Smb2Error(f"channel {channel} is not supported")
        if command.flags & smb2.FLAG_SIGNED:
            raise smb2.Smb2Error("RDMA channel I/O must not be signed")
        message_id = command.message_id
        if message_id in in_use or message_id in reads or message_id in write_tokens:
            raise smb2.Smb2Error(f"MessageId {message_id} is already in use")
        descriptors = command.descriptors()
        invalidate = channel == smb2.CHANNEL_RDMA_V1_INVALIDATE
        length = command.read_length() if command.command == smb2.READ else command.write_length()
        if max_read_write_size and length > max_read_write_size:
            raise smb2.Smb2Error(f"{length} bytes exceed the negotiated max read/write size {max_read_write_size}")
        source = _span(descriptors, 0, length)  # the buffers must hold what is asked
        if command.command == smb2.READ:
            reads[message_id] = PendingRead(descriptors, invalidate, length)
            heads.append(command.as_plain_read())
            sources.append(([], 0))
        else:
            if invalidate:
                write_tokens[message_id] = descriptors[0].token
            heads.append(command.as_inline_write(length))
            sources.append((source, length))
    parts = [
        Part(head, pad, source, length)
        for (head, pad), (source, length) in zip(
            smb2.chain(heads, [length for _, length in sources]), sources, strict=True
        )
    ]
    chunk = min(_CHUNK, limits.rdma_bytes_per_session, max(length for _, length in sources))
    translation = Translation(parts, reads, write_tokens, chunk)
    if translation.size > limits.max_compound_bytes:
        raise smb2.Smb2Error(
            f"a request of {translation.size} bytes, more than {limits.max_compound_bytes}",
            smb2.STATUS_INSUFFICIENT_RESOURCES,
        )
    if translation.hold > limits.rdma_bytes_per_session:
        raise smb2.Smb2Error(
            f"RDMA I/O of {translation.hold} bytes at once, more than {limits.rdma_bytes_per_session}",
            smb2.STATUS_INSUFFICIENT_RESOURCES,
        )
    return translation


@attrs.define
class _Relay:
    """One client: its SMB-Direct socket, its TCP connection, and its RDMA channel I/O.

    READ and WRITE requests with Channel RDMA_V1(_INVALIDATE) go to the server
    as ordinary ones: WRITE data is RDMA-read from the client's buffers and
    streamed to the server a chunk at a time; READ data coming back is
    RDMA-written into them and the response says so (DataLength 0,
    DataRemaining n), sent with invalidate when asked.  The RDMA bytes held
    are counted against the session's budget and the gateway's.
    """

    gateway: Gateway
    client: sdtrio.SMBDirectSocket
    server: trio.SocketStream
    peer: tuple[str, int]
    reads: dict[int, PendingRead] = attrs.field(factory=dict)
    #: MessageId -> token to invalidate with the response of an RDMA WRITE.
    write_tokens: dict[int, int] = attrs.field(factory=dict)
    rdma: ByteBudget = attrs.field(init=False)
    #: This session's RDMA channel I/O: bytes read from the client (WRITE), written to it (READ).
    rdma_read_bytes: int = 0
    rdma_write_bytes: int = 0
    #: Which end closed first: "closed by the client" or "closed by the server".
    ended: str = ""

    def __attrs_post_init__(self) -> None:
        self.rdma = ByteBudget(self.gateway.limits.rdma_bytes_per_session)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._upstream, nursery.cancel_scope)
                nursery.start_soon(self._downstream, nursery.cancel_scope)
        finally:
            self.gateway.rdma.release(self.rdma.used)  # READ data the server never sent

    async def _reserve(self, size: int) -> None:
        await self.rdma.acquire(size)
        try:
            await self.gateway.rdma.acquire(size)
        except BaseException:
            self.rdma.release(size)
            raise

    def _release(self, size: int) -> None:
        self.rdma.release(size)
        self.gateway.rdma.release(size)

    async def _upstream(self, done: trio.CancelScope) -> None:
        while header := await self.client.recv(_HEADER.size):
            (length,) = _HEADER.unpack(header)
            message = await self.client.recv(length) if length else b""
            await self._forward(message)
        self.ended = self.ended or "closed by the client"
        done.cancel()

    async def _forward(self, message: bytes) -> None:
        if not smb2.is_smb2(message):  # SMB1 negotiate, encrypted or compressed: as is
            await self.server.send_all(_HEADER.pack(len(message)) + message)
            return
        commands = smb2.split(message)  # no framing to answer by: the session ends, as a server disconnects
        try:
            translation = translate(
                commands,
                self.gateway.limits,
                self.client.info().max_read_write_size,
                self.reads.keys() | self.write_tokens.keys(),
            )
        except smb2.Smb2Error as exc:
            log.warning("client %s: answering %s with status %#x", self.peer[0], exc, exc.status)
            answer = smb2.join([smb2.error_response(command, exc.status) for command in commands])
            await self.client.send(_HEADER.pack(len(answer)) + answer)
            return
        await self._reserve(translation.hold)
        self.reads.update(translation.reads)
        self.write_tokens.update(translation.write_tokens)
        try:
            await self._send(translation)
        finally:
            self._release(translation.chunk)

    async def _send(self, translation: Translation) -> None:
        pending = [_HEADER.pack(translation.size)]
        for part in translation.parts:
            pending.append(part.head)
            if part.length:
                await self.server.send_all(b"".join(pending))
                pending = []
                await self._copy_write_data(part, translation.chunk)
            pending.append(bytes(part.pad))
        await self.server.send_all(b"".join(pending))

    async def _copy_write_data(self, part: Part, chunk: int) -> None:
        """RDMA-read a WRITE's data from the client into the server, ``chunk`` bytes at a time."""
        for offset in range(0, part.length, chunk):
            data = bytearray(min(chunk, part.length - offset))
            await self.client.rdma_read(data, _span(part.source, offset, len(data)))
            self.gateway.rdma_read_bytes += len(data)
            self.rdma_read_bytes += len(data)
            await self.server.send_all(data)

    async def _downstream(self, done: trio.CancelScope) -> None:
        messages = _TcpMessages(self.server)
        while (message := await messages.receive(self._reply_limit)) is not None:
            await self._answer(message)
        self.ended = self.ended or "closed by the server"
        done.cancel()

    def _reply_limit(self) -> int:
        """The largest reply the client can take inline, and the READ data it awaits by RDMA."""
        return self.client.info().max_fragmented_send_size + self.rdma.used

    async def _answer(self, message: bytes) -> None:
        body = message[_HEADER.size :]
        if not (self.reads or self.write_tokens) or not smb2.is_smb2(body):
            await self.client.send(message)
            return
        commands = smb2.split(body)
        token: int | None = None
        answered = []
        for command in commands:
            final = not (command.flags & smb2.FLAG_ASYNC and command.status == smb2.STATUS_PENDING)
            if final and command.message_id in self.reads:
                read = self.reads.pop(command.message_id)
                try:
                    if command.status == 0:
                        data = command.read_response_data()
                        if data:
                            await self.client.rdma_write(data, _span(read.descriptors, 0, len(data)))
                            self.gateway.rdma_write_bytes += len(data)
                            self.rdma_write_bytes += len(data)
                        command = command.as_rdma_read_response(len(data))
                finally:
                    self._release(read.length)
                if read.invalidate and token is None:
                    token = read.descriptors[0].token
            elif final and command.message_id in self.write_tokens:
                written_token = self.write_tokens.pop(command.message_id)
                token = written_token if token is None else token
            answered.append(command)
        reply = smb2.join(answered) if answered != commands else body
        ancillary = [] if token is None else [(SOL_SMBDIRECT, INVALIDATE, struct.pack("=I", token))]
        await self.client.sendmsg([_HEADER.pack(len(reply)), reply], ancillary)


async def serve_gateway(
    target: tuple[str, int],
    listen: tuple[str, int] = ("0.0.0.0", SMBDIRECT_IWARP_PORT),
    *,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
    limits: GatewayLimits | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a :class:`Gateway` from ``listen`` (SMB-Direct) to ``target`` (TCP) until cancelled."""
    gateway = Gateway(
        target,
        parameters or Parameters().with_large_messages(),
        provider,
        limits=limits or GatewayLimits(),
    )
    await gateway.serve(listen, task_status=task_status)


@contextlib.contextmanager
def gateway_thread(gateway: Gateway, listen: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[tuple[str, int]]:
    """Run ``gateway`` on its own trio loop in a thread; yields its listening address."""
    started: queue.Queue[tuple[tuple[str, int], trio.CancelScope, trio.lowlevel.TrioToken] | BaseException] = (
        queue.Queue()
    )

    async def main() -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    address = await nursery.start(partial(gateway.serve, listen))
                    started.put((address, scope, trio.lowlevel.current_trio_token()))
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), name="smbdirect-gateway", daemon=True)
    thread.start()
    outcome = started.get()
    if isinstance(outcome, BaseException):
        thread.join()
        raise outcome
    address, scope, token = outcome
    try:
        yield address
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join()
