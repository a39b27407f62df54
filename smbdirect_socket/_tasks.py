"""Background tasks for objects that have no nursery of their own.

Sockets outlive the code that makes them, as in the stdlib, so their
helper tasks (queue-pair I/O, a connection's completion loop, a listener's
negotiations) run as trio system tasks, each under a cancel scope its owner
keeps to end it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


def spawn_background(name: str, function: Callable[[], Awaitable[None]]) -> trio.CancelScope:
    """Run ``function`` as a system task until the returned scope is cancelled."""
    scope = trio.CancelScope()

    async def task() -> None:
        with scope:
            await function()

    trio.lowlevel.spawn_system_task(task, name=name)
    return scope
