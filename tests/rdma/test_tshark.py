"""An independent wire check: Wireshark's iWARP dissectors read our traffic.

The capture covers MPA setup, Sends across several FPDUs, RDMA Write, Read
Request and Response, and Send with Invalidate, with CRC on and off.
tshark must find every FPDU, agree with every CRC, and report nothing
malformed.  (Wireshark's RPC-over-RDMA heuristic is turned off: it guesses
at Send payloads that are not RPC and calls them malformed.)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from smbdirect_socket.rdma import Access, get_provider

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


async def traffic(sock: socket.socket, crc: bool) -> None:
    provider = get_provider("softiwarp", crc=crc)
    port = sock.getsockname()[1]
    listener = provider.listen(("127.0.0.1", port), sock=sock)
    accepted = []

    async def accept() -> None:
        request = await listener.get_request()
        accepted.append(await request.accept(b"server", initiator_depth=8, responder_resources=8))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        client = await provider.connect(("127.0.0.1", port), b"client", initiator_depth=8, responder_resources=8)
    server = accepted[0]
    memory = bytearray(300_000)
    region = server.register(memoryview(memory), Access.REMOTE_READ | Access.REMOTE_WRITE)
    receives = [bytearray(200_000) for _ in range(3)]
    for i, buffer in enumerate(receives):
        server.post_recv(i, memoryview(buffer))
    client.post_send(1, b"hello")
    client.post_send(2, bytes(150_000))
    client.post_write(3, bytes(range(256)) * 1000, region.token, region.address + 5)
    client.post_read(4, memoryview(bytearray(200_000)), region.token, region.address + 100)
    client.post_send(5, b"bye", invalidate_token=region.token)
    with trio.fail_after(10):
        done = 0
        while done < 5:
            done += len(await client.get_completions())
        received = 0
        while received < 3:
            received += len(await server.get_completions())
    await client.disconnect()
    await server.disconnect()
    await listener.aclose()


def tshark(capture: Path, *fields: str) -> list[str]:
    command = ["tshark", "-r", str(capture), "--disable-heuristic", "rpcrdma_iwarp"]
    if fields:
        command += ["-T", "fields", *(arg for f in fields for arg in ("-e", f))]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.mark.parametrize("crc", [False, True])
async def test_tshark_dissects_our_traffic(tmp_path: Path, crc: bool) -> None:
    # Bound before the capture starts: its filter names a port no other test can take.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    capture = tmp_path / "iwarp.pcapng"
    dumpcap = await trio.lowlevel.open_process(
        ["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(capture), "-q"],
        stderr=subprocess.PIPE,
    )
    try:
        assert dumpcap.stderr is not None
        seen = b""
        with trio.fail_after(20):
            while b"Capture started" not in seen and b"Capturing on" not in seen:
                seen += await dumpcap.stderr.receive_some(4096)
        await trio.sleep(0.5)
        await traffic(sock, crc)
        await trio.sleep(0.5)
    finally:
        dumpcap.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await dumpcap.wait()
    summary = "\n".join(tshark(capture))
    assert "Malformed" not in summary
    rows = [row.split("\t") for row in tshark(capture, "iwarp_rdma.opcode", "iwarp_mpa.crc_check", "iwarp_mpa.req")]
    opcodes = {int(op, 16) for row in rows for op in row[0].split(",") if op}
    assert opcodes == {0, 1, 2, 3, 4}  # Write, Read Request, Read Response, Send, Send with Invalidate
    assert any(row[2] for row in rows)  # the MPA request was recognised
    details = "\n".join(tshark(capture, "iwarp_mpa.crc_flag"))
    assert ("True" in details or "1" in details) == crc
    if crc:
        verbose = subprocess.run(
            ["tshark", "-r", str(capture), "--disable-heuristic", "rpcrdma_iwarp", "-V"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        good = verbose.count("(Good CRC32)")
        fpdus = sum(len([op for op in row[0].split(",") if op]) for row in rows)
        assert good == fpdus > 10
        assert "Bad CRC" not in verbose
