"""Background tasks for objects that have no nursery of their own.

Sockets outlive the code that makes them, as in the stdlib, so their
helper tasks (queue-pair I/O, a connection's completion loop, a listener's
negotiations) run as trio system tasks, each under a cancel scope its owner
keeps to end it.  A listener's task accepts with :func:`serve_accepted`,
which outlives running out of descriptors.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

#: The package's logger.
log = logging.getLogger("smbdirect_socket")


def spawn_background(name: str, function: Callable[[], Awaitable[None]]) -> trio.CancelScope:
    """Run ``function`` as a system task until the returned scope is cancelled."""
    scope = trio.CancelScope()

    async def task() -> None:
        with scope:
            await function()

    trio.lowlevel.spawn_system_task(task, name=name)
    return scope


#: What ``accept`` gives while the system is out of a resource for now (trio's
#: ``serve_listeners`` list): the listener logs it, pauses and accepts again.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long a listener pauses then (trio's figure).
ACCEPT_PAUSE = 0.1


async def serve_accepted(
    accept: Callable[[], Awaitable[T]], handle: Callable[[T], Awaitable[object]], what: str
) -> None:
    """Run ``handle`` on each thing ``accept`` returns, each in a task of its own.

    A connection that went away before it was accepted (``ECONNABORTED``) is
    passed over; running out of descriptors, buffers or memory is logged and
    retried after a pause, so that a burst of connections cannot end the
    listener.  It ends when ``accept`` says the listener is closed, or fails
    in any other way (that is logged too).
    """
    out_of_resources = False
    async with trio.open_nursery() as nursery:
        while True:
            try:
                item = await accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno not in OUT_OF_RESOURCES:
                    if exc.errno != errno.EBADF:  # EBADF: closed, as asked
                        log.error("%s stopped accepting: %s", what, exc)
                    return
                # Logged once per episode: the retries come ten times a second.
                (log.debug if out_of_resources else log.error)(
                    "%s: accept gave %s (%s); accepting again every %s s until it works",
                    what,
                    errno.errorcode[exc.errno],
                    os.strerror(exc.errno),
                    ACCEPT_PAUSE,
                )
                out_of_resources = True
                await trio.sleep(ACCEPT_PAUSE)
                continue
            if out_of_resources:
                log.warning("%s accepts again", what)
                out_of_resources = False
            nursery.start_soon(handle, item)
