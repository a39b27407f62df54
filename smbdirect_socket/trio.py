"""SMB-Direct sockets for trio.

:func:`socket` returns an :class:`SMBDirectSocket`, a subclass of
``trio.socket.SocketType``, so ``trio.SocketStream`` and
``trio.SocketListener`` wrap it as they wrap a TCP socket.  It follows the
kernel's ``IPPROTO_SMBDIRECT`` socket: each send is one message led by a
4-byte big-endian length (checked, limited, stripped on the wire), a 4-byte
read at the start of a message returns that length again, reads return
exactly the bytes asked for, and ``shutdown`` ends the whole connection.
``setsockopt(SOL_SMBDIRECT, SMBDIRECT_BYTESTREAM, 1)`` makes it a plain byte
stream instead, for programs that are not length-framed.

:func:`open_smbdirect_stream`, :func:`open_smbdirect_listeners` and
:func:`serve_smbdirect` mirror trio's TCP helpers, and
:class:`~smbdirect_socket.routing.SMBDirectSocketFactory` routes chosen ports of ``trio.open_tcp_stream``
and ``trio.open_tcp_listeners`` to SMB-Direct.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import socket as _stdlib_socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any, NoReturn, Self

import trio

from . import options as opt
from ._addresses import bound_tcp_socket, connect_any
from ._event_loops import asyncio_running
from ._tasks import serve_accepted, spawn_background
from .connection import Connection, Registration
from .constants import (
    IPPROTO_SMBDIRECT,
    SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE,
    SMBDIRECT_IWARP_PORT,
    SOL_SMBDIRECT,
)
from .errors import ProtocolError, socket_error
from .lifecycle import SocketState, transition
from .parameters import Parameters
from .pdu import BufferDescriptorV1
from .rdma import ConnectionRequest, Listener, Provider, get_provider
from .readiness import ReadinessFd

__all__ = [
    "SMBDirectListener",
    "SMBDirectSocket",
    "SMBDirectStream",
    "open_smbdirect_listeners",
    "open_smbdirect_stream",
    "serve_smbdirect",
    "socket",
]

# Plain ints: tested on every send and receive, and enum flag arithmetic is slow.
_MSG_DONTWAIT = int(_stdlib_socket.MSG_DONTWAIT)
_ALLOWED_FLAGS = int(_MSG_DONTWAIT | _stdlib_socket.MSG_WAITALL | _stdlib_socket.MSG_NOSIGNAL)
_LENGTH = struct.Struct(">I")
#: What a framing error suggests: the caller wrote a plain byte stream.
_FRAMING_HINT = (
    "; framed socket: lead each message with its 4-byte big-endian length,"
    " or set SMBDIRECT_BYTESTREAM (bytestream=True)"
)
_INVALIDATE = struct.Struct("=I")
Address = tuple[Any, ...]
#: What ``receive_some()`` without a size asks for, as trio's own streams.
_DEFAULT_RECEIVE_SIZE = 65536


def _check_trio(exc: RuntimeError, name: str) -> None:
    """Say which front door to use when ``name`` failed because asyncio, not
    trio, runs the calling task; else let ``exc`` through."""
    if not trio.lowlevel.in_trio_run() and asyncio_running():
        raise RuntimeError(
            f"{name}() is smbdirect_socket.trio's API and was called from asyncio: use smbdirect_socket.asyncio there"
        ) from exc


class StreamSocketBase:
    """What this package's trio stream sockets share: ``family`` and ``type``
    (the family kept in ``_family``), and closing at the end of ``with``."""

    _family: int

    @property
    def family(self) -> _stdlib_socket.AddressFamily:
        return _stdlib_socket.AddressFamily(self._family)

    @property
    def type(self) -> _stdlib_socket.SocketKind:
        return _stdlib_socket.SOCK_STREAM

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SMBDirectSocket(StreamSocketBase, trio.socket.SocketType):
    """An ``IPPROTO_SMBDIRECT`` stream socket on an RDMA engine provider."""

    def __init__(
        self,
        family: int = _stdlib_socket.AF_INET,
        type: int = _stdlib_socket.SOCK_STREAM,
        proto: int = IPPROTO_SMBDIRECT,
        *,
        provider: Provider | None = None,
        parameters: Parameters | None = None,
    ) -> None:
        if family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
            raise socket_error(errno.EAFNOSUPPORT, "SMB-Direct sockets are AF_INET or AF_INET6")
        if type & ~(_stdlib_socket.SOCK_NONBLOCK | _stdlib_socket.SOCK_CLOEXEC) != _stdlib_socket.SOCK_STREAM:
            raise socket_error(errno.EPROTONOSUPPORT, "SMB-Direct sockets are SOCK_STREAM")
        self._family = family
        self._proto = IPPROTO_SMBDIRECT if proto in (0, _stdlib_socket.IPPROTO_TCP) else proto
        if self._proto != IPPROTO_SMBDIRECT:
            raise socket_error(errno.EPROTONOSUPPORT, f"protocol {proto} is not IPPROTO_SMBDIRECT")
        self._provider = provider or get_provider()
        self.parameters = parameters or Parameters()
        self.bytestream = False
        self._state = SocketState.NEW  # changed only by transition()
        # What the state holds: the bound address (and its TCP socket, until
        # listen or connect takes it), the listener, the connection.
        self._bound: Address | None = None
        self._bound_socket: _stdlib_socket.socket | None = None
        self._listener: Listener | None = None
        self._connection: Connection | None = None
        self._so_error: OSError | None = None  # a failed connect's error, until SO_ERROR reads it
        self._readiness: ReadinessFd | None = None
        self._receiving = False
        self._partial = bytearray()  # part of a receive that is still waiting for the rest
        # The byte stream view (receive_some): what is left of the current
        # message's length header and of its payload.
        self._header = b""
        self._message_left = 0
        self._ready: trio.MemoryReceiveChannel[Connection] | None = None
        self._listen_scope: trio.CancelScope | None = None

    # ---- identity --------------------------------------------------------------------

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._state is SocketState.SHUT_DOWN

    def fileno(self) -> int:
        """A real descriptor, readable exactly while :meth:`is_readable`; -1 once closed."""
        if self._state is SocketState.CLOSED:
            return -1
        if self._readiness is None:
            self._readiness = ReadinessFd()
            self._update_readiness()
            if self._connection is not None:
                self._connection.watch_descriptor()
        return self._readiness.fileno()

    def _update_readiness(self) -> None:
        if self._readiness is not None:
            self._readiness.update(self.is_readable(), self.is_writable())

    def _attach(self, connection: Connection, event: str) -> None:
        self._state = transition(self._state, event)
        self._connection = connection
        connection.on_change.append(self._update_readiness)
        if self._readiness is not None:
            connection.watch_descriptor()
        self._update_readiness()

    def __repr__(self) -> str:
        return f"<SMBDirectSocket family={self.family.name} state={self._state_name()}>"

    def _state_name(self) -> str:
        if self._state is SocketState.CONNECTED and self._connection is not None and self._connection.ended:
            return "closed"  # the peer left, or the connection failed
        return self._state.value

    def _check_open(self) -> None:
        if self._state is SocketState.CLOSED:
            raise socket_error(errno.EBADF, "socket is closed")

    @property
    def connection(self) -> Connection | None:
        """The SMB-Direct connection once connected or accepted."""
        return self._connection

    def _connected(self) -> Connection:
        self._check_open()
        if self._connection is None:
            raise socket_error(errno.ENOTCONN, "socket is not connected")
        return self._connection

    # ---- addresses ---------------------------------------------------------------------

    async def _resolve(self, address: Address) -> Address:
        if not isinstance(address, tuple) or len(address) < 2:
            raise socket_error(errno.EINVAL, f"address must be (host, port), got {address!r}")
        host, port = address[0], address[1]
        infos = await trio.socket.getaddrinfo(host, port, self._family, _stdlib_socket.SOCK_STREAM)
        if not infos:
            raise socket_error(errno.EAFNOSUPPORT, f"no {self.family.name} address for {host!r}")
        return tuple(infos[0][4])

    async def bind(self, address: Address) -> None:
        """Bind the address to listen on, or to connect from (the privileged-port
        check treats 5445 like 445)."""
        transition(self._state, "bind")  # refused now, before resolving
        try:
            resolved = await self._resolve(address)
        except RuntimeError as exc:
            _check_trio(exc, "bind")
            raise
        sock = bound_tcp_socket(self._family, resolved)
        try:
            self._state = transition(self._state, "bind")  # (closed meanwhile: EBADF)
        except OSError:
            sock.close()
            raise
        self._bound_socket = sock
        self._bound = tuple(sock.getsockname())

    def listen(self, backlog: int = 10) -> None:
        """Listen on the bound address; each connection negotiates SMB-Direct in the background
        before ``accept`` sees it."""
        if transition(self._state, "listen") is self._state:
            return  # listening already
        assert self._bound is not None and self._bound_socket is not None
        self._listener = self._provider.listen((self._bound[0], self._bound[1]), backlog, sock=self._bound_socket)
        self._bound_socket = None
        self._state = transition(self._state, "listen")
        send, self._ready = trio.open_memory_channel[Connection](max(backlog, 1))
        self._listen_scope = spawn_background(
            "smbdirect listener", partial(self._negotiate_incoming, self._listener, send)
        )

    def getsockname(self) -> Address:
        """The local address (the bound one before connect or listen)."""
        self._check_open()
        if self._connection is not None:
            return self._connection.local_address
        if self._listener is not None:
            return self._listener.address
        if self._bound is not None:
            return self._bound
        return ("0.0.0.0", 0) if self._family == _stdlib_socket.AF_INET else ("::", 0, 0, 0)

    def getpeername(self) -> Address:
        """The peer's address (``ENOTCONN`` unless connected)."""
        return self._connected().peer_address

    # ---- connect / accept -----------------------------------------------------------------

    async def connect(self, address: Address) -> None:
        """Connect and negotiate SMB-Direct (from the bound address, if bound)."""
        try:
            self._state = transition(self._state, "connect")
            await self._connect(address)
        except RuntimeError as exc:
            _check_trio(exc, "connect")
            raise

    def connect_nowait(self, address: Address) -> NoReturn:
        """A non-blocking connect: start connecting and raise ``BlockingIOError``
        (``EINPROGRESS``) at once.  Meanwhile ``connect`` gives ``EALREADY`` and the
        socket is not writable; then it is, with the outcome in ``SO_ERROR`` (a
        failed attempt's error is also raised by the next ``connect_nowait``)."""
        if self._so_error is not None and self._state is SocketState.NEW:
            error, self._so_error = self._so_error, None
            raise error
        self._state = transition(self._state, "connect")
        self._update_readiness()  # not writable from now until connected (or failed)

        async def connect_in_background() -> None:
            with contextlib.suppress(OSError):  # kept in SO_ERROR for the program to collect
                await self._connect(address)

        trio.lowlevel.spawn_system_task(connect_in_background, name="smbdirect connect")
        raise socket_error(errno.EINPROGRESS, "Operation now in progress")

    async def _connect(self, address: Address) -> None:
        """Connect, in the connecting state (EALREADY, not writable meanwhile)."""
        self._update_readiness()
        source = None
        if self._bound_socket is not None:  # bind() before connect(): connect from there
            source = (self._bound[0], self._bound[1]) if self._bound else None
            self._bound_socket.close()
            self._bound_socket = None
        try:
            resolved = await self._resolve(address)
            connection = await Connection.connect(self._provider, (resolved[0], resolved[1]), self.parameters, source)
        except BaseException as exc:  # failed, or cancelled (a timeout): connect may be tried again
            if self._state is SocketState.CONNECTING:
                if isinstance(exc, OSError):
                    self._so_error = exc
                self._state = transition(self._state, "connect failed")
            self._update_readiness()
            raise
        if self._state is SocketState.CLOSED:
            await connection.aclose()
            raise socket_error(errno.EBADF, "socket was closed during connect")
        self._attach(connection, "connected")

    async def accept(self) -> tuple[SMBDirectSocket, Address]:
        """The next connection that completed SMB-Direct negotiation."""
        self._check_open()
        if self._state is not SocketState.LISTENING or self._ready is None:
            raise socket_error(errno.EINVAL, "socket is not listening")
        try:
            connection = await self._ready.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise socket_error(errno.EBADF, "socket is closed") from None
        except RuntimeError as exc:
            _check_trio(exc, "accept")
            raise
        self._update_readiness()
        child = SMBDirectSocket.accepted(connection, provider=self._provider, parameters=self.parameters)
        child.bytestream = self.bytestream
        return child, connection.peer_address

    @classmethod
    def accepted(
        cls, connection: Connection, *, provider: Provider | None = None, parameters: Parameters | None = None
    ) -> SMBDirectSocket:
        """A connected socket for ``connection``, which a listener of one's own accepted (as the gateway does)."""
        family = _stdlib_socket.AF_INET6 if ":" in connection.peer_address[0] else _stdlib_socket.AF_INET
        sock = cls(family, provider=provider, parameters=parameters)
        sock._attach(connection, "accepted")
        return sock

    async def _negotiate_incoming(self, listener: Listener, ready: trio.MemorySendChannel[Connection]) -> None:
        """Negotiate each connection request in the background, like the kernel's
        SYN_RECV queue: accept() only ever sees established connections."""

        async def negotiate(request: ConnectionRequest) -> None:
            try:
                connection = await Connection.accept(request, self.parameters)
            except OSError:
                return  # that peer failed negotiation; the listener carries on
            try:
                await ready.send(connection)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await connection.aclose()
                return
            self._update_readiness()

        async with ready:  # accept() sees the end once nothing more can come
            await serve_accepted(listener.get_request, negotiate, f"SMB-Direct listener {listener.address}")

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, data: Any, flags: int = 0) -> int:
        """Send one message (framed: its 4-byte length, then the payload; returns the whole count),
        or up to the max fragmented send size of a byte stream (returns what it took).
        """
        return await self._send(memoryview(data).cast("B"), flags, None)

    async def sendmsg(
        self,
        buffers: Iterable[Any],
        ancdata: Iterable[tuple[int, int, Any]] = (),
        flags: int = 0,
        address: Address | None = None,
    ) -> int:
        """``send`` of the buffers joined, with at most one control message: the remote invalidate
        ``(SOL_SMBDIRECT, SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE, struct.pack("=I", token))``.
        """
        data, token = self.message_of(buffers, ancdata, address)
        return await self._send(data, flags, token)

    @staticmethod
    def message_of(
        buffers: Iterable[Any], ancdata: Iterable[tuple[int, int, Any]], address: Address | None
    ) -> tuple[memoryview, int | None]:
        """The bytes of a ``sendmsg`` (a copy: queued, they outlive the call) and its
        remote-invalidate token."""
        if address is not None:
            raise socket_error(errno.EISCONN, "sendmsg on a connected stream takes no address")
        data = b"".join(memoryview(b).cast("B") for b in buffers)
        token = None
        ancillary = list(ancdata)
        if len(ancillary) > 1:
            raise socket_error(errno.EINVAL, "at most one control message")
        for level, kind, payload in ancillary:
            if level != SOL_SMBDIRECT or kind != SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE:
                raise socket_error(
                    errno.EINVAL, f"control message ({level}, {kind:#x}) is not SMB-Direct remote invalidate"
                )
            if len(payload) != _INVALIDATE.size:
                raise socket_error(errno.EMSGSIZE, f"remote invalidate takes a 4-byte token, got {len(payload)} bytes")
            (token,) = _INVALIDATE.unpack(payload)
        return memoryview(data), token

    async def _send(self, data: memoryview, flags: int, token: int | None) -> int:
        connection = self._connected()
        sent = self.send_nowait(data, flags, token)
        try:
            await connection.wait_sent()
        except RuntimeError as exc:
            _check_trio(exc, "send")
            raise
        return sent

    def send_nowait(self, data: memoryview, flags: int, token: int | None = None) -> int:
        """Queue one send (a message; in byte-stream mode what fits one) and post
        what credits allow; ``BlockingIOError`` with ``MSG_DONTWAIT`` and no credits.
        The bytes it counts are sent: the caller waits for the rest to be posted
        with :meth:`Connection.check_sent`."""
        if flags & ~_ALLOWED_FLAGS:
            raise socket_error(errno.EINVAL, f"flags {flags:#x}: only MSG_DONTWAIT, MSG_WAITALL and MSG_NOSIGNAL")
        connection = self._connected()
        if self._state is SocketState.SHUT_DOWN:
            raise socket_error(errno.EPIPE, "socket was shut down")
        if self.bytestream:
            payload = data[: connection.negotiated.max_fragmented_send_size]
            sent = len(payload)
        else:
            if len(data) < _LENGTH.size:
                raise socket_error(
                    errno.EINVAL, f"a message starts with a 4-byte length; got {len(data)} bytes{_FRAMING_HINT}"
                )
            (declared,) = _LENGTH.unpack_from(data)
            payload = data[_LENGTH.size :]
            if declared != len(payload):
                raise socket_error(
                    errno.EINVAL, f"length header says {declared} bytes, {len(payload)} follow{_FRAMING_HINT}"
                )
            sent = len(data)
        if not len(payload):
            # Nothing to carry: an SMB-Direct data message without data is only a
            # credit grant, so an empty framed message sends nothing and is done.
            return sent
        if flags & _MSG_DONTWAIT and not connection.can_send:
            raise socket_error(errno.EAGAIN, "no send credits")
        connection.queue_message(payload, token)
        return sent

    async def wait_writable(self) -> None:
        """Wait until a send would not wait for credits."""
        connection = self._connected()
        try:
            await connection.wait_writable()
            await trio.lowlevel.checkpoint()
        except RuntimeError as exc:
            _check_trio(exc, "wait_writable")
            raise

    # ---- receiving ---------------------------------------------------------------------------

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive ``bufsize`` bytes: framed, exactly that many (a 4-byte read at a message start
        gives its length); byte stream, what has arrived; ``b""`` at the end of the stream.
        """
        return await self._recv(bufsize, flags)

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """``recv`` into ``buffer`` (``nbytes`` of it, or all of it); return the count."""
        view = memoryview(buffer).cast("B")
        # Checked before anything is read, with the stdlib's messages.
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        data = await self._recv(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data)

    async def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple[bytes, list[Any], int, Any]:
        """``recv``, as ``(data, [], 0, None)``: SMB-Direct delivers no control messages."""
        data = await self._recv(bufsize, flags)
        return data, [], 0, None

    async def _recv(self, size: int, flags: int) -> bytes:
        return await self._receive(self.check_receive(size, flags), flags, self.receive_nowait, "recv")

    async def receive_some(self, max_bytes: int) -> bytes:
        """What :meth:`SMBDirectStream.receive_some` returns: up to ``max_bytes``
        of what has arrived, as soon as anything has (see :meth:`receive_some_nowait`)."""
        return await self._receive(self.check_receive(max_bytes, 0), 0, self.receive_some_nowait, "receive_some")

    async def _receive(self, size: int, flags: int, step: Callable[[int, int], bytes], name: str) -> bytes:
        # Like trio's own sockets: one task waits to receive at a time.
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        connection = self._connected()
        self._receiving = True
        waited = False  # a receive that waited has been a checkpoint already
        try:
            while True:
                try:
                    data = step(size, flags)
                except BlockingIOError:
                    if flags & _MSG_DONTWAIT:
                        raise
                    await connection.wait_changed()
                    waited = True
                    continue
                if not waited:
                    await trio.lowlevel.checkpoint()
                return data
        except RuntimeError as exc:
            _check_trio(exc, name)
            raise
        finally:
            self._receiving = False

    @staticmethod
    def check_receive(size: int, flags: int) -> int:
        """``size`` as an int, once the flags and the size are found valid."""
        if flags & ~_ALLOWED_FLAGS:
            raise socket_error(errno.EINVAL, f"flags {flags:#x}: only MSG_DONTWAIT, MSG_WAITALL and MSG_NOSIGNAL")
        size = operator.index(size)  # TypeError for anything but an int, as the stdlib
        if size < 0:
            raise socket_error(errno.EINVAL, "negative buffer size")
        return size

    def receive_nowait(self, size: int, flags: int = 0) -> bytes:
        """What a receive of ``size`` bytes returns now, or ``BlockingIOError`` when it
        would wait (the one receive step of every front door)."""
        connection = self._connected()
        partial = self._partial
        while size:
            if not self.bytestream and size == _LENGTH.size and not partial and connection.message_start() is not None:
                return _LENGTH.pack(connection.consume_message_start())
            readable = connection.readable
            if len(partial) + readable >= (1 if self.bytestream else size) or connection.ended:
                break
            if not readable:
                raise socket_error(errno.EAGAIN, "not enough data reassembled")
            # A receive of N bytes waits for all N; taking what has arrived frees
            # receive buffers, so messages larger than the receive credits can
            # arrive.  Kept on the socket, it survives a cancelled receive.
            connection.read_into(partial, readable)
        available = len(partial) + connection.readable
        if size and available >= (1 if self.bytestream else size):
            take = min(size, available)
            if not partial:
                return connection.read(take)
            if len(partial) < take:
                connection.read_into(partial, take - len(partial))
            if len(partial) == take:  # the usual end of a message that came in parts: one copy out
                data = bytes(partial)
                partial.clear()
            else:
                data = bytes(partial[:take])
                del partial[:take]
            return data
        if not size or (not available and (connection.at_eof or self._state is SocketState.SHUT_DOWN)):
            return b""
        # The connection ended before the bytes asked for could arrive.
        raise connection.error or socket_error(errno.ECONNRESET, "connection ended")

    def receive_some_nowait(self, max_bytes: int, flags: int = 0) -> bytes:
        """The byte stream view of the socket: what a TCP peer would read.

        In byte-stream mode it is :meth:`receive_nowait`.  Framed, each message
        reads as its 4-byte big-endian length followed by its payload, the
        stream a length-framed TCP peer sends; a call returns up to
        ``max_bytes`` of it from what has arrived, never crossing into the next
        message, and ``BlockingIOError`` when nothing has.  Mixed with the exact
        reads of ``recv`` on the same socket, it goes on from where they stopped.
        """
        if self.bytestream:
            return self.receive_nowait(max_bytes, flags)
        connection = self._connected()
        if not max_bytes:
            return b""
        partial = self._partial
        if not (self._header or self._message_left or partial) and connection.message_start() is not None:
            self._message_left = connection.consume_message_start()
            self._header = _LENGTH.pack(self._message_left)
        data = b""
        if self._header:
            data = self._header[:max_bytes]
            self._header = self._header[len(data) :]
            max_bytes -= len(data)
        if self._message_left:  # never more than the rest of this message
            max_bytes = min(max_bytes, self._message_left)
        if max_bytes and (partial or connection.readable):
            if partial:
                body = bytes(partial[:max_bytes])
                del partial[: len(body)]
            else:
                body = connection.read(min(max_bytes, connection.readable))
            self._message_left = max(self._message_left - len(body), 0)
            data += body
        if data:
            return data
        if not connection.ended:
            raise socket_error(errno.EAGAIN, "nothing has arrived")
        if connection.at_eof or self._state is SocketState.SHUT_DOWN:
            return b""
        raise connection.error or socket_error(errno.ECONNRESET, "connection ended")

    def is_readable(self) -> bool:
        """Data, a message start or the end of the connection waits (or the socket is closed)."""
        connection = self._connection
        if self._state is SocketState.CLOSED:
            return True
        if self._ready is not None:
            return self._ready.statistics().current_buffer_used > 0
        if connection is None:
            return False
        return bool(self._partial or self._header or connection.readable) or connection.ended

    def is_writable(self) -> bool:
        """A send would not wait for credits (or would fail at once: closed, broken, new)."""
        state = self._state
        if state in (SocketState.NEW, SocketState.BOUND, SocketState.CLOSED):
            return True
        connection = self._connection
        if connection is None:
            return False  # connecting, or listening
        return connection.can_send or connection.ended

    # ---- RDMA read and write -----------------------------------------------------------

    def register_buffer(self, buffer: Any, *, writable: bool = False) -> Registration:
        """Let the peer RDMA-read ``buffer`` (and write it, if ``writable``).

        Send ``registration.pack()`` (a Buffer Descriptor V1 list, as SMB2
        READ/WRITE carry) to the peer; it may touch exactly that buffer until
        :meth:`deregister_buffer` or a send with remote invalidate of its token.
        """
        return self._connected().register(memoryview(buffer), writable=writable)

    def deregister_buffer(self, registration: Registration) -> None:
        """End the peer's access to a buffer of :meth:`register_buffer`."""
        self._connected().deregister(registration)

    async def rdma_read(self, into: Any, descriptors: list[BufferDescriptorV1]) -> None:
        """Fill ``into`` from the peer's registered buffers (bounded by the negotiated
        max read/write size; ``EINVAL`` when the descriptors do not cover ``into``)."""
        try:
            await self._connected().rdma_read(memoryview(into), descriptors)
        except RuntimeError as exc:
            _check_trio(exc, "rdma_read")
            raise

    async def rdma_write(self, data: Any, descriptors: list[BufferDescriptorV1]) -> None:
        """Write ``data`` into the peer's registered buffers."""
        try:
            await self._connected().rdma_write(memoryview(data), descriptors)
        except RuntimeError as exc:
            _check_trio(exc, "rdma_write")
            raise

    # ---- options ------------------------------------------------------------------------------

    def setsockopt(  # type: ignore[override]
        self, level: int, optname: int, value: int | bytes | None, optlen: int | None = None
    ) -> None:
        """Set an option: ``SOL_SMBDIRECT`` ones (parameters before connect or listen, the byte stream
        any time), ``SO_REUSEADDR`` (always on); others raise ``ENOPROTOOPT``.
        """
        self._check_open()
        if level == _stdlib_socket.SOL_SOCKET and optname == _stdlib_socket.SO_REUSEADDR:
            return  # always on for the listening TCP socket of the software provider
        if level == _stdlib_socket.IPPROTO_IPV6 and optname == _stdlib_socket.IPV6_V6ONLY and value:
            return  # AF_INET6 SMB-Direct sockets are always v6-only, as the kernel's
        if level != SOL_SMBDIRECT:
            raise socket_error(errno.ENOPROTOOPT, f"option ({level}, {optname}) is not supported")
        if optname == opt.SMBDIRECT_BYTESTREAM:
            self.bytestream = bool(value)
            return
        if optname == opt.SMBDIRECT_INFO:
            raise socket_error(errno.EINVAL, "SMBDIRECT_INFO is read-only")
        if self._state not in (SocketState.NEW, SocketState.BOUND):
            code = errno.EINVAL if self._state is SocketState.LISTENING else errno.EISCONN
            raise socket_error(code, f"parameters are fixed once {self._state.value}")
        try:
            if optname == opt.SMBDIRECT_PARAMETERS:
                if not isinstance(value, bytes | bytearray | memoryview):
                    raise socket_error(errno.EINVAL, "SMBDIRECT_PARAMETERS takes the packed structure")
                self.parameters = Parameters.unpack(bytes(value))
            elif optname in opt.PARAMETER_OPTIONS:
                if not isinstance(value, int):
                    raise socket_error(errno.EINVAL, f"option {optname} takes an int")
                self.parameters = self.parameters.replace(**{opt.PARAMETER_OPTIONS[optname]: value})
            else:
                raise socket_error(errno.ENOPROTOOPT, f"SOL_SMBDIRECT option {optname} does not exist")
        except (ValueError, ProtocolError) as exc:  # a value of the wrong size or range
            raise socket_error(errno.EINVAL, str(exc)) from None

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:  # type: ignore[override]
        """Read an option: ``SOL_SMBDIRECT`` ones, ``SO_ERROR`` (a failed connect's errno, once),
        ``SO_TYPE``, ``SO_PROTOCOL``, ``SO_DOMAIN``, ``SO_ACCEPTCONN``, ``SO_REUSEADDR``.
        """
        self._check_open()
        if level == _stdlib_socket.SOL_SOCKET:
            return self._socket_option(optname)
        if level != SOL_SMBDIRECT:
            raise socket_error(errno.ENOPROTOOPT, f"option ({level}, {optname}) is not supported")
        if optname == opt.SMBDIRECT_BYTESTREAM:
            return int(self.bytestream)
        if optname == opt.SMBDIRECT_PARAMETERS:
            return self.parameters.pack()
        if optname == opt.SMBDIRECT_INFO:
            return self.info().pack()[: buflen or opt.SocketInfo.size]
        if optname in opt.PARAMETER_OPTIONS:
            value: int = getattr(self.parameters, opt.PARAMETER_OPTIONS[optname])
            return value
        raise socket_error(errno.ENOPROTOOPT, f"SOL_SMBDIRECT option {optname} does not exist")

    def _socket_option(self, optname: int) -> int:
        s = _stdlib_socket
        if optname == s.SO_ERROR:
            error = self._so_error or (self._connection.error if self._connection else None)
            self._so_error = None
            return 0 if error is None or error.errno is None else error.errno
        values = {
            s.SO_TYPE: s.SOCK_STREAM,
            s.SO_PROTOCOL: self._proto,
            s.SO_DOMAIN: self._family,
            s.SO_ACCEPTCONN: int(self._state is SocketState.LISTENING),
            s.SO_REUSEADDR: 1,
        }
        if optname not in values:
            raise socket_error(errno.ENOPROTOOPT, f"SOL_SOCKET option {optname} is not supported")
        return values[optname]

    def info(self) -> opt.SocketInfo:
        """The statistics of ``SMBDIRECT_INFO``, decoded."""
        connection = self._connection
        if connection is None:
            return opt.SocketInfo(self._state.code(), *([0] * 19))
        return connection.info(self._state.code(connection_up=not connection.ended))

    # ---- teardown -------------------------------------------------------------------------------

    def shutdown(self, flag: int) -> None:
        """Any ``how`` ends the whole connection, as the kernel socket does."""
        connection = self._connected()
        self._state = transition(self._state, "shutdown")
        connection.close_nowait()

    def close(self) -> None:
        """Close the socket: a connection ends in good order (the peer reads the end of the stream),
        a listener stops.
        """
        if self._state is SocketState.CLOSED:
            return
        self._state = transition(self._state, "close")
        if self._connection is not None:
            self._connection.close_nowait()
        if self._listener is not None:
            assert self._listen_scope is not None
            self._listen_scope.cancel()
            trio.lowlevel.spawn_system_task(self._listener.aclose, name="smbdirect listener close")
        if self._bound_socket is not None:
            self._bound_socket.close()
        if self._readiness is not None:
            self._readiness.close()

    def detach(self) -> int:
        """Not supported (``EOPNOTSUPP``): there is no kernel descriptor to hand over."""
        raise socket_error(errno.EOPNOTSUPP, "an SMB-Direct socket has no descriptor to detach")

    def dup(self) -> SMBDirectSocket:
        """Not supported (``EOPNOTSUPP``)."""
        raise socket_error(errno.EOPNOTSUPP, "SMB-Direct sockets cannot be duplicated")


