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
import errno
import logging
import queue
import struct
import threading
from collections.abc import Iterator
from functools import partial

import attrs
import trio

from .. import trio as sdtrio
from ..constants import SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE as INVALIDATE
from ..constants import SMBDIRECT_IWARP_PORT, SOL_SMBDIRECT
from ..parameters import Parameters
from ..pdu import BufferDescriptorV1
from ..rdma import Provider
from . import smb2

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
    #: Bytes moved by RDMA channel I/O: read from clients (WRITE), written to them (READ).
    rdma_read_bytes: int = 0
    rdma_write_bytes: int = 0

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
                async with server:
                    await _Relay(self, client, server, peer).run()
        finally:
            self.active -= 1


def _cover(descriptors: list[BufferDescriptorV1], length: int) -> list[BufferDescriptorV1]:
    """The leading part of ``descriptors`` that covers exactly ``length`` bytes."""
    covered = []
    for descriptor in descriptors:
        if length <= 0:
            break
        take = min(descriptor.length, length)
        covered.append(attrs.evolve(descriptor, length=take))
        length -= take
    if length > 0:
        raise smb2.Smb2Error("the buffer descriptors are shorter than the I/O")
    return covered


@attrs.define
class _Relay:
    """One client: its SMB-Direct socket, its TCP connection, and its RDMA channel I/O.

    READ and WRITE requests with Channel RDMA_V1(_INVALIDATE) go to the server
    as ordinary ones: WRITE data is RDMA-read from the client's buffers first;
    READ data coming back is RDMA-written into them and the response says
    so (DataLength 0, DataRemaining n), sent with invalidate when asked.
    """

    gateway: Gateway
    client: sdtrio.SMBDirectSocket
    server: trio.SocketStream
    peer: tuple[str, int]
    #: MessageId -> (descriptors, invalidate) of READs whose data goes by RDMA.
    reads: dict[int, tuple[list[BufferDescriptorV1], bool]] = attrs.field(factory=dict)
    #: MessageId -> token to invalidate with the response of an RDMA WRITE.
    write_tokens: dict[int, int] = attrs.field(factory=dict)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._upstream, nursery.cancel_scope)
            nursery.start_soon(self._downstream, nursery.cancel_scope)

    async def _upstream(self, done: trio.CancelScope) -> None:
        try:
            while header := await self.client.recv(_HEADER.size):
                (length,) = _HEADER.unpack(header)
                message = await self.client.recv(length) if length else b""
                await self._forward(message)
        except (OSError, trio.BrokenResourceError) as exc:
            log.info("client %s: %s", self.peer[0], exc)
        done.cancel()

    async def _forward(self, message: bytes) -> None:
        if not smb2.is_smb2(message):  # SMB1 negotiate, encrypted or compressed: as is
            await self.server.send_all(_HEADER.pack(len(message)) + message)
            return
        try:
            commands = smb2.split(message)
        except smb2.Smb2Error as exc:  # no framing to answer by: a server disconnects too
            raise OSError(errno.EPROTO, f"malformed SMB2 message: {exc}") from None
        try:
            translated = [await self._translate_request(command) for command in commands]
        except smb2.Smb2Error as exc:
            log.warning("client %s: answering %s with status %#x", self.peer[0], exc, exc.status)
            for command in commands:
                self.reads.pop(command.message_id, None)
                self.write_tokens.pop(command.message_id, None)
            answer = smb2.join([smb2.error_response(command, exc.status) for command in commands])
            await self.client.send(_HEADER.pack(len(answer)) + answer)
            return
        if translated != commands:
            message = smb2.join(translated)
        await self.server.send_all(_HEADER.pack(len(message)) + message)

    async def _translate_request(self, command: smb2.Command) -> smb2.Command:
        channel = command.channel()
        if channel == smb2.CHANNEL_NONE:
            return command
        if channel not in (smb2.CHANNEL_RDMA_V1, smb2.CHANNEL_RDMA_V1_INVALIDATE):
            raise smb2.Smb2Error(f"channel {channel} is not supported")
        if command.flags & smb2.FLAG_SIGNED:
            raise smb2.Smb2Error("RDMA channel I/O must not be signed")
        descriptors = command.descriptors()
        invalidate = channel == smb2.CHANNEL_RDMA_V1_INVALIDATE
        length = command.read_length() if command.command == smb2.READ else command.write_length()
        limit = self.client.info().max_read_write_size
        if limit and length > limit:
            raise smb2.Smb2Error(f"{length} bytes exceed the negotiated max read/write size {limit}")
        if command.command == smb2.READ:
            _cover(descriptors, length)  # the buffers must hold what is asked
            self.reads[command.message_id] = (descriptors, invalidate)
            return command.as_plain_read()
        data = bytearray(length)
        if length:
            await self.client.rdma_read(data, _cover(descriptors, length))
            self.gateway.rdma_read_bytes += length
        if invalidate:
            self.write_tokens[command.message_id] = descriptors[0].token
        return command.as_inline_write(bytes(data))

    async def _downstream(self, done: trio.CancelScope) -> None:
        messages = _TcpMessages(self.server)
        try:
            while (message := await messages.receive()) is not None:
                await self._answer(message)
        except (OSError, trio.BrokenResourceError, smb2.Smb2Error) as exc:
            # EMSGSIZE: the server answered with more than the client can reassemble.
            log.warning("client %s: relaying the server's reply failed: %s", self.peer[0], exc)
        done.cancel()

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
                descriptors, invalidate = self.reads.pop(command.message_id)
                if command.status == 0:
                    data = command.read_response_data()
                    if data:
                        await self.client.rdma_write(data, _cover(descriptors, len(data)))
                        self.gateway.rdma_write_bytes += len(data)
                    command = command.as_rdma_read_response(len(data))
                if invalidate and token is None:
                    token = descriptors[0].token
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
