"""The verbs provider on the guest's kernel devices: rxe0 (RoCE v2) and siw0 (iWARP).

Our verbs provider against itself on both devices, against our software
iWARP provider on siw (both directions, every operation), the SMB-Direct
socket over it, and removal of the device under a live connection.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import struct
import subprocess

import pytest
import trio

from smbdirect_socket import blocking, engine_thread
from smbdirect_socket import trio as sdtrio
from smbdirect_socket.rdma import Access, Opcode, Provider, QueuePair, RdmaError, Status, get_provider
from tests.test_caller_driven import exchange_hashed_messages, framed, receive_message

RXE = os.environ.get("RDMA_VM_RXE_ADDR", "")
SIW = os.environ.get("RDMA_VM_SIW_ADDR", "")
DEVICES = [pytest.param(RXE, id="rxe"), pytest.param(SIW, id="siw")]
MIB = 1024 * 1024


async def connected_pair(
    client: Provider, server: Provider, address: tuple[str, int], private_data: bytes = b"ours"
) -> tuple[QueuePair, QueuePair]:
    listener = server.listen(address)
    try:
        async with trio.open_nursery() as nursery:
            accepted: list[QueuePair] = []

            async def accept() -> None:
                request = await listener.get_request()
                assert request.private_data[: len(private_data)] == private_data
                accepted.append(await request.accept(b"theirs", initiator_depth=4, responder_resources=4))

            nursery.start_soon(accept)
            with trio.fail_after(30):
                qp = await client.connect(address, private_data, initiator_depth=4, responder_resources=4)
    finally:
        await listener.aclose()
    return qp, accepted[0]


async def completion(qp: QueuePair) -> object:
    with trio.fail_after(30):
        return await qp.get_completion()


async def settle(a: QueuePair, b: QueuePair) -> None:
    """Wait until b has all that a wrote: a Send is placed after the RDMA Writes before it
    (an RDMA Write completes at the writer once sent, not once placed)."""
    buffer = bytearray(16)
    b.post_recv(20, memoryview(buffer))
    a.post_send(21, b"settle")
    assert (await completion(a)).status is Status.SUCCESS
    assert (await completion(b)).status is Status.SUCCESS


async def exercise(a: QueuePair, b: QueuePair, *, invalidate: bool = True) -> None:
    """Every operation from a to b: sends (solicited, with invalidate), RDMA write and read."""
    for size in (1, 1364, 60000):
        buffer = bytearray(65536)
        b.post_recv(10, memoryview(buffer))
        data = os.urandom(size)
        a.post_send(11, data, solicited=size == 1)
        sent, received = await completion(a), await completion(b)
        assert sent.status is Status.SUCCESS and sent.opcode is Opcode.SEND, sent
        assert received.status is Status.SUCCESS and received.byte_len == size, received
        assert bytes(buffer[:size]) == data
    memory = bytearray(MIB)
    region = b.register(memoryview(memory), Access.REMOTE_READ | Access.REMOTE_WRITE | Access.LOCAL_WRITE)
    data = os.urandom(MIB)
    a.post_write(12, data, region.token, region.address)
    assert (await completion(a)).status is Status.SUCCESS
    await settle(a, b)
    assert hashlib.sha256(memory).digest() == hashlib.sha256(data).digest()
    memory[:] = os.urandom(MIB)
    into = bytearray(MIB)
    a.post_read(13, memoryview(into), region.token, region.address)
    done = await completion(a)
    assert done.status is Status.SUCCESS and done.opcode is Opcode.RDMA_READ, done
    assert into == memory
    if not invalidate:
        b.deregister(region)
        return
    # A send with invalidate: b learns the token, and its registration is no longer valid.
    buffer = bytearray(64)
    b.post_recv(14, memoryview(buffer))
    a.post_send(15, b"done", invalidate_token=region.token)
    assert (await completion(a)).status is Status.SUCCESS
    received = await completion(b)
    assert received.status is Status.SUCCESS and received.invalidated_token == region.token, received
    assert not region.valid
    b.deregister(region)


@pytest.mark.parametrize("address", DEVICES)
async def test_verbs_to_verbs_every_operation(address: str) -> None:
    verbs = get_provider("verbs")
    client, server = await connected_pair(verbs, verbs, (address, 7301))
    assert client.peer_private_data.startswith(b"theirs") and server.peer_private_data.startswith(b"ours")
    assert client.peer_address == (address, 7301) and server.local_address == (address, 7301)
    assert client.initiator_depth >= 1 and server.responder_resources >= 1
    # rxe registers through memory windows, which the peer can invalidate; siw has none (docs/verbs.md).
    await exercise(client, server, invalidate=address == RXE)
    await exercise(server, client, invalidate=address == RXE)
    await client.disconnect()
    with pytest.raises(RdmaError) as info:
        with trio.fail_after(30):
            while True:
                await server.get_completions()
    assert info.value.errno == errno.ECONNRESET
    await server.disconnect()


@pytest.mark.parametrize("address", DEVICES)
async def test_rdma_without_invalidate_on_both_devices(address: str) -> None:
    verbs = get_provider("verbs")
    client, server = await connected_pair(verbs, verbs, (address, 7311))
    memory = bytearray(4 * MIB)
    region = server.register(memoryview(memory), Access.REMOTE_READ | Access.REMOTE_WRITE)
    data = os.urandom(4 * MIB)
    client.post_write(1, data, region.token, region.address)
    assert (await completion(client)).status is Status.SUCCESS
    await settle(client, server)
    into = bytearray(4 * MIB)
    client.post_read(2, memoryview(into), region.token, region.address)
    assert (await completion(client)).status is Status.SUCCESS
    assert into == data == memory
    await client.disconnect()
    await server.disconnect()


@pytest.mark.parametrize("address", DEVICES)
async def test_forged_token_fails_that_connection_only(address: str) -> None:
    verbs = get_provider("verbs")
    listener = verbs.listen((address, 7321))
    try:
        async with trio.open_nursery() as nursery:
            servers: list[QueuePair] = []

            async def serve() -> None:
                for _ in range(2):
                    servers.append(await (await listener.get_request()).accept(responder_resources=4))

            nursery.start_soon(serve)
            victim = await verbs.connect((address, 7321), initiator_depth=4)
            bystander = await verbs.connect((address, 7321), initiator_depth=4)
        region = servers[0].register(memoryview(bytearray(4096)), Access.REMOTE_READ)
        victim.post_read(1, memoryview(bytearray(4096)), region.token ^ 0x5A5A00, region.address)
        failed = await completion(victim)
        assert failed.status is not Status.SUCCESS and failed.reason, failed
        with pytest.raises(RdmaError) as info, trio.fail_after(30):
            while True:
                await victim.get_completions()
        assert info.value.errno in (errno.ECONNRESET, errno.ECONNABORTED), info.value
        # The other connection on the same listener carries on.
        good = servers[1].register(memoryview(bytearray(b"intact" * 100)), Access.REMOTE_READ)
        into = bytearray(600)
        bystander.post_read(2, memoryview(into), good.token, good.address)
        assert (await completion(bystander)).status is Status.SUCCESS and bytes(into) == b"intact" * 100
        for qp in (victim, bystander, *servers):
            await qp.disconnect()
    finally:
        await listener.aclose()


@pytest.mark.parametrize("address", DEVICES)
async def test_cancelled_waits_lose_no_completion(address: str) -> None:
    """A wait for completions cancelled at any moment takes none with it: each arrives once, in order."""
    verbs = get_provider("verbs")
    a, b = await connected_pair(verbs, verbs, (address, 7371))
    try:
        # Cancelled before it starts: the call takes nothing from the device.
        b.post_recv(0, memoryview(bytearray(64)))
        a.post_send(1, b"ping", signaled=False)
        with trio.CancelScope() as scope:
            scope.cancel()
            await b.get_completions()
        assert scope.cancelled_caught
        taken: list[int] = []
        with trio.fail_after(30):
            while not taken:
                await trio.sleep(0.001)
                taken = [c.wr_id for c in b.poll_completions()]
        assert taken == [0]
        # Cancelled at random moments while messages arrive.
        count = 300
        buffers = [bytearray(64) for _ in range(count)]
        for index, buffer in enumerate(buffers):
            b.post_recv(index, memoryview(buffer))
        received: list[int] = []

        async def receive_with_random_timeouts() -> None:
            rng = random.Random(7371)
            while len(received) < count:
                with trio.move_on_after(rng.uniform(0, 0.002)):
                    received.extend(c.wr_id for c in await b.get_completions() if c.opcode is Opcode.RECV)

        with trio.move_on_after(60):  # then the assertion names what was lost
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_with_random_timeouts)
                for index in range(count):
                    a.post_send(1000 + index, struct.pack("!I", index), signaled=False)
                    if index % 16 == 15:
                        assert a.poll_completions() == []  # frees the sends' slots; unsignaled, none reports
                        await trio.sleep(0.001)  # let some arrive while a wait is under way
        assert received == list(range(count))
        assert [struct.unpack_from("!I", buffer)[0] for buffer in buffers] == list(range(count))
    finally:
        await a.disconnect()
        await b.disconnect()


@pytest.mark.parametrize("verbs_side", ["client", "server"])
async def test_software_iwarp_and_verbs_on_siw(verbs_side: str) -> None:
    """Our two providers on one wire: siw in the kernel speaks for the verbs side."""
    verbs, soft = get_provider("verbs"), get_provider("softiwarp")
    client, server = (verbs, soft) if verbs_side == "client" else (soft, verbs)
    a, b = await connected_pair(client, server, (SIW, 7331 + (verbs_side == "server")))
    assert a.peer_private_data == b"theirs" and b.peer_private_data == b"ours"
    # Sends with invalidate only towards the software provider (siw has no memory windows).
    await exercise(a, b, invalidate=server is soft)
    await exercise(b, a, invalidate=client is soft)
    await a.disconnect()
    with pytest.raises(RdmaError), trio.fail_after(30):
        while True:
            await b.get_completions()
    await b.disconnect()


@pytest.mark.parametrize("address", DEVICES)
async def test_smbdirect_socket_over_verbs(address: str) -> None:
    provider = get_provider("verbs")
    listener = sdtrio.socket(provider=provider)
    await listener.bind((address, 7341))
    listener.listen()
    client = sdtrio.socket(provider=provider)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            accepted: list[sdtrio.SMBDirectSocket] = []

            async def accept() -> None:
                accepted.append((await listener.accept())[0])

            nursery.start_soon(accept)
            await client.connect((address, 7341))
        server = accepted[0]
        limit = client.info().max_fragmented_send_size
        for size in (1, 1364, 100_000, limit):
            message = os.urandom(size)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send, struct.pack(">I", size) + message)
                (length,) = struct.unpack(">I", await server.recv(4))
                assert length == size and await server.recv(length) == message
        buffer = bytearray(os.urandom(4 * MIB))
        registration = client.register_buffer(buffer, writable=True)
        into = bytearray(4 * MIB)
        await server.rdma_read(into, registration.descriptors)
        assert into == buffer
        data = os.urandom(4 * MIB)
        await server.rdma_write(data, registration.descriptors)
        assert hashlib.sha256(buffer).digest() == hashlib.sha256(data).digest()
        assert server.info().rdma_reads == 1 and server.info().rdma_writes == 1
        client.close()
        assert await server.recv(4) == b""  # the peer's disconnect is the end of the stream
    server.close()
    listener.close()


@pytest.mark.parametrize("address", DEVICES)
async def test_nothing_listening_is_connection_refused(address: str) -> None:
    with pytest.raises(RdmaError) as info:
        await get_provider("verbs").connect((address, 7361), timeout=20)
    assert info.value.errno == errno.ECONNREFUSED, info.value


async def test_an_address_without_rdma_is_an_error() -> None:
    with pytest.raises(OSError) as info:
        await get_provider("verbs").connect(("127.0.0.1", 7362), timeout=20)
    assert info.value.errno in (errno.ENODEV, errno.EADDRNOTAVAIL, errno.EHOSTUNREACH, errno.ENETUNREACH), info.value


async def test_device_option_restricts_the_provider() -> None:
    with pytest.raises(RdmaError) as info:
        get_provider("verbs", device="mlx5_9")
    assert info.value.errno == errno.ENODEV and "rxe0" in str(info.value)
    siw_only = get_provider("verbs", device="siw0")
    with pytest.raises(RdmaError) as info:
        siw_only.listen((RXE, 7363))
    assert info.value.errno == errno.EADDRNOTAVAIL and "rxe0" in str(info.value)
    listener = siw_only.listen((SIW, 7363))
    await listener.aclose()


@pytest.mark.last(order=2)
async def test_device_removed_under_a_connection() -> None:
    """``rdma link delete rxe0`` mid-transfer: both ends fail with a clear error, siw carries on."""
    verbs = get_provider("verbs")
    client, server = await connected_pair(verbs, verbs, (RXE, 7351))
    other_client, other_server = await connected_pair(verbs, verbs, (SIW, 7352))
    region = server.register(memoryview(bytearray(MIB)), Access.REMOTE_WRITE | Access.LOCAL_WRITE)
    errors: list[RdmaError] = []

    async def keep_writing() -> None:
        try:
            for n in range(100_000):
                client.post_write(n, b"x" * MIB, region.token, region.address)
                completed = await client.get_completion()
                if completed.status is not Status.SUCCESS:
                    await client.get_completions()  # raises the cause
        except RdmaError as exc:
            errors.append(exc)

    async def watch_server() -> None:
        try:
            while True:
                await server.get_completions()
        except RdmaError as exc:
            errors.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing)
            nursery.start_soon(watch_server)
            await trio.sleep(1)
            # Not trio.run_process: a removal the process blocks would leave it unkillable in the kernel.
            removal = subprocess.Popen(["rdma", "link", "delete", "rxe0"])
            while removal.poll() is None:
                await trio.sleep(0.1)
    assert removal.returncode == 0
    assert len(errors) == 2, errors
    assert all(e.errno in (errno.ENODEV, errno.ECONNRESET) for e in errors), errors
    assert any("removed" in str(e) for e in errors), errors
    with trio.fail_after(30):
        await client.disconnect()
        await server.disconnect()
    # The siw connection is untouched.
    buffer = bytearray(16)
    other_server.post_recv(1, memoryview(buffer))
    other_client.post_send(2, b"still here")
    assert (await completion(other_server)).status is Status.SUCCESS and buffer.startswith(b"still here")
    await other_client.disconnect()
    await other_server.disconnect()
    subprocess.run(["rdma", "link", "add", "rxe0", "type", "rxe", "netdev", "rxenet0"], check=False)


@pytest.mark.parametrize("address", DEVICES)
def test_blocking_socket_over_verbs_runs_in_the_calling_thread(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocking socket drives a verbs connection from the calling thread (it
    sleeps on the completion channel), with one thread sending while another
    receives; RDMA reads and writes still work beside it."""
    provider = get_provider("verbs")
    with blocking.create_server((address, 7343), provider=provider) as listener:
        client = blocking.create_connection((address, 7343), provider=provider, timeout=60)
        server, _ = listener.accept()
    server.settimeout(60)

    def hop(*args: object) -> None:
        raise AssertionError("a connected socket's send or receive went through the engine thread")

    with monkeypatch.context() as patched:
        patched.setattr(engine_thread, "run", hop)
        patched.setattr(engine_thread, "run_sync", hop)
        for size in (1, 1364, 100_000):
            message = os.urandom(size)
            client.sendall(framed(message))
            assert receive_message(server) == message
            server.sendall(framed(message))
            assert receive_message(client) == message

        exchange_hashed_messages(client, server, 300, timeout=300)

    buffer = bytearray(os.urandom(MIB))
    registration = client.register_buffer(buffer, writable=True)
    into = bytearray(MIB)
    server.rdma_read(into, registration.descriptors)
    assert into == buffer
    data = os.urandom(MIB)
    server.rdma_write(data, registration.descriptors)
    server.sendall(framed(b"written"))  # as SMB answers: the write is placed before it arrives
    assert receive_message(client) == b"written" and buffer == data
    client.close()
    assert server.recv(4) == b""  # the peer's disconnect is the end of the stream
    server.close()
