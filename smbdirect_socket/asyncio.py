"""SMB-Direct for asyncio.

The same front door as :mod:`smbdirect_socket.trio`, with the same options
(``bytestream``, ``parameters``, ``provider``) and the same protocol code
underneath, for asyncio programs:

* :func:`open_connection` and :func:`start_server` give asyncio's
  ``StreamReader`` and ``StreamWriter``, as :func:`asyncio.open_connection`
  and :func:`asyncio.start_server` do over TCP;
* :func:`create_connection` and :func:`create_server` take a protocol
  factory, as the loop's methods of those names do, and give an
  :class:`SMBDirectTransport`;
* :func:`socket` is a non-blocking :class:`SMBDirectSocket` for the loop's
  ``sock_connect``, ``sock_accept``, ``sock_recv``, ``sock_sendall`` (its
  ``fileno()`` is a real, level-triggered descriptor that the loop's
  selector waits on).

The connections run on the package's engine thread (one trio loop per
process, the one the blocking socket uses); a transport hands data between
that thread and the asyncio loop without blocking either, so it runs on any
asyncio event loop.

The stream carries the same bytes as the trio stream in both modes.  In
byte-stream mode (``bytestream=True``) it is a plain byte stream, as over
TCP.  In framed mode (the kernel's, the default) each message is its 4-byte
big-endian length and then that many bytes, on the way out as on the way in:
``await reader.readexactly(4)`` gives the next message's length, and the
bytes written are cut into messages by their length headers (a message may be
written in pieces; it goes out once complete).  SMB-Direct has no half-close,
so ``can_write_eof()`` is false, and the end of the peer's stream ends the
connection.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket as _stdlib_socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import trio

from . import blocking, engine_thread
from . import trio as _trio
from ._tasks import log, serve_accepted
from .constants import IPPROTO_SMBDIRECT, SMBDIRECT_IWARP_PORT, SOL_SMBDIRECT
from .errors import socket_error
from .options import SMBDIRECT_BYTESTREAM, SocketInfo
from .parameters import Parameters
from .rdma import Provider

__all__ = [
    "SMBDirectServer",
    "SMBDirectSocket",
    "SMBDirectTransport",
    "create_connection",
    "create_server",
    "open_connection",
    "socket",
    "start_server",
]

T = TypeVar("T")
P = TypeVar("P", bound=asyncio.BaseProtocol)
Address = tuple[Any, ...]

_LENGTH = struct.Struct(">I")
_CLOSE = object()  # the end of the writes: close once they are sent


# ---- running trio code on the engine thread from asyncio ----------------------------------


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> bool:
    """Call ``callback(*args)`` on ``loop`` soon, from the engine thread; False if the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop was closed: nobody will take it
        return False
    return True


