"""File copy through the gateway with RDMA channel I/O, against the same client over TCP.

One Samba, one run.  The client is smbprotocol's low-level API (unsigned,
SMB 3.0.2, as clients offload only unsigned I/O) writing and reading back a
file in 1 MiB requests:

* over SMB-Direct through the gateway, each READ and WRITE with Channel
  RDMA_V1 and a registered buffer (the gateway does the RDMA);
* over TCP straight to Samba, the same requests with the data inline.

    python benchmarks/bench_gateway.py [--mib N] [--json FILE]

The JSON (smbdirect_socket.tools.measure) names each figure's unit:
``gateway_bytes_per_second``, ``tcp_bytes_per_second``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from typing import Any

from smbprotocol.open import ReadWriteChannel, SMB2ReadRequest, SMB2ReadResponse, SMB2WriteRequest

from smbdirect_socket import Parameters, SMBDirectSocket, patch
from smbdirect_socket.smb.gateway import Gateway, gateway_thread
from smbdirect_socket.smb.rdma_io import charged_for, open_file, rdma_read_request, rdma_write_request
from smbdirect_socket.smb.samba import SambaServer, samba_available, samba_server
from smbdirect_socket.tools import measure
from smbdirect_socket.tools.measure import BYTES_PER_SECOND, Comparison

CHUNK = 1024 * 1024
RDMA_V1 = ReadWriteChannel.SMB2_CHANNEL_RDMA_V1


def copy(samba: SambaServer, host: str, port: int, data: bytes, rdma: bool) -> float:
    """Seconds to write ``data`` and read it back, 1 MiB a request."""
    connection, session, tree, handle = open_file(samba, (host, port), f"bench-{uuid.uuid4().hex[:8]}.bin")
    sock: Any = connection.transport._sock
    sink = bytearray(CHUNK)
    source = bytearray(CHUNK)
    if rdma:
        assert isinstance(sock, SMBDirectSocket)
        readable, writable = sock.register_buffer(source), sock.register_buffer(sink, writable=True)

    def call(request: Any) -> Any:
        sent = connection.send(request, session.session_id, tree.tree_connect_id)
        return connection.receive(sent)["data"].get_value()

    start = measure.now()
    with charged_for(connection, CHUNK) if rdma else contextlib.nullcontext():
        for offset in range(0, len(data), CHUNK):
            if rdma:
                source[:] = data[offset : offset + CHUNK]
                write = rdma_write_request(handle.file_id, offset, CHUNK, RDMA_V1, readable.pack())
            else:
                write = SMB2WriteRequest()
                write["offset"] = offset
                write["file_id"] = handle.file_id
                write["buffer"] = data[offset : offset + CHUNK]
            call(write)
        back = bytearray()
        for offset in range(0, len(data), CHUNK):
            if rdma:
                read = rdma_read_request(handle.file_id, offset, CHUNK, RDMA_V1, writable.pack())
            else:
                read = SMB2ReadRequest()
                read["length"] = CHUNK
                read["offset"] = offset
                read["file_id"] = handle.file_id
            response = SMB2ReadResponse()
            response.unpack(call(read))
            back += sink if rdma else response["buffer"].get_value()
    elapsed = measure.now() - start
    handle.close()
    connection.disconnect()
    if bytes(back) != data:
        raise SystemExit("the file read back differs")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    reason = samba_available()
    if reason is not None:
        raise SystemExit(f"needs Samba: {reason}")
    data = os.urandom(args.mib * CHUNK)
    results = {}
    with samba_server() as samba:
        results["tcp"] = copy(samba, samba.host, samba.port, data, rdma=False)
        for name, parameters in (
            ("kernel sizes", Parameters()),
            ("large messages", Parameters().with_large_messages()),
        ):
            gateway = Gateway(samba.address, parameters)
            with gateway_thread(gateway) as (host, port), patch(ports=[port], parameters=parameters):
                results[name] = copy(samba, host, port, data, rdma=True)
            assert gateway.rdma_read_bytes == gateway.rdma_write_bytes == len(data)
    moved = 2 * len(data)  # bytes written and read back
    tcp_rate = moved / results["tcp"]
    print(
        f"{args.mib} MiB written and read back in 1 MiB requests; TCP straight to Samba: "
        f"{BYTES_PER_SECOND.show(tcp_rate):.1f} {BYTES_PER_SECOND.label}"
    )
    comparisons = [
        Comparison(f"gateway, RDMA channel I/O, {name}", moved / results[name], tcp_rate, BYTES_PER_SECOND, "gateway")
        for name in ("kernel sizes", "large messages")
    ]
    for comparison in comparisons:
        print(comparison.line(width=42))
    if args.json:
        records = [c.record() for c in comparisons]
        measure.write_json(args.json, measure.benchmark_document("bench_gateway", records, file_bytes=len(data)))


if __name__ == "__main__":
    main()
