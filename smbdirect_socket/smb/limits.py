"""The gateway's bounds: what one client, and all of them together, may hold.

:class:`GatewayLimits` is the user's setting (``Gateway(limits=...)``, the
``smbdirect gateway`` flags); :class:`ByteBudget` is the accounting that
enforces the RDMA byte bounds, a ``trio.CapacityLimiter`` counted in bytes.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

__all__ = ["ByteBudget", "GatewayLimits"]

MiB = 1024 * 1024


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class GatewayLimits:
    """Bounds of a :class:`~smbdirect_socket.smb.gateway.Gateway` (sizes in bytes, times in seconds).

    The defaults let a client of this project with large messages (8 MiB READ
    and WRITE) run at full speed and keep a hostile one to a few MiB; see
    docs/limits.md for what each costs and what a client over it gets.
    """

    max_connections: int = attrs.field(
        default=128, validator=_positive, metadata={"help": "connections at once, from set-up to close"}
    )
    max_connections_per_address: int = attrs.field(
        default=16, validator=_positive, metadata={"help": "connections at once from one peer address"}
    )
    setup_timeout: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata={"help": "seconds from the MPA request to the end of SMB-Direct negotiation"},
    )
    rdma_bytes_per_session: int = attrs.field(
        default=16 * MiB,
        validator=_positive,
        metadata={"help": "RDMA bytes one session holds: READ data awaited, WRITE data passing through"},
    )
    rdma_bytes_total: int = attrs.field(
        default=256 * MiB, validator=_positive, metadata={"help": "RDMA bytes all sessions hold together"}
    )
    max_compound_commands: int = attrs.field(
        default=32, validator=_positive, metadata={"help": "commands in one compound request"}
    )
    max_compound_bytes: int = attrs.field(
        default=16 * MiB + 64 * 1024,
        validator=_positive,
        metadata={"help": "bytes of one request as it goes to the server, RDMA WRITE data included"},
    )

    def __attrs_post_init__(self) -> None:
        if self.rdma_bytes_per_session > self.rdma_bytes_total:
            raise ValueError(
                f"rdma_bytes_per_session ({self.rdma_bytes_per_session}) exceeds "
                f"rdma_bytes_total ({self.rdma_bytes_total})"
            )


class ByteBudget:
    """At most ``capacity`` bytes held at once: :meth:`acquire` waits until they fit,
    first come first served (a large request is not starved by small ones).

    ``peak`` is the most ever held, for tests and the curious.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._turn = trio.Lock()  # FIFO: the first waiter takes the next bytes freed
        self._space = trio.lowlevel.ParkingLot()

    async def acquire(self, size: int) -> None:
        if size > self.capacity:
            raise ValueError(f"{size} bytes can never fit a budget of {self.capacity}")
        async with self._turn:
            while self.used + size > self.capacity:
                await self._space.park()
            self.used += size
            self.peak = max(self.peak, self.used)

    def release(self, size: int) -> None:
        self.used -= size
        self._space.unpark_all()
