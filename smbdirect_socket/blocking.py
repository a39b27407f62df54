"""The blocking, stdlib-style SMB-Direct socket.

:func:`socket` is a drop-in for :func:`socket.socket`: with
``IPPROTO_SMBDIRECT`` as the protocol it returns an :class:`SMBDirectSocket`,
otherwise a plain stdlib socket.  An :class:`SMBDirectSocket` has the stdlib's
blocking surface (timeouts raise :class:`TimeoutError`, non-blocking calls
:class:`BlockingIOError`) over the trio socket of :mod:`smbdirect_socket.trio`, so there is exactly
one protocol implementation.  Sends and receives on a connected socket run
in the calling thread, which drives the connection itself and sleeps in
``poll()`` on its descriptor, as a thread sleeps in a kernel socket
(:meth:`smbdirect_socket.connection.Connection.drive`); what needs no caller
(set-up, accepting, keepalives, timers, credits while nobody reads) runs on
one engine thread per process, which every other call goes through.
``fileno()`` is a real, level-triggered descriptor for select, poll, epoll
and selectors.
"""

from __future__ import annotations

import errno
import io
import math
import os
import socket as _stdlib_socket
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import trio

from . import engine_thread
from . import trio as _trio
from ._addresses import connect_any
from .connection import Connection, NotDriven, Registration
from .constants import IPPROTO_SMBDIRECT, SOL_SMBDIRECT
from .errors import socket_error
from .options import SMBDIRECT_BYTESTREAM, SocketInfo
from .parameters import Parameters
from .pdu import BufferDescriptorV1
from .rdma import Provider

__all__ = ["SMBDirectSocket", "create_connection", "create_server", "socket"]

T = TypeVar("T")
Address = tuple[Any, ...]
_DEFAULT = object()
_MSG_DONTWAIT = int(_stdlib_socket.MSG_DONTWAIT)


