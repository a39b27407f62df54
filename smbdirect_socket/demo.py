"""``python -m smbdirect_socket.demo``: SMB-Direct messages between a client and a server.

Runs the protocol core end to end with no RDMA hardware and prints what
crossed the wire: negotiated sizes, credits, fragments and throughput.
"""

from __future__ import annotations

import hashlib
import os
import time

from .testing import ProtocolPair


def main() -> None:
    pair = ProtocolPair()
    pair.start()
    pair.run()
    negotiated = pair.client.negotiated
    assert negotiated is not None
    print(
        f"negotiated: send {negotiated.max_send_size} B, receive {negotiated.max_receive_size} B, "
        f"fragmented {negotiated.max_fragmented_send_size} B; "
        f"credits client {pair.client.send_credits}, server {pair.server.send_credits}"
    )
    payload = os.urandom(4 * 1024 * 1024)
    chunk = negotiated.max_fragmented_send_size
    received = bytearray()
    start = time.perf_counter()
    for offset in range(0, len(payload), chunk):
        pair.client.send_message(payload[offset : offset + chunk])
        pair.collect(pair.client)
        pair.run()
        received += pair.server.read(pair.server.readable)
        pair.collect(pair.server)
        pair.run()
    elapsed = time.perf_counter() - start
    stats = pair.client.statistics
    same = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    print(
        f"sent {len(payload)} bytes in {stats.messages_sent} messages, {stats.fragments_sent} fragments, "
        f"{len(payload) / elapsed / 1e6:.1f} MB/s; intact: {same}"
    )


if __name__ == "__main__":
    main()