async def _on_engine(afn: Callable[..., Awaitable[T]], *args: Any, discard: Callable[[T], object] | None = None) -> T:
    """Await ``afn(*args)`` run on the engine thread, without blocking the asyncio loop.

    Cancelling the caller cancels ``afn``; a result that comes too late is
    handed to ``discard`` on the engine thread (to close a socket nobody took).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    scope = trio.CancelScope()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():  # the caller was cancelled meanwhile
            if error is None and discard is not None:
                engine_thread.call_soon(partial(discard, value))
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    async def run() -> None:
        with scope:
            try:
                value = await afn(*args)
            except Exception as exc:
                _post(loop, settle, None, exc)
                return
            if not _post(loop, settle, value, None) and discard is not None:
                discard(value)
            return
        _post(loop, settle, None, asyncio.CancelledError())  # cancelled from the asyncio side

    engine_thread.run_sync(partial(trio.lowlevel.spawn_system_task, run, name="smbdirect asyncio call"))
    try:
        return await future
    except asyncio.CancelledError:
        engine_thread.call_soon(scope.cancel)
        raise


# ---- the transport ---------------------------------------------------------------------------


class SMBDirectTransport(asyncio.Transport):
    """An asyncio transport over an SMB-Direct connection.

    Made by :func:`create_connection` and :func:`create_server` (not directly).
    ``get_extra_info`` knows ``"peername"`` and ``"sockname"``; :meth:`info`
    gives the connection's ``SMBDIRECT_INFO`` statistics.
    """

    #: The most one ``data_received`` call carries.
    max_size = 256 * 1024
    #: Bytes handed to the loop and not yet taken by the protocol, at most:
    #: the reader stops receiving beyond that, which withholds credits from the peer.
    read_window = max_size

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: _trio.SMBDirectSocket,
        protocol: asyncio.BaseProtocol,
        *,
        peername: Address,
        sockname: Address,
        on_lost: Callable[[SMBDirectTransport], object] | None = None,
    ) -> None:
        super().__init__({"peername": peername, "sockname": sockname})
        self._loop = loop
        self._sock = sock
        self._bytestream = sock.bytestream
        self._protocol = protocol
        self._on_lost = on_lost
        # The asyncio side.
        self._closing = False
        self._lost = False
        self._reading = True
        self._write_buffered = 0  # written, not yet sent
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._writing_paused = False
        # The engine side (touched only on the engine thread, after this constructor).
        self._outgoing_in, self._outgoing = trio.open_memory_channel[Any](math.inf)
        self._in_flight = 0  # handed to the loop, not yet taken
        self._paused = False
        self._flow = trio.Event()
        self._scope = trio.CancelScope()
        self._error: OSError | None = None
        loop.call_soon(protocol.connection_made, self)
        engine_thread.call_soon(partial(trio.lowlevel.spawn_system_task, self._run, name="asyncio transport"))

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return f"<SMBDirectTransport {state} peer={self.get_extra_info('peername')}>"

    # ---- the engine side ----------------------------------------------------------------

    async def _run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                await self._write()
                nursery.cancel_scope.cancel()
        self._sock.close()
        _post(self._loop, self._finish, self._error)

    def _fail(self, exc: OSError) -> None:
        if self._error is None:
            self._error = exc
        self._scope.cancel()

    async def _read(self) -> None:
        sock = self._sock
        remaining = 0  # of the current message, in framed mode
        try:
            while True:
                while self._paused or self._in_flight >= self.read_window:
                    self._flow = trio.Event()
                    await self._flow.wait()
                if self._bytestream:
                    data = await sock.recv(self.max_size)
                elif remaining:
                    data = await sock.recv(min(remaining, self.max_size))
                    remaining -= len(data)
                else:
                    data = await sock.recv(_LENGTH.size)  # at a message start: its length
                    if data:
                        (remaining,) = _LENGTH.unpack(data)
                if not data:
                    _post(self._loop, self._eof)
                    return
                self._in_flight += len(data)
                if not _post(self._loop, self._deliver, data):
                    self._scope.cancel()
                    return
        except OSError as exc:
            self._fail(exc)

    def _taken(self, size: int) -> None:
        self._in_flight -= size
        self._flow.set()

    def _pause(self, paused: bool) -> None:
        self._paused = paused
        self._flow.set()

    async def _write(self) -> None:
        sock = self._sock
        pending = bytearray()  # framed: a message not yet complete
        need = _LENGTH.size  # what ``pending`` must hold before it is worth looking at
        try:
            async for item in self._outgoing:
                if item is _CLOSE:
                    if pending:
                        log.warning("asyncio transport closed with %d bytes of an incomplete message", len(pending))
                    return
                if self._bytestream:
                    view = memoryview(item)
                    sent = 0
                    while sent < len(view):
                        sent += await sock.send(view[sent:])
                else:
                    if pending or len(item) < need:
                        pending += item
                        if len(pending) < need:
                            _post(self._loop, self._sent, len(item))
                            continue
                        data: Any = pending
                    else:
                        data = item
                    with memoryview(data) as view:
                        offset = 0
                        while len(view) - offset >= _LENGTH.size:
                            (length,) = _LENGTH.unpack_from(view, offset)
                            end = offset + _LENGTH.size + length
                            if end > len(view):
                                break
                            await sock.send(view[offset:end])  # one message
                            offset = end
                        rest = bytes(view[offset:])
                    pending[:] = rest
                    need = _LENGTH.size if len(rest) < _LENGTH.size else _LENGTH.size + _LENGTH.unpack_from(rest)[0]
                if not _post(self._loop, self._sent, len(item)):
                    return
        except OSError as exc:
            self._fail(exc)

    # ---- the asyncio side -----------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        engine_thread.call_soon(partial(self._taken, len(data)))
        if not self._closing:
            self._protocol.data_received(data)  # type: ignore[attr-defined]

    def _eof(self) -> None:
        if self._closing:
            return
        self._protocol.eof_received()  # type: ignore[attr-defined]
        self.close()  # no half-close: the peer's end ends the connection

    def _sent(self, size: int) -> None:
        self._write_buffered -= size
        if self._writing_paused and self._write_buffered <= self._low_water:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _finish(self, error: OSError | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._writing_paused and error is None:
            self._writing_paused = False
        try:
            self._protocol.connection_lost(error)
        finally:
            if self._on_lost is not None:
                self._on_lost(self)

    # ---- asyncio.Transport --------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; in framed mode the bytes are cut into messages by their length headers."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing or not data:
            return  # as asyncio's transports: writes after close go nowhere
        item = bytes(data)  # the caller may reuse its buffer
        self._write_buffered += len(item)
        engine_thread.call_soon(partial(self._outgoing_in.send_nowait, item))
        if not self._writing_paused and self._write_buffered > self._high_water:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write each of ``list_of_data``, as one write."""
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        """False: SMB-Direct has no half-close."""
        return False

    def write_eof(self) -> None:
        """Not supported: raises ``NotImplementedError`` (SMB-Direct has no half-close)."""
        raise NotImplementedError("SMB-Direct has no half-close (shutdown ends the connection): close() instead")

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent."""
        return self._write_buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)``: the write buffer's water marks for ``pause_writing`` and ``resume_writing``."""
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks: ``pause_writing`` above ``high`` bytes buffered,
        ``resume_writing`` at ``low`` (default: 64 KiB, and a quarter of ``high``)."""
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low

    def is_reading(self) -> bool:
        """Not paused, and not closing."""
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        """Stop ``data_received`` calls; the peer soon stops sending (no credits are granted)."""
        if self._closing or not self._reading:
            return
        self._reading = False
        engine_thread.call_soon(partial(self._pause, True))

    def resume_reading(self) -> None:
        """Call ``data_received`` again."""
        if self._closing or self._reading:
            return
        self._reading = True
        engine_thread.call_soon(partial(self._pause, False))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Call ``protocol`` from now on."""
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol the transport calls."""
        return self._protocol

    def is_closing(self) -> bool:
        """Closed, or closing."""
        return self._closing

    def close(self) -> None:
        """Send what was written, then close the connection (``connection_lost(None)``)."""
        if self._closing:
            return
        self._closing = True
        engine_thread.call_soon(partial(self._outgoing_in.send_nowait, _CLOSE))

    def abort(self) -> None:
        """Close at once; what was written and not yet sent is dropped."""
        self._closing = True
        engine_thread.call_soon(self._scope.cancel)

    def info(self) -> SocketInfo:
        """The connection's ``SMBDIRECT_INFO`` statistics (credits, sizes, counters)."""
        return engine_thread.run_sync(self._sock.info)