def socket(
    family: int = _stdlib_socket.AF_INET,
    type: int = _stdlib_socket.SOCK_STREAM,
    proto: int = IPPROTO_SMBDIRECT,
    *,
    provider: Provider | None = None,
    parameters: Parameters | None = None,
) -> SMBDirectSocket:
    """An SMB-Direct trio socket (the kernel's ``socket(family, SOCK_STREAM, IPPROTO_SMBDIRECT)``)."""
    return SMBDirectSocket(family, type, proto, provider=provider, parameters=parameters)


def configure(sock: SMBDirectSocket, bytestream: bool, parameters: Parameters | None) -> None:
    sock.bytestream = bytestream
    if parameters is not None:
        sock.parameters = parameters


class SMBDirectStream(trio.abc.HalfCloseableStream):
    """A stream over an SMB-Direct socket that keeps trio's Stream contract in both modes.

    It has ``trio.SocketStream``'s interface (``socket``, ``setsockopt``,
    ``getsockopt``, ``send_eof``), and in byte-stream mode its behaviour.
    Framed, it is the byte stream a length-framed TCP connection carries: each
    message reads as its 4-byte big-endian length followed by its payload,
    ``receive_some`` returns as soon as any of it has arrived (never more than
    ``max_bytes``, never past the end of the message), and ``send_all`` takes
    that stream in any pieces, sending each message once its last byte is
    given.  A length the connection cannot carry is the socket's ``EINVAL``
    (as ``trio.BrokenResourceError``); the start of a message never finished is
    dropped at close.  The socket underneath keeps the kernel's exact reads.
    (trio does not let ``trio.SocketStream`` be subclassed: this wraps one.)
    """

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self._stream = trio.SocketStream(socket)
        self.socket = socket
        self._unsent = bytearray()  # the start of a message whose end is still to come
        self._sending = False

    def _framed(self) -> SMBDirectSocket | None:
        """The SMB-Direct socket underneath when it is framed (a routed socket's choice too)."""
        sock: object = self.socket
        if not isinstance(sock, SMBDirectSocket):
            sock = getattr(sock, "_chosen", None)  # routing's socket, once it has chosen
        if isinstance(sock, SMBDirectSocket) and not sock.bytestream:
            return sock
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """What has arrived, at most ``max_bytes`` (framed: never past the end of the
        current message, its length first); ``b""`` at the end of the stream."""
        sock = self._framed()
        if sock is None:
            return await self._stream.receive_some(max_bytes)
        if max_bytes is None:
            max_bytes = _DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with _stream_errors():
            return await sock.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (framed: length-led messages, in any pieces; each goes when its last byte comes)."""
        sock = self._framed()
        if sock is None:
            await self._stream.send_all(data)
            return
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        self._sending = True
        try:
            await self._send_messages(sock, data)
        finally:
            self._sending = False

    async def _send_messages(self, sock: SMBDirectSocket, data: bytes | bytearray | memoryview) -> None:
        unsent = self._unsent
        view = memoryview(data).cast("B")
        if not unsent and len(view) >= _LENGTH.size and _LENGTH.unpack_from(view)[0] == len(view) - _LENGTH.size:
            await self._stream.send_all(view)  # one whole message, the usual case: no copy
            return
        unsent += view
        sent = False
        while len(unsent) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(unsent)
            end = _LENGTH.size + length
            connection = sock.connection
            too_long = connection is not None and length > connection.negotiated.max_fragmented_send_size
            if len(unsent) < end and not too_long:
                break  # the rest of this message is still to come
            # A length no message can have goes to the socket now, for its error.
            message = bytes(unsent[:end])
            del unsent[:end]
            await self._stream.send_all(message)
            sent = True
        if not sent:
            await self._stream.send_all(b"")  # the closed check and the checkpoint

    async def wait_send_all_might_not_block(self) -> None:
        """Return when ``send_all`` might not wait for credits."""
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """End the connection (SMB-Direct has no half-close; as the kernel's ``shutdown``)."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the stream and its socket."""
        await self._stream.aclose()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """The socket's ``setsockopt``."""
        self._stream.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """The socket's ``getsockopt``."""
        return self._stream.getsockopt(level, option, buffersize)


class SMBDirectListener(trio.abc.Listener[SMBDirectStream]):
    """``trio.SocketListener``'s interface, giving :class:`SMBDirectStream`."""

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self._listener = trio.SocketListener(socket)
        self.socket = socket

    async def accept(self) -> SMBDirectStream:
        """The next connection, as a stream."""
        stream = await self._listener.accept()
        return SMBDirectStream(stream.socket)

    async def aclose(self) -> None:
        """Stop listening."""
        await self._listener.aclose()


@contextlib.contextmanager
def _stream_errors() -> Iterator[None]:
    """The socket's errors as trio's stream errors, as ``trio.SocketStream`` gives them."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


async def open_smbdirect_stream(
    host: str,
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> SMBDirectStream:
    """Connect and return an :class:`SMBDirectStream` (a ``trio.SocketStream``) over SMB-Direct."""

    def make(family: int) -> SMBDirectSocket:
        sock = socket(family, provider=provider)
        configure(sock, bytestream, parameters)
        return sock

    try:
        return SMBDirectStream(await connect_any(host, port, make))
    except RuntimeError as exc:
        _check_trio(exc, "open_smbdirect_stream")
        raise


async def open_smbdirect_listeners(
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    host: str | None = None,
    backlog: int = 10,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> list[SMBDirectListener]:
    """Listen for SMB-Direct on ``port`` (all IPv4 addresses unless ``host``)."""
    try:
        infos = await trio.socket.getaddrinfo(host or "0.0.0.0", port, type=_stdlib_socket.SOCK_STREAM)
    except RuntimeError as exc:
        _check_trio(exc, "open_smbdirect_listeners")
        raise
    listeners = []
    for family, _, _, _, address in infos[:1]:
        sock = socket(family, provider=provider)
        configure(sock, bytestream, parameters)
        await sock.bind(address)
        sock.listen(backlog)
        listeners.append(SMBDirectListener(sock))
    return listeners


async def serve_smbdirect(
    handler: Callable[[SMBDirectStream], Awaitable[object]],
    port: int = SMBDIRECT_IWARP_PORT,
    *,
    host: str | None = None,
    task_status: trio.TaskStatus[list[SMBDirectListener]] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> NoReturn:
    """Serve ``handler`` on SMB-Direct connections, like ``trio.serve_tcp``."""
    try:
        listeners = await open_smbdirect_listeners(port, host=host, **options)
    except RuntimeError as exc:
        _check_trio(exc, "serve_smbdirect")
        raise
    await trio.serve_listeners(handler, listeners, task_status=task_status)
    raise AssertionError("serve_listeners returned")  # pragma: no cover


def __getattr__(name: str) -> Any:
    # The factory lives with the rest of the routing (which imports this module).
    if name == "SMBDirectSocketFactory":
        from .routing import SMBDirectSocketFactory

        return SMBDirectSocketFactory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
