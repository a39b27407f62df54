"""The trio SMB-Direct socket over the software iWARP provider."""

from __future__ import annotations

import collections
import errno
import hashlib
import random
import socket as stdlib_socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from smbdirect_socket import IPPROTO_SMBDIRECT, SOL_SMBDIRECT, Parameters
from smbdirect_socket import options as opt
from smbdirect_socket import trio as sdtrio
from smbdirect_socket.constants import SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE
from smbdirect_socket.rdma import get_provider
from smbdirect_socket.rdma.soft.mpa import MpaFrame


async def listening(**kwargs: object) -> sdtrio.SMBDirectSocket:
    sock = sdtrio.socket(**kwargs)  # type: ignore[arg-type]
    await sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def connected_pair(
    bytestream: bool = False, parameters: Parameters | None = None
) -> tuple[sdtrio.SMBDirectSocket, sdtrio.SMBDirectSocket]:
    listener = await listening(parameters=parameters)
    listener.bytestream = bytestream
    client = sdtrio.socket(parameters=parameters)
    client.bytestream = bytestream
    async with trio.open_nursery() as nursery:
        accepted: list[sdtrio.SMBDirectSocket] = []

        async def accept() -> None:
            accepted.append((await listener.accept())[0])

        nursery.start_soon(accept)
        await client.connect(listener.getsockname())
    listener.close()
    return client, accepted[0]


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def receive_message(sock: sdtrio.SMBDirectSocket) -> bytes:
    (length,) = struct.unpack(">I", await sock.recv(4))
    return await sock.recv(length)


async def test_identity() -> None:
    sock = sdtrio.socket()
    assert (sock.family, sock.type, sock.proto) == (stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM, 257)
    assert isinstance(sock, trio.socket.SocketType)
    assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PROTOCOL) == IPPROTO_SMBDIRECT
    assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_TYPE) == stdlib_socket.SOCK_STREAM
    assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_DOMAIN) == stdlib_socket.AF_INET
    assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN) == 0
    with pytest.raises(OSError) as info:
        sdtrio.socket(stdlib_socket.AF_UNIX)
    assert info.value.errno == errno.EAFNOSUPPORT
    with pytest.raises(OSError) as info:
        sdtrio.socket(type=stdlib_socket.SOCK_DGRAM)
    assert info.value.errno == errno.EPROTONOSUPPORT
    sock.close()


async def test_framed_messages_of_every_size() -> None:
    client, server = await connected_pair()
    rng = random.Random(3)
    sizes = [1, 2, 3, 4, 5, 1339, 1340, 1341, 65536, 173909, 173910] + [rng.randrange(1, 173911) for _ in range(5)]

    async def echo() -> None:
        for _ in sizes:
            body = await receive_message(server)
            assert await server.send(framed(body[::-1])) == len(body) + 4

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        for size in sizes:
            message = rng.randbytes(size)
            assert await client.send(framed(message)) == size + 4
            assert await receive_message(client) == message[::-1]
    info = client.info()
    assert info.state == 1 and info.messages_sent == len(sizes) and info.bytes_sent == sum(sizes)
    assert opt.SocketInfo.unpack(client.getsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_INFO, 256)) == client.info()
    client.close()
    server.close()


async def test_framing_errors() -> None:
    client, server = await connected_pair()
    with pytest.raises(OSError) as info:
        await client.send(b"\x00\x00")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        await client.send(struct.pack(">I", 5) + b"abc")
    assert (info.value.errno, info.value.strerror) == (
        errno.EINVAL,
        "length header says 5 bytes, 3 follow; framed socket: lead each message with its 4-byte big-endian length, "
        "or set SMBDIRECT_BYTESTREAM (bytestream=True)",
    )
    with pytest.raises(OSError) as info:
        await client.send(framed(bytes(173911)))
    assert info.value.errno == errno.EMSGSIZE
    with pytest.raises(OSError) as info:
        await client.send(framed(b"x"), stdlib_socket.MSG_OOB)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BlockingIOError):
        await server.recv(4, stdlib_socket.MSG_DONTWAIT)
    # The connection is still fine.
    await client.send(framed(b"still fine"))
    assert await receive_message(server) == b"still fine"
    client.close()
    server.close()


