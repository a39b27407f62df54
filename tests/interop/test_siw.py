"""The software iWARP provider against Linux siw: rping both ways, and ksmbd."""

from __future__ import annotations

import os
import struct
import subprocess

import pytest
import trio

from smbdirect_socket.pdu import NegotiateRequest, NegotiateResponse
from smbdirect_socket.rdma import Opcode, RdmaError, Status, get_provider

from . import rping

SIW = os.environ.get("RDMA_VM_SIW_ADDR", "")


async def connect_with_retry(provider, address, **kwargs):  # type: ignore[no-untyped-def]
    """Connect once the kernel-side server listens."""
    for _ in range(100):
        try:
            return await provider.connect(address, **kwargs)
        except (OSError, RdmaError):
            await trio.sleep(0.1)
    raise AssertionError(f"nothing listens on {address}")


@pytest.mark.parametrize("crc", [False, True])
async def test_our_client_against_rping_server(crc: bool) -> None:
    port = 7174 + crc
    process = await trio.lowlevel.open_process(
        ["rping", "-s", "-a", SIW, "-p", str(port), "-C", "5", "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        provider = get_provider("softiwarp", crc=crc)
        qp = await connect_with_retry(provider, (SIW, port), initiator_depth=1, responder_resources=1)
        await rping.client(qp, iterations=5)
        await qp.disconnect()
        with trio.fail_after(30):
            await process.wait()
        assert process.stdout is not None
        output = (await process.stdout.receive_some(1 << 16)).decode(errors="replace")
    finally:
        process.kill()
    assert process.returncode == 0, output
    for i in range(5):
        assert f"server ping data: rdma-ping-{i}: " in output


@pytest.mark.parametrize("crc", [False, True])
async def test_rping_client_against_our_server(crc: bool) -> None:
    port = 7184 + crc
    provider = get_provider("softiwarp", crc=crc)
    listener = provider.listen((SIW, port))
    process = await trio.lowlevel.open_process(
        ["rping", "-c", "-a", SIW, "-p", str(port), "-C", "5", "-V", "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with trio.fail_after(60):
            request = await listener.get_request()
            qp = await request.accept(initiator_depth=1, responder_resources=1)
            seen = await rping.server(qp, iterations=5)
            await process.wait()
        assert process.stdout is not None
        output = (await process.stdout.receive_some(1 << 16)).decode(errors="replace")
    finally:
        process.kill()
        await listener.aclose()
    assert process.returncode == 0, output
    assert "data mismatch" not in output
    assert [s.split(b":")[0] for s in seen] == [f"rdma-ping-{i}".encode() for i in range(5)]


@pytest.mark.parametrize("crc", [False, True])
async def test_ksmbd_answers_negotiate(crc: bool) -> None:
    if not os.environ.get("RDMA_VM_SMB_USER"):
        pytest.skip("ksmbd is not running in this guest")
    provider = get_provider("softiwarp", crc=crc)
    # ksmbd reads iWARP private data as be32 {IRD, ORD}; matching values are not "legacy".
    qp = await connect_with_retry(
        provider, (SIW, 5445), private_data=struct.pack("!II", 16, 16), initiator_depth=16, responder_resources=16
    )
    response = bytearray(1364)
    qp.post_recv(1, memoryview(response))
    request = NegotiateRequest(
        credits_requested=255, preferred_send_size=1364, max_receive_size=1364, max_fragmented_size=173910
    )
    qp.post_send(2, request.pack())
    completions = {}
    with trio.fail_after(20):
        while len(completions) < 2:
            c = await qp.get_completion()
            completions[c.opcode] = c
    assert completions[Opcode.SEND].status is Status.SUCCESS
    received = completions[Opcode.RECV]
    assert received.status is Status.SUCCESS and received.byte_len == 32
    answer = NegotiateResponse.unpack(response[:32])
    assert answer.status == 0
    assert answer.negotiated_version == 0x0100
    assert answer.credits_granted > 0
    assert answer.max_receive_size >= 128 and answer.max_fragmented_size >= 131072
    await qp.disconnect()
