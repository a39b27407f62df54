"""The two roles of librdmacm's ``rping``, written on this project's engine.

rping's exchange, per iteration: the client sends the address, token and
length of its source buffer (``struct rping_rdma_info``: be64 buf, be32 rkey,
be32 size); the server RDMA-reads it and answers with a Send; the client
sends its sink buffer; the server RDMA-writes the data back (the string and
its NUL) and answers again; the client compares the two buffers.
"""

from __future__ import annotations

import struct

from smbdirect_socket.rdma import Access, Completion, Opcode, QueuePair, Status

INFO = struct.Struct("!QII")


def ping_text(iteration: int, size: int) -> bytes:
    """What the rping client puts in its buffer for ``iteration``."""
    text = bytearray(f"rdma-ping-{iteration}: ".encode())
    start = 65 + iteration % 58
    c = start
    while len(text) < size:
        text.append(c)
        c = 65 if c >= 122 else c + 1
    text[size - 1] = 0
    return bytes(text[:size])


async def _expect(qp: QueuePair, opcode: Opcode) -> Completion:
    """Wait for ``opcode`` to complete, passing over completed sends."""
    while True:
        completion = await qp.get_completion()
        if completion.status is not Status.SUCCESS:
            raise AssertionError(f"work request failed: {completion}")
        if completion.opcode is opcode:
            return completion
        if completion.opcode is not Opcode.SEND:
            raise AssertionError(f"expected {opcode.name}, got {completion}")


async def _next_receive(qp: QueuePair) -> Completion:
    return await _expect(qp, Opcode.RECV)


async def client(qp: QueuePair, iterations: int, size: int = 64) -> None:
    """rping -c: advertise, let the server read and write back, validate."""
    source = bytearray(size)
    sink = bytearray(size)
    source_mr = qp.register(memoryview(source), Access.REMOTE_READ)
    sink_mr = qp.register(memoryview(sink), Access.REMOTE_WRITE | Access.LOCAL_WRITE)
    receive = bytearray(INFO.size)
    for iteration in range(iterations):
        source[:] = ping_text(iteration, size)
        sink[:] = bytes(size)
        qp.post_recv(1, memoryview(receive))
        qp.post_send(2, INFO.pack(source_mr.address, source_mr.token, size))
        await _next_receive(qp)  # the server has read our source buffer
        qp.post_recv(1, memoryview(receive))
        qp.post_send(3, INFO.pack(sink_mr.address, sink_mr.token, size))
        await _next_receive(qp)  # the server has written our sink buffer
        if sink != source:
            raise AssertionError(f"iteration {iteration}: data mismatch: {bytes(sink)!r} != {bytes(source)!r}")


async def server(qp: QueuePair, iterations: int, size: int = 64) -> list[bytes]:
    """rping -s: read the client's buffer, write it back to the client's sink."""
    buffer = bytearray(size)
    receive = bytearray(INFO.size)
    seen = []
    qp.post_recv(1, memoryview(receive))
    for _ in range(iterations):
        await _next_receive(qp)
        address, token, length = INFO.unpack(receive)
        qp.post_recv(1, memoryview(receive))
        qp.post_read(2, memoryview(buffer)[:length], token, address)
        await _expect(qp, Opcode.RDMA_READ)
        seen.append(bytes(buffer[:length]))
        qp.post_send(3, bytes(INFO.size))  # "go ahead"
        await _next_receive(qp)
        address, token, _ = INFO.unpack(receive)
        qp.post_recv(1, memoryview(receive))
        text_length = buffer.index(0) + 1 if 0 in buffer else length
        qp.post_write(4, memoryview(buffer)[:text_length], token, address)
        await _expect(qp, Opcode.RDMA_WRITE)
        qp.post_send(5, bytes(INFO.size))  # "begin again"
    return seen