async def test_sendmsg_remote_invalidate_cmsg() -> None:
    client, server = await connected_pair()
    token = struct.pack("=I", 0x1234)
    with pytest.raises(OSError) as info:
        await client.sendmsg([framed(b"x")], [(SOL_SMBDIRECT, 1, token)])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        await client.sendmsg([framed(b"x")], [(SOL_SMBDIRECT, SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE, b"12")])
    assert info.value.errno == errno.EMSGSIZE
    # A token the peer never registered: its engine refuses the invalidation and
    # terminates, which reaches us as a reset.
    await client.sendmsg([framed(b"x")], [(SOL_SMBDIRECT, SMBDIRECT_BUFFER_REMOTE_INVALIDATE_CMSG_TYPE, token)])
    with pytest.raises(OSError) as info, trio.fail_after(5):
        await server.recv(4)
    assert info.value.errno == errno.ECONNRESET or info.value.errno == errno.ECONNABORTED
    client.close()
    server.close()


async def test_stream_conformance_in_bytestream_mode() -> None:
    async def maker() -> tuple[trio.SocketStream, trio.SocketStream]:
        client, server = await connected_pair(bytestream=True)
        return trio.SocketStream(client), trio.SocketStream(server)

    await trio.testing.check_two_way_stream(maker, None)


async def test_options() -> None:
    sock = sdtrio.socket()
    sock.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_MAX_RECV_SIZE, 8192)
    assert sock.getsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_MAX_RECV_SIZE) == 8192
    for number, name in opt.PARAMETER_OPTIONS.items():
        assert sock.getsockopt(SOL_SMBDIRECT, number) == getattr(sock.parameters, name)
    packed = sock.getsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_PARAMETERS)
    assert Parameters.unpack(packed).max_recv_size == 8192
    sock.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_PARAMETERS, Parameters(keepalive_interval_msec=0).pack())
    assert sock.parameters.keepalive_interval_msec == 0
    with pytest.raises(OSError) as info:
        sock.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_MAX_RECV_SIZE, 100)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        sock.setsockopt(SOL_SMBDIRECT, 99, 1)
    assert info.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as info:
        sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    assert info.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as info:
        sock.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_INFO, b"")
    assert info.value.errno == errno.EINVAL
    sock.close()


async def test_parameters_are_negotiated_and_inherited() -> None:
    big = Parameters(max_send_size=65536, max_recv_size=65536, max_fragmented_recv_size=1 << 24)
    client, server = await connected_pair(parameters=big)
    assert server.parameters == big
    assert client.info().max_send_size == 65536
    assert client.info().max_fragmented_send_size == 1 << 20  # capped by max_fragmented_send_size
    with pytest.raises(OSError) as info:
        client.setsockopt(SOL_SMBDIRECT, opt.SMBDIRECT_MAX_RECV_SIZE, 4096)
    assert info.value.errno == errno.EISCONN
    message = random.Random(5).randbytes(1 << 20)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, framed(message))
        assert await receive_message(server) == message
    client.close()
    server.close()


async def test_connect_errors() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = sdtrio.socket()
    with pytest.raises(OSError) as info:
        await sock.connect(("127.0.0.1", port))
    assert info.value.errno == errno.ECONNREFUSED
    assert sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ERROR) == errno.ECONNREFUSED
    with pytest.raises(OSError) as info:
        await sock.recv(1)
    assert info.value.errno == errno.ENOTCONN
    client, server = await connected_pair()
    with pytest.raises(OSError) as info:
        await client.connect(server.getsockname())
    assert info.value.errno == errno.EISCONN
    client.close()
    with pytest.raises(OSError) as info:
        await client.send(framed(b"x"))
    assert info.value.errno == errno.EBADF
    with trio.fail_after(5):
        assert await server.recv(4) == b""  # the peer's close reads as the end of the stream
    server.close()