async def _make_transport(
    loop: asyncio.AbstractEventLoop,
    sock: _trio.SMBDirectSocket,
    protocol: asyncio.BaseProtocol,
    on_lost: Callable[[SMBDirectTransport], object] | None = None,
) -> SMBDirectTransport:
    peername, sockname = engine_thread.run_sync(lambda: (sock.getpeername(), sock.getsockname()))
    return SMBDirectTransport(loop, sock, protocol, peername=peername, sockname=sockname, on_lost=on_lost)


async def create_connection(
    protocol_factory: Callable[[], P],
    host: str,
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> tuple[SMBDirectTransport, P]:
    """Connect over SMB-Direct, like ``loop.create_connection`` over TCP.

    Tries each address of ``host`` in turn, as
    :func:`smbdirect_socket.trio.open_smbdirect_stream`; errors are the
    stdlib's ``OSError`` with the kernel's errno (``ECONNREFUSED``,
    ``ETIMEDOUT``, ...).
    """
    loop = asyncio.get_running_loop()
    stream = await _on_engine(
        partial(_trio.open_smbdirect_stream, bytestream=bytestream, parameters=parameters, provider=provider),
        host,
        port,
        discard=lambda stream: stream.socket.close(),
    )
    sock = stream.socket
    assert isinstance(sock, _trio.SMBDirectSocket)
    protocol = protocol_factory()
    transport = await _make_transport(loop, sock, protocol)
    made = loop.create_future()
    loop.call_soon(made.set_result, None)  # after connection_made
    await made
    return transport, protocol


async def open_connection(
    host: str,
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    limit: int = 2**16,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect over SMB-Direct and return asyncio's ``(StreamReader, StreamWriter)``,
    like :func:`asyncio.open_connection`.

    ``bytestream=True`` makes it a plain byte stream; otherwise each message is
    its 4-byte big-endian length and then its bytes, both ways.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(
        lambda: protocol, host, port, bytestream=bytestream, parameters=parameters, provider=provider
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


# ---- the server ----------------------------------------------------------------------------------


class _ListeningSocket:
    """What :attr:`SMBDirectServer.sockets` shows of a listening socket (as
    asyncio's ``TransportSocket``: its identity and addresses, not its I/O)."""

    def __init__(self, sock: _trio.SMBDirectSocket) -> None:
        self._sock = sock

    @property
    def family(self) -> _stdlib_socket.AddressFamily:
        return self._sock.family

    @property
    def type(self) -> _stdlib_socket.SocketKind:
        return _stdlib_socket.SOCK_STREAM

    @property
    def proto(self) -> int:
        return self._sock.proto

    def getsockname(self) -> Address:
        return engine_thread.run_sync(self._sock.getsockname)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        return engine_thread.run_sync(self._sock.getsockopt, level, optname, buflen)

    def __repr__(self) -> str:
        return f"<smbdirect_socket.asyncio listening socket {self._sock!r}>"


class SMBDirectServer(asyncio.AbstractServer):
    """A server listening for SMB-Direct, as ``asyncio.Server`` is for TCP.

    Made by :func:`create_server` and :func:`start_server`.  An async context
    manager (leaving it closes the server and waits for it), with
    ``serve_forever``, ``close``, ``wait_closed``, ``sockets``.
    ``wait_closed`` waits for the listeners and for every connection the
    server accepted to close (as asyncio does since Python 3.12).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: list[_trio.SMBDirectSocket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._loop = loop
        self._listeners = listeners
        self._protocol_factory = protocol_factory
        self._serving = False
        self._closed = False
        self._scopes: list[trio.CancelScope] = []
        self._transports: set[SMBDirectTransport] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._serving_forever: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<SMBDirectServer sockets={self.sockets!r}>"

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on."""
        return self._loop

    @property
    def sockets(self) -> tuple[_ListeningSocket, ...]:
        """The listening sockets: ``server.sockets[0].getsockname()`` is the address."""
        return () if self._closed else tuple(_ListeningSocket(sock) for sock in self._listeners)

    def is_serving(self) -> bool:
        """Accepting connections: started and not closed."""
        return self._serving

    async def start_serving(self) -> None:
        """Start accepting connections (at once, unless made with ``start_serving=False``)."""
        if self._serving or self._closed:
            return
        self._serving = True
        for sock in self._listeners:
            scope = trio.CancelScope()
            self._scopes.append(scope)
            engine_thread.run_sync(
                partial(trio.lowlevel.spawn_system_task, self._accept, sock, scope, name="asyncio server")
            )
        await asyncio.sleep(0)

    async def _accept(self, listener: _trio.SMBDirectSocket, scope: trio.CancelScope) -> None:
        async def hand_over(accepted: tuple[_trio.SMBDirectSocket, Address]) -> None:
            sock = accepted[0]
            state = (sock.getpeername(), sock.getsockname())
            if not _post(self._loop, self._accepted, sock, state):
                sock.close()
            await trio.lowlevel.checkpoint()

        with scope:
            await serve_accepted(listener.accept, hand_over, f"asyncio SMB-Direct server {listener.getsockname()}")

    def _accepted(self, sock: _trio.SMBDirectSocket, names: tuple[Address, Address]) -> None:
        if self._closed:
            engine_thread.call_soon(sock.close)
            return
        try:
            protocol = self._protocol_factory()
        except Exception:
            engine_thread.call_soon(sock.close)
            raise  # reported by the loop's exception handler, as asyncio does
        transport = SMBDirectTransport(
            self._loop, sock, protocol, peername=names[0], sockname=names[1], on_lost=self._lost
        )
        self._transports.add(transport)

    def _lost(self, transport: SMBDirectTransport) -> None:
        self._transports.discard(transport)
        self._wake()

    def _wake(self) -> None:
        if self._closed and not self._transports:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def close(self) -> None:
        """Stop listening; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        listeners, scopes = self._listeners, self._scopes

        def stop() -> None:
            for scope in scopes:
                scope.cancel()
            for sock in listeners:
                sock.close()

        engine_thread.call_soon(stop)
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
            self._serving_forever = None
        self._wake()

    def close_clients(self) -> None:
        """Close every connection the server accepted (their writes are sent first)."""
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        """Abort every connection the server accepted."""
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection it accepted has ended."""
        if self._closed and not self._transports:
            await asyncio.sleep(0)
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def serve_forever(self) -> None:
        """Accept connections until cancelled; then the server is closed (connections it accepted go on)."""
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        await self.start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            # Stop listening and end at once: connections already accepted go
            # on, and wait_closed is there to wait for them.
            self.close()
            raise
        finally:
            self._serving_forever = None

    async def __aenter__(self) -> SMBDirectServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _close_listeners(listeners: list[_trio.SMBDirectListener]) -> None:
    for listener in listeners:
        listener.socket.close()


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    backlog: int = 10,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
    start_serving: bool = True,
) -> SMBDirectServer:
    """Listen for SMB-Direct on ``port`` (all IPv4 addresses unless ``host``),
    like ``loop.create_server`` over TCP; each connection gets a protocol from
    ``protocol_factory`` and an :class:`SMBDirectTransport`.

    Port 0 picks a free port: ``server.sockets[0].getsockname()`` says which.
    """
    loop = asyncio.get_running_loop()
    listeners = await _on_engine(
        partial(
            _trio.open_smbdirect_listeners,
            host=host,
            backlog=backlog,
            bytestream=bytestream,
            parameters=parameters,
            provider=provider,
        ),
        port,
        discard=_close_listeners,
    )
    socks = []
    for listener in listeners:
        assert isinstance(listener.socket, _trio.SMBDirectSocket)
        socks.append(listener.socket)
    server = SMBDirectServer(loop, socks, protocol_factory)
    if start_serving:
        await server.start_serving()
    return server


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None],
    host: str | None = None,
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    limit: int = 2**16,
    backlog: int = 10,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
    start_serving: bool = True,
) -> SMBDirectServer:
    """Serve SMB-Direct connections as asyncio streams, like :func:`asyncio.start_server`.

    ``client_connected_cb(reader, writer)`` is called for each connection; a
    coroutine function runs as a task.
    """
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(
        factory,
        host,
        port,
        backlog=backlog,
        bytestream=bytestream,
        parameters=parameters,
        provider=provider,
        start_serving=start_serving,
    )