class SMBDirectSocket:
    """``socket(AF_INET, SOCK_STREAM, IPPROTO_SMBDIRECT)``, blocking like the stdlib's sockets."""

    def __init__(
        self,
        family: int = _stdlib_socket.AF_INET,
        type: int = _stdlib_socket.SOCK_STREAM,
        proto: int = IPPROTO_SMBDIRECT,
        *,
        parameters: Parameters | None = None,
        provider: Provider | None = None,
        _inner: _trio.SMBDirectSocket | None = None,
    ) -> None:
        self._sock = _inner or engine_thread.run_sync(
            partial(_trio.SMBDirectSocket, family, type, proto, provider=provider, parameters=parameters)
        )
        self._timeout: float | None = _stdlib_socket.getdefaulttimeout()
        if type & _stdlib_socket.SOCK_NONBLOCK:
            self._timeout = 0.0
        self._closed = False
        self._fileno: int | None = None  # the readiness descriptor, once made: fileno() is per select()
        self._io_refs = 0  # files from makefile() keep the socket open, as in the stdlib
        # Threads that receive at once take turns, as on a kernel socket (a trio
        # socket lets one task receive at a time).
        self._receiving = trio.Lock()
        self._receive_turn = threading.Lock()  # the same, for receives in the calling thread
        # Sends and receives run in the calling thread unless the provider cannot
        # (or SMBDIRECT_CALLER_DRIVEN=0 sends every call through the engine thread).
        self._direct = os.environ.get("SMBDIRECT_CALLER_DRIVEN", "1") != "0"

    # ---- identity ------------------------------------------------------------------

    @property
    def family(self) -> _stdlib_socket.AddressFamily:
        return self._sock.family

    @property
    def type(self) -> _stdlib_socket.SocketKind:
        return _stdlib_socket.SOCK_STREAM

    @property
    def proto(self) -> int:
        return self._sock.proto

    @property
    def trio_socket(self) -> _trio.SMBDirectSocket:
        """The trio socket underneath (use it only on the engine thread)."""
        return self._sock

    def fileno(self) -> int:
        """A level-triggered descriptor: readable while data, a connection, EOF or an
        error waits; writable while a send would not wait for credits."""
        if self._fileno is None:  # made once, on the engine; later calls (a select() each) need no hop
            self._fileno = engine_thread.run_sync(self._sock.fileno)
        return self._fileno

    def __repr__(self) -> str:
        return f"<smbdirect_socket.SMBDirectSocket {self._sock!r}>"  # no engine call: repr runs anywhere

    def __del__(self) -> None:
        # Like the stdlib's: a socket nobody closed is closed when collected, with
        # a warning.  The engine closes it later (this may run on any thread).
        if not getattr(self, "_closed", True):
            self._closed = True
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            engine_thread.call_soon(self._sock.close)

    def __enter__(self) -> SMBDirectSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- timeouts ------------------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        """Bound each later call by ``value`` seconds (``TimeoutError``); ``None`` blocks, 0 is non-blocking."""
        if value is not None:
            value = float(value)
            if value < 0 or math.isnan(value):
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        """The timeout in seconds: ``None`` blocking, 0.0 non-blocking."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0.0)``, ``setblocking(True)`` is ``settimeout(None)``."""
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        """False when non-blocking (a timeout of 0.0)."""
        return self._timeout != 0.0

    def _nonblocking(self, flags: int) -> int:
        return flags | _stdlib_socket.MSG_DONTWAIT if self._timeout == 0.0 else flags

    def _call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a trio socket call on the engine, bounded by this socket's timeout."""
        result: T = engine_thread.run(self._bounded, self._timeout, afn, args)
        return result

    def _receive(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """:meth:`_call` for receives (``args`` end with the flags), which wait their
        turn: the timeout counts the wait, and a non-blocking one does not wait."""
        result: T = self._call(self._in_turn, afn, *args)
        return result

    async def _in_turn(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if args[-1] & _stdlib_socket.MSG_DONTWAIT:
            try:
                self._receiving.acquire_nowait()
            except trio.WouldBlock:
                raise socket_error(errno.EAGAIN, "another thread is receiving") from None
        else:
            await self._receiving.acquire()
        try:
            result: T = await afn(*args)
        finally:
            self._receiving.release()
        return result

    @staticmethod
    async def _bounded(timeout: float | None, afn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        if not timeout:  # blocking, or non-blocking via MSG_DONTWAIT
            return await afn(*args)
        with trio.move_on_after(timeout):
            return await afn(*args)
        raise socket_error(errno.ETIMEDOUT, "timed out")

    # ---- addresses, connect, accept ------------------------------------------------------

    def bind(self, address: Address) -> None:
        """Bind the address to listen on, or to connect from."""
        engine_thread.run(self._sock.bind, address)

    def listen(self, backlog: int = 10) -> None:
        """Listen for connections; each negotiates SMB-Direct before ``accept`` sees it."""
        engine_thread.run_sync(self._sock.listen, backlog)

    def getsockname(self) -> Address:
        """The local address."""
        return engine_thread.run_sync(self._sock.getsockname)

    def getpeername(self) -> Address:
        """The peer's address (``ENOTCONN`` unless connected)."""
        return engine_thread.run_sync(self._sock.getpeername)

    def connect(self, address: Address) -> None:
        """Connect and negotiate SMB-Direct; non-blocking, raise ``BlockingIOError`` (``EINPROGRESS``)
        and report the outcome in ``SO_ERROR`` once writable.
        """
        if self._timeout == 0.0:
            engine_thread.run_sync(self._sock.connect_nowait, address)  # EINPROGRESS, EALREADY, ...
        else:
            self._call(self._sock.connect, address)

    def connect_ex(self, address: Address) -> int:
        """``connect``, returning the errno instead of raising it (0 once connected)."""
        try:
            self.connect(address)
        except OSError as exc:
            if exc.errno is None:
                raise
            return exc.errno
        return 0

    def accept(self) -> tuple[SMBDirectSocket, Address]:
        """``(socket, address)`` of the next negotiated connection (``BlockingIOError`` if none waits,
        non-blocking).
        """
        if self._timeout == 0.0 and not engine_thread.run_sync(self._sock.is_readable):
            raise socket_error(errno.EAGAIN)
        inner, address = self._call(self._sock.accept)
        child = SMBDirectSocket(inner.family, _inner=inner)
        if _stdlib_socket.getdefaulttimeout() is None and self._timeout:
            child.setblocking(True)
        return child, address

    # ---- sending -------------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0) -> int:
        """Send one message (framed), or up to the max fragmented send size (byte stream); return the bytes taken."""
        return self.sendmsg([data], (), flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data``; the timeout bounds the whole call (as since Python 3.5)."""
        view = memoryview(data).cast("B")
        deadline = None if not self._timeout else time.monotonic() + self._timeout
        sent = self._sendmsg([view], [], flags, deadline)  # the whole message, unless in byte-stream mode
        while sent < len(view):
            sent += self._sendmsg([view[sent:]], [], flags, deadline)

    def sendmsg(
        self, buffers: Iterable[Any], ancdata: Iterable[tuple[int, int, Any]] = (), flags: int = 0, address: Any = None
    ) -> int:
        """Send one message, within the timeout.

        A message is sent whole or not at all.  It is queued once the one
        before it has gone (its fragments wait for the peer's credits, as bytes
        wait for room in a kernel socket's send buffer); a call whose timeout
        expires before that sent nothing and raises ``TimeoutError``.  A queued
        message counts as sent: if its own fragments still wait for credits
        when the timeout expires, they follow in order.
        """
        deadline = None if not self._timeout else time.monotonic() + self._timeout
        return self._sendmsg(list(buffers), list(ancdata), flags, deadline, address)

    def _sendmsg(
        self, buffers: list[Any], ancdata: list[Any], flags: int, deadline: float | None, address: Any = None
    ) -> int:
        flags = self._nonblocking(flags)
        connection = self._sock.connection if self._direct else None
        if connection is not None:
            data, token = self._sock.message_of(buffers, ancdata, address)
            if flags & _MSG_DONTWAIT:
                deadline = 0
            queued: list[int] = []

            def send() -> int:
                if not queued:
                    connection.check_sent()  # the message before waits for credits: nothing is queued yet
                    queued.append(self._sock.send_nowait(data, flags, token))
                    if flags & _MSG_DONTWAIT:
                        return queued[0]  # the rest of it goes out as credits come
                connection.check_sent()  # a blocking send waits while its fragments wait for credits
                return queued[0]

            try:
                sent = self._here(connection, send, deadline)
            except TimeoutError:
                if queued:
                    return queued[0]  # queued is sent: its last fragments follow as credits come
                raise
            if sent is not None:
                return sent
        if deadline is None or flags & _stdlib_socket.MSG_DONTWAIT:
            return engine_thread.run(self._sock.sendmsg, buffers, ancdata, flags, address)
        return engine_thread.run(self._send_within, deadline - time.monotonic(), buffers, ancdata, flags, address)

    async def _send_within(
        self, timeout: float, buffers: list[Any], ancdata: list[Any], flags: int, address: Any
    ) -> int:
        with trio.move_on_after(timeout):
            await self._sock.wait_writable()
            return await self._sock.sendmsg(buffers, ancdata, flags, address)
        raise socket_error(errno.ETIMEDOUT, "timed out")

    # ---- receiving ------------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive ``bufsize`` bytes (framed: exactly that many, or a message's length at its start;
        byte stream: what has arrived, at most ``bufsize``); ``b""`` at the end of the stream.
        """
        flags = self._nonblocking(flags)
        data = self._receive_here(bufsize, flags)
        return self._receive(self._sock.recv, bufsize, flags) if data is None else data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """``recv`` into ``buffer`` (``nbytes`` of it, or all); return the count."""
        flags = self._nonblocking(flags)
        view = memoryview(buffer).cast("B")
        if nbytes < 0:  # checked before anything is read, with the stdlib's messages
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        data = self._receive_here(nbytes or len(view), flags)
        if data is None:
            return self._receive(self._sock.recv_into, buffer, nbytes, flags)
        view[: len(data)] = data
        return len(data)

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple[bytes, list[Any], int, Any]:
        """``recv``, as ``(data, [], 0, None)``: SMB-Direct delivers no control messages."""
        flags = self._nonblocking(flags)
        data = self._receive_here(bufsize, flags)
        if data is None:
            return self._receive(self._sock.recvmsg, bufsize, ancbufsize, flags)
        return data, [], 0, None

    def _receive_here(self, size: int, flags: int) -> bytes | None:
        """Receive in this thread, driving the connection; None when it must go
        through the engine (not connected, or a provider that cannot be driven so)."""
        connection = self._sock.connection if self._direct else None
        if connection is None:
            return None
        size = self._sock.check_receive(size, flags)
        deadline = self._deadline(flags)
        if not self._take_turn(deadline):
            raise socket_error(errno.EAGAIN if deadline == 0 else errno.ETIMEDOUT, "another thread is receiving")
        try:
            return self._here(connection, partial(self._sock.receive_nowait, size, flags), deadline)
        finally:
            self._receive_turn.release()

    def _take_turn(self, deadline: float | None) -> bool:
        if deadline is None:
            return self._receive_turn.acquire()
        return self._receive_turn.acquire(timeout=max(deadline - time.monotonic(), 0))

    def _deadline(self, flags: int) -> float | None:
        """When a call gives up (``time.monotonic``): None never, 0 at once."""
        if flags & _MSG_DONTWAIT:
            return 0
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _here(self, connection: Connection, attempt: Callable[[], T], deadline: float | None) -> T | None:
        """``connection.drive(attempt, deadline)``, with the stdlib's errors; None when
        the connection cannot be driven from this thread (then nothing was done)."""
        try:
            return connection.drive(attempt, deadline)
        except NotDriven:
            self._direct = False
            return None
        except BlockingIOError:
            if deadline == 0:
                raise
            raise socket_error(errno.ETIMEDOUT, "timed out") from None

    def recvmsg_into(
        self, buffers: Iterable[Any], ancbufsize: int = 0, flags: int = 0
    ) -> tuple[int, list[Any], int, Any]:
        """``recvmsg`` into ``buffers``, in order; return ``(count, [], 0, None)``."""
        views = [memoryview(b).cast("B") for b in buffers]
        data, ancillary, msg_flags, address = self.recvmsg(sum(len(v) for v in views), ancbufsize, flags)
        offset = 0
        for view in views:
            part = data[offset : offset + len(view)]
            view[: len(part)] = part
            offset += len(part)
        return len(data), ancillary, msg_flags, address

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> io.IOBase:
        """A file over the socket, as :meth:`socket.socket.makefile` (byte-stream mode
        suits buffered files; framed sockets read exactly what is asked)."""
        file: io.IOBase = _stdlib_socket.socket.makefile(  # type: ignore[call-overload]
            self,
            mode,
            buffering,
            encoding=encoding,
            errors=errors,
            newline=newline,
        )
        return file

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self._real_close()

    # ---- options and statistics ----------------------------------------------------------------

    def setsockopt(self, level: int, optname: int, value: int | bytes | None, optlen: int | None = None) -> None:
        """Set a socket option: ``SOL_SMBDIRECT`` ones (see :mod:`smbdirect_socket.options`), ``SO_REUSEADDR``."""
        engine_thread.run_sync(self._sock.setsockopt, level, optname, value, optlen)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        """Read a socket option: ``SOL_SMBDIRECT`` ones, ``SO_ERROR``, ``SO_TYPE``, ``SO_PROTOCOL``, ..."""
        return engine_thread.run_sync(self._sock.getsockopt, level, optname, buflen)

    def info(self) -> SocketInfo:
        """The ``SMBDIRECT_INFO`` statistics, decoded."""
        return engine_thread.run_sync(self._sock.info)

    @property
    def bytestream(self) -> bool:
        return bool(self.getsockopt(SOL_SMBDIRECT, SMBDIRECT_BYTESTREAM))

    # ---- RDMA read and write ---------------------------------------------------------------------

    def register_buffer(self, buffer: Any, *, writable: bool = False) -> Registration:
        """See :meth:`smbdirect_socket.trio.SMBDirectSocket.register_buffer`."""
        if self._direct:  # (under the connection's lock: no need to go through the engine)
            return self._sock.register_buffer(buffer, writable=writable)
        return engine_thread.run_sync(partial(self._sock.register_buffer, buffer, writable=writable))

    def deregister_buffer(self, registration: Registration) -> None:
        """End the peer's access to a buffer of :meth:`register_buffer`."""
        if self._direct:
            self._sock.deregister_buffer(registration)
        else:
            engine_thread.run_sync(self._sock.deregister_buffer, registration)

    def rdma_read(self, into: Any, descriptors: list[BufferDescriptorV1]) -> None:
        """See :meth:`smbdirect_socket.trio.SMBDirectSocket.rdma_read`."""
        if not self._rdma_here(into, descriptors, read=True):
            self._call(self._sock.rdma_read, into, descriptors)

    def rdma_write(self, data: Any, descriptors: list[BufferDescriptorV1]) -> None:
        """See :meth:`smbdirect_socket.trio.SMBDirectSocket.rdma_write`."""
        if not self._rdma_here(data, descriptors, read=False):
            self._call(self._sock.rdma_write, data, descriptors)

    def _rdma_here(self, buffer: Any, descriptors: list[BufferDescriptorV1], *, read: bool) -> bool:
        """The RDMA transfer, driven from this thread; False when it must go through
        the engine (then nothing was posted)."""
        connection = self._sock.connection if self._direct else None
        if connection is None:
            return False
        posted: list[int] = []

        def transfer() -> bool:
            if not posted:
                posted.extend(connection.start_rdma(memoryview(buffer), descriptors, read=read))
            connection.finish_rdma(posted, read=read)
            return True

        try:
            return self._here(connection, transfer, self._deadline(0)) is not None
        finally:
            connection.forget_rdma(posted)

    # ---- teardown -----------------------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        """Any ``how`` ends the whole connection, as the kernel socket does."""
        engine_thread.run_sync(self._sock.shutdown, how)

    def close(self) -> None:
        """Close the socket (once files from ``makefile`` are closed too); the peer sees the end of the stream."""
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        self._fileno = -1
        engine_thread.run_sync(self._sock.close)

    def detach(self) -> int:
        """Not supported (``EOPNOTSUPP``): there is no kernel descriptor to hand over."""
        raise socket_error(errno.EOPNOTSUPP, "an SMB-Direct socket has no descriptor to detach")


def socket(
    family: int = _stdlib_socket.AF_INET,
    type: int = _stdlib_socket.SOCK_STREAM,
    proto: int = 0,
    fileno: int | None = None,
    **options: Any,
) -> SMBDirectSocket | _stdlib_socket.socket:
    """``socket.socket`` that knows ``IPPROTO_SMBDIRECT``; any other protocol gets a stdlib socket.

    ``options`` (``parameters``, ``provider``) go to :class:`SMBDirectSocket`.
    """
    if proto == IPPROTO_SMBDIRECT:
        if fileno is not None:
            raise socket_error(errno.EOPNOTSUPP, "an SMB-Direct socket cannot adopt a descriptor")
        return SMBDirectSocket(family, type, proto, **options)
    return _stdlib_socket.socket(family, type, proto, fileno)


def create_connection(
    address: tuple[str, int],
    timeout: float | object | None = _DEFAULT,
    source_address: Address | None = None,
    *,
    all_errors: bool = False,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> SMBDirectSocket:
    """Like :func:`socket.create_connection`, over SMB-Direct."""
    host, port = address
    connect_timeout = _stdlib_socket.getdefaulttimeout() if timeout is _DEFAULT else timeout

    def make(family: int) -> _trio.SMBDirectSocket:
        sock = _trio.SMBDirectSocket(family, parameters=parameters, provider=provider)
        sock.bytestream = bytestream
        return sock

    async def connect(sock: _trio.SMBDirectSocket, sockaddr: Address) -> None:
        if source_address is not None:
            await sock.bind(source_address)
        if connect_timeout == 0:
            sock.connect_nowait(sockaddr)  # EINPROGRESS, as the stdlib's
        await SMBDirectSocket._bounded(connect_timeout, sock.connect, (sockaddr,))  # type: ignore[arg-type]

    inner = engine_thread.run(partial(connect_any, host, port, make, connect, all_errors=all_errors))
    sock = SMBDirectSocket(inner.family, _inner=inner)
    if timeout is not _DEFAULT:
        sock.settimeout(timeout)  # type: ignore[arg-type]
    return sock


def create_server(
    address: tuple[str, int],
    *,
    family: int = _stdlib_socket.AF_INET,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
    bytestream: bool = False,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
) -> SMBDirectSocket:
    """Like :func:`socket.create_server`, listening for SMB-Direct."""
    if reuse_port:
        raise ValueError("SO_REUSEPORT not supported on SMB-Direct sockets")
    if dualstack_ipv6:
        raise ValueError("SMB-Direct AF_INET6 sockets are v6-only, as the kernel's")
    sock = SMBDirectSocket(family, parameters=parameters, provider=provider)
    try:
        if bytestream:
            sock.setsockopt(SOL_SMBDIRECT, SMBDIRECT_BYTESTREAM, 1)
        sock.bind(address)
        sock.listen(10 if backlog is None else backlog)
    except BaseException:
        sock.close()
        raise
    return sock