async def test_negotiate_timeout_against_a_silent_peer(mock_clock: trio.testing.MockClock) -> None:
    """An RDMA peer that never answers the Negotiate Request: ETIMEDOUT after 120 s."""
    mock_clock.autojump_threshold = 0.05  # real sockets finish their exchanges first
    provider = get_provider("softiwarp")
    listener = provider.listen(("127.0.0.1", 0))

    async def silent() -> None:
        request = await listener.get_request()
        qp = await request.accept(initiator_depth=1, responder_resources=1)
        qp.post_recv(1, memoryview(bytearray(2048)))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent)
        sock = sdtrio.socket()
        start = trio.current_time()
        with pytest.raises(OSError) as info:
            await sock.connect(listener.address)
        assert info.value.errno == errno.ETIMEDOUT
        assert 120 <= trio.current_time() - start < 121
        nursery.cancel_scope.cancel()
    await listener.aclose()


async def test_hundred_concurrent_connections() -> None:
    listener = await listening()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                sock, _ = await listener.accept()

                async def echo(sock: sdtrio.SMBDirectSocket = sock) -> None:
                    body = await receive_message(sock)
                    await sock.send(framed(body))

                nursery.start_soon(echo)

    async def client(i: int) -> None:
        sock = sdtrio.socket()
        await sock.connect(listener.getsockname())
        await sock.send(framed(b"%d" % i * 100))
        assert await receive_message(sock) == b"%d" % i * 100
        sock.close()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            for i in range(100):
                nursery.start_soon(client, i)
    listener.close()


async def test_open_smbdirect_stream_and_serve() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        data = await stream.receive_some(100)
        await stream.send_all(data.upper())

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(sdtrio.serve_smbdirect, handler, 0, host="127.0.0.1", bytestream=True))
        port = listeners[0].socket.getsockname()[1]
        stream = await sdtrio.open_smbdirect_stream("127.0.0.1", port, bytestream=True)
        await stream.send_all(b"hello")
        assert await stream.receive_some(100) == b"HELLO"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_socket_factory_routes_chosen_ports() -> None:
    listener = await listening()
    listener.bytestream = True
    smbdirect_port = listener.getsockname()[1]
    factory = sdtrio.SMBDirectSocketFactory(ports=frozenset({smbdirect_port}))
    previous = trio.socket.set_custom_socket_factory(factory)
    try:
        # A TCP server opened through the same factory stays TCP: its port is not chosen.
        tcp_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        assert not isinstance(tcp_listeners[0].socket, sdtrio.SMBDirectSocket)
        tcp_port = tcp_listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:

            async def serve_smbdirect() -> None:
                sock, _ = await listener.accept()
                await sock.send(await sock.recv(10))

            async def serve_tcp() -> None:
                stream = await tcp_listeners[0].accept()
                await stream.send_all(await stream.receive_some(10))

            nursery.start_soon(serve_smbdirect)
            nursery.start_soon(serve_tcp)
            stream = await trio.open_tcp_stream("127.0.0.1", smbdirect_port)
            assert stream.socket.proto == IPPROTO_SMBDIRECT
            await stream.send_all(b"ping")
            assert await stream.receive_some(10) == b"ping"
            await stream.aclose()
            plain = await trio.open_tcp_stream("127.0.0.1", tcp_port)
            assert plain.socket.proto != IPPROTO_SMBDIRECT
            await plain.send_all(b"tcp")
            assert await plain.receive_some(10) == b"tcp"
            await plain.aclose()
        await tcp_listeners[0].aclose()
    finally:
        trio.socket.set_custom_socket_factory(previous)
    listener.close()


async def test_garbage_peer_does_not_disturb_the_listener() -> None:
    listener = await listening()
    async with trio.open_nursery() as nursery:

        async def serve_one() -> None:
            sock, _ = await listener.accept()  # passes over the peer that failed negotiation
            await sock.send(framed(await receive_message(sock)))

        nursery.start_soon(serve_one)
        raw = await trio.open_tcp_stream(*listener.getsockname())
        await raw.send_all(MpaFrame(reply=False, ird=8, ord=8).pack())
        assert (await raw.receive_some(100)).startswith(b"MPA ID Rep Frame")
        await raw.send_all(b"\x00\x04\x41\x43" + bytes(20))  # a Send too short for its header
        with trio.fail_after(5):
            while await raw.receive_some(100):  # a Terminate, then the end
                pass
        client = sdtrio.socket()
        await client.connect(listener.getsockname())
        await client.send(framed(b"served"))
        assert await receive_message(client) == b"served"
        client.close()
        await raw.aclose()
    listener.close()


