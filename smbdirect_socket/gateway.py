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
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from functools import partial

import attrs
import trio

from . import trio as sdtrio
from .constants import SMBDIRECT_IWARP_PORT
from .parameters import Parameters
from .rdma import Provider

__all__ = ["Gateway", "gateway_thread", "serve_gateway"]

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">I")


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

    async def receive(self) -> bytes | None:
        """The next message, or None at a clean end of stream."""
        if not await self._fill(_HEADER.size):
            if self._buffer:
                raise trio.BrokenResourceError("server closed the connection inside a message header")
            return None
        total = _HEADER.size + _HEADER.unpack_from(self._buffer)[0]
        if not await self._fill(total):
            raise trio.BrokenResourceError("server closed the connection inside a message")
        message = bytes(self._buffer[:total])
        del self._buffer[:total]
        return message


@attrs.define
class Gateway:
    """Relays SMB-Direct clients to the TCP SMB server at ``target``."""

    target: tuple[str, int]
    parameters: Parameters = attrs.field(factory=lambda: Parameters().with_large_messages())
    provider: Provider | None = None
    #: Connections being relayed now, and relayed in all.
    active: int = 0
    served: int = 0

    async def serve(
        self,
        listen: tuple[str, int] = ("0.0.0.0", SMBDIRECT_IWARP_PORT),
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for SMB-Direct at ``listen``; reports the bound address when started."""
        sock = sdtrio.socket(provider=self.provider, parameters=self.parameters)
        with sock:
            await sock.bind(listen)
            sock.listen(64)
            task_status.started(sock.getsockname())
            async with trio.open_nursery() as nursery:
                while True:
                    client, peer = await sock.accept()
                    nursery.start_soon(self.relay, client, peer)

    async def relay(self, client: sdtrio.SMBDirectSocket, peer: tuple[str, int]) -> None:
        """Carry one client's SMB2 messages to its own TCP connection and back."""
        self.active += 1
        self.served += 1
        try:
            with client:
                try:
                    server = await trio.open_tcp_stream(*self.target)
                except OSError as exc:
                    log.warning("client %s: target %s:%s unreachable: %s", peer[0], *self.target, exc)
                    return
                async with server, trio.open_nursery() as nursery:
                    stop = nursery.cancel_scope.cancel
                    nursery.start_soon(self._upstream, client, server, peer, stop)
                    nursery.start_soon(self._downstream, server, client, peer, stop)
        finally:
            self.active -= 1

    @staticmethod
    async def _upstream(
        client: sdtrio.SMBDirectSocket, server: trio.SocketStream, peer: tuple[str, int], stop: Callable[[], None]
    ) -> None:
        try:
            while header := await client.recv(_HEADER.size):
                (length,) = _HEADER.unpack(header)
                await server.send_all(header + (await client.recv(length) if length else b""))
        except (OSError, trio.BrokenResourceError) as exc:
            log.info("client %s: %s", peer[0], exc)
        stop()

    @staticmethod
    async def _downstream(
        server: trio.SocketStream, client: sdtrio.SMBDirectSocket, peer: tuple[str, int], stop: Callable[[], None]
    ) -> None:
        messages = _TcpMessages(server)
        try:
            while (message := await messages.receive()) is not None:
                await client.send(message)
        except (OSError, trio.BrokenResourceError) as exc:
            # EMSGSIZE: the server answered with more than the client can reassemble.
            log.warning("client %s: relaying the server's reply failed: %s", peer[0], exc)
        stop()


async def serve_gateway(
    target: tuple[str, int],
    listen: tuple[str, int] = ("0.0.0.0", SMBDIRECT_IWARP_PORT),
    *,
    parameters: Parameters | None = None,
    provider: Provider | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a :class:`Gateway` from ``listen`` (SMB-Direct) to ``target`` (TCP) until cancelled."""
    gateway = Gateway(target, provider=provider) if parameters is None else Gateway(target, parameters, provider)
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