# ---- the socket for the loop's sock_* methods ------------------------------------------------------


class SMBDirectSocket(blocking.SMBDirectSocket):
    """The blocking socket, non-blocking, for the loop's ``sock_*`` methods.

    ``proto`` reads 0 here: asyncio's ``sock_connect`` resolves the address
    with ``getaddrinfo(..., proto=sock.proto)``, which refuses
    ``IPPROTO_SMBDIRECT``.  ``getsockopt(SOL_SOCKET, SO_PROTOCOL)`` still says
    ``IPPROTO_SMBDIRECT``.
    """

    @property
    def proto(self) -> int:
        return 0


def socket(
    family: int = _stdlib_socket.AF_INET,
    type: int = _stdlib_socket.SOCK_STREAM,
    proto: int = IPPROTO_SMBDIRECT,
    *,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> SMBDirectSocket:
    """A non-blocking SMB-Direct socket for ``loop.sock_connect``, ``sock_accept``,
    ``sock_recv``, ``sock_recv_into``, ``sock_sendall`` (on a selector event loop).

    Accepted sockets are :class:`smbdirect_socket.SMBDirectSocket`; make them
    non-blocking too (``sock_accept`` does).  In framed mode read each message
    as its 4-byte length, then that many bytes: a receive of N bytes waits
    for N.
    """
    if proto not in (0, IPPROTO_SMBDIRECT):
        raise socket_error(errno.EPROTONOSUPPORT, f"protocol {proto} is not IPPROTO_SMBDIRECT")
    sock = SMBDirectSocket(family, type, IPPROTO_SMBDIRECT, parameters=parameters, provider=provider)
    sock.setblocking(False)
    if bytestream:
        sock.setsockopt(SOL_SMBDIRECT, SMBDIRECT_BYTESTREAM, 1)
    return sock