async def test_rdma_write_and_read_sixteen_mib() -> None:
    from smbdirect_socket import BufferDescriptorV1

    client, server = await connected_pair(
        parameters=Parameters(initiator_depth=8, responder_resources=8, max_read_write_size=32 << 20)
    )
    exposed = bytearray(16 << 20)
    registration = server.register_buffer(exposed, writable=True)
    await server.send(framed(registration.pack()))
    descriptors = BufferDescriptorV1.unpack_list(await receive_message(client))
    data = random.Random(16).randbytes(16 << 20)
    with trio.fail_after(60):
        await client.rdma_write(data, descriptors)
        back = bytearray(16 << 20)
        await client.rdma_read(back, descriptors)
    assert hashlib.sha256(exposed).digest() == hashlib.sha256(data).digest() == hashlib.sha256(back).digest()
    assert (client.info().rdma_writes, client.info().rdma_reads) == (1, 1)
    # Misuse: the descriptors must cover the buffer exactly.
    with pytest.raises(OSError) as info:
        await client.rdma_read(bytearray(10), descriptors)
    assert (info.value.errno, info.value.strerror) == (
        errno.EINVAL,
        f"descriptors cover {16 << 20} bytes, the buffer has 10",
    )
    # A read-only registration refuses writes: the peer's engine terminates the connection.
    readonly = server.register_buffer(b"x" * 64)
    await server.send(framed(readonly.pack()))
    bad = BufferDescriptorV1.unpack_list(await receive_message(client))
    with pytest.raises(OSError), trio.fail_after(10):
        await client.rdma_write(b"y" * 64, bad)
        await client.recv(4)  # the write "completes"; the Terminate ends the connection
    assert exposed[:4] == data[:4]
    client.close()
    server.close()


async def test_rdma_bounded_by_negotiated_size() -> None:
    client, server = await connected_pair(parameters=Parameters(max_read_write_size=1 << 20))
    registration = server.register_buffer(bytearray(2 << 20), writable=True)
    with pytest.raises(OSError) as info:
        await client.rdma_write(bytes(2 << 20), registration.descriptors)
    assert info.value.errno == errno.EMSGSIZE
    client.close()
    server.close()


class ManualServer:
    """A peer that negotiates with the protocol core by hand, then does as told."""

    def __init__(self, qp: object, protocol: object) -> None:
        self.qp = qp
        self.protocol = protocol

    @classmethod
    async def accept(cls, listener: object) -> ManualServer:
        from smbdirect_socket import Role, SMBDirectProtocol

        request = await listener.get_request()  # type: ignore[attr-defined]
        qp = await request.accept(initiator_depth=1, responder_resources=1)
        protocol = SMBDirectProtocol(Role.SERVER)
        server = cls(qp, protocol)
        protocol.start(trio.current_time())
        buffers = server.carry_out()
        completion = await qp.get_completion()
        protocol.receive(buffers[completion.wr_id][: completion.byte_len], trio.current_time())
        server.carry_out()
        return server

    def carry_out(self) -> dict[int, bytearray]:
        from smbdirect_socket.protocol import PostReceives, SendFragments, SendPDU

        buffers: dict[int, bytearray] = {}
        for action in self.protocol.actions():  # type: ignore[attr-defined]
            if isinstance(action, PostReceives):
                for _ in range(action.count):
                    buffers[len(buffers)] = bytearray(action.size)
                    self.qp.post_recv(len(buffers) - 1, memoryview(buffers[len(buffers) - 1]))  # type: ignore[attr-defined]
            elif isinstance(action, SendPDU):
                self.qp.post_send(0, action.data)  # type: ignore[attr-defined]
            elif isinstance(action, SendFragments):
                for data in action.datas:
                    self.qp.post_send(0, data)  # type: ignore[attr-defined]
        return buffers


async def test_keepalive_timeout_against_a_silent_peer(mock_clock: trio.testing.MockClock) -> None:
    """A peer that negotiated and then hangs: ETIMEDOUT after the idle interval and the keepalive timeout."""
    mock_clock.autojump_threshold = 0.05
    listener = get_provider("softiwarp").listen(("127.0.0.1", 0))
    client = sdtrio.socket(parameters=Parameters(keepalive_interval_msec=10_000, keepalive_timeout_msec=2_000))
    async with trio.open_nursery() as nursery:
        servers: list[ManualServer] = []

        async def serve() -> None:
            servers.append(await ManualServer.accept(listener))

        nursery.start_soon(serve)
        await client.connect(listener.address)
    start = trio.current_time()
    with pytest.raises(OSError) as info:
        await client.recv(4)
    assert info.value.errno == errno.ETIMEDOUT
    assert info.value.strerror == "peer did not answer a keepalive"
    assert 12 <= trio.current_time() - start < 12.5
    assert client.info().keepalives_sent == 1
    client.close()
    await listener.aclose()


async def test_peer_vanishing_mid_message() -> None:
    from smbdirect_socket.pdu import DataTransferMessage

    listener = get_provider("softiwarp").listen(("127.0.0.1", 0))
    client = sdtrio.socket()
    other_client, other_server = await connected_pair()
    async with trio.open_nursery() as nursery:
        servers: list[ManualServer] = []

        async def serve() -> None:
            servers.append(await ManualServer.accept(listener))

        nursery.start_soon(serve)
        await client.connect(listener.address)
    server = servers[0]
    first = DataTransferMessage(credits_requested=255, credits_granted=0, remaining_data_length=1000, data=b"a" * 500)
    server.qp.post_send(0, first.pack())  # type: ignore[attr-defined]
    assert struct.unpack(">I", await client.recv(4)) == (1500,)
    await server.qp.disconnect()  # type: ignore[attr-defined]
    with pytest.raises(OSError) as info, trio.fail_after(5):
        await client.recv(1500)
    assert info.value.errno == errno.ECONNRESET
    assert "connection lost with 1000 bytes of a message still due" in str(info.value)
    # The process and the other connection carry on.
    await other_client.send(framed(b"unaffected"))
    assert await receive_message(other_server) == b"unaffected"
    for sock in (client, other_client, other_server):
        sock.close()
    await listener.aclose()


async def test_close_after_sending_is_end_of_file_not_a_reset() -> None:
    """The closing side never read the credit grants the receiver sent it; its close
    must still reach the receiver as the end of the stream, after every byte."""
    client, server = await connected_pair(bytestream=True)
    payload = bytes(range(256)) * 4096  # 1 MiB: many credit grants come back
    async with trio.open_nursery() as nursery:
        received = bytearray()

        async def drain() -> None:
            while data := await server.recv(65536):
                received.extend(data)

        nursery.start_soon(drain)
        sent = 0
        while sent < len(payload):
            sent += await client.send(payload[sent:])
        client.close()
    assert received == payload
    server.close()


async def test_connect_nowait() -> None:
    listener = await listening()
    client = sdtrio.socket()
    with pytest.raises(BlockingIOError) as info:
        client.connect_nowait(listener.getsockname())
    assert info.value.errno == errno.EINPROGRESS
    assert not client.is_writable()
    with pytest.raises(BlockingIOError) as info:
        await client.connect(listener.getsockname())
    assert info.value.errno == errno.EALREADY
    accepted, _ = await listener.accept()
    with trio.fail_after(5):
        while not client.is_writable():
            await trio.sleep(0.01)
    assert client.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ERROR) == 0
    with pytest.raises(OSError) as info:
        client.connect_nowait(listener.getsockname())
    assert info.value.errno == errno.EISCONN
    for sock in (client, accepted, listener):
        sock.close()


async def test_a_waiting_task_takes_its_completions_itself(mock_clock: trio.testing.MockClock) -> None:
    """Senders and receivers that wait poll the queue pair themselves: the background
    task, which would cost a task switch per message, is not woken for them.  (The
    clock stands still, so its grace after a task's poll never ends.)"""
    client, server = await connected_pair()
    steps: collections.Counter[str] = collections.Counter()

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps[task.name] += 1

    message = struct.pack(">I", 60) + bytes(range(60))

    async def echo() -> None:
        for _ in range(200):
            assert await server.recv(4) == message[:4]
            body = await server.recv(60)
            await server.send(message[:4] + body)

    counter = CountSteps()
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(200):
                await client.send(message)
                assert await client.recv(4) + await client.recv(60) == message
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert steps["smbdirect connection"] <= 8  # both connections' background tasks
    client.close()
    server.close()
