"""Background tasks for objects that have no nursery of their own.

Sockets outlive the code that makes them, as in the stdlib, so their
helper tasks (queue-pair I/O, a connection's completion loop, a listener's
negotiations) run as trio system tasks, each under a cancel scope its owner
keeps to end it.  A listener's task accepts with :func:`serve_accepted`,
which outlives running out of descriptors; :class:`Handover` decides when a
background task drives what waiting tasks otherwise drive themselves.
"""

from __future__ import annotations

import errno
import logging
import math
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


class Handover:
    """Who drives a shared resource (a socket to read, a queue pair to poll).

    A task that waits on it drives it itself, which saves the switch to
    another task; a background task drives it only while no such task does,
    so that what needs no caller still gets done.  It keeps off for
    ``grace`` seconds after the last task left (or took over): that task
    usually comes straight back, and taking over costs a switch.

    Tasks that come and go do not wake the background task: while one
    drives it sleeps without a deadline, and the first to leave gives it
    one, a grace away; it then wakes at most once a grace however often
    they come and go, and not again while one stays.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.tasks = 0  # tasks driving, or in line to
        self._last = -math.inf
        self._free = trio.lowlevel.ParkingLot()  # wait_free: woken when the last task leaves
        self._asleep: trio.CancelScope | None = None  # the background task's, while tasks drive

    def enter(self) -> None:
        self.tasks += 1

    def leave(self) -> None:
        self.tasks -= 1
        if not self.tasks:
            self._last = now = trio.current_time()
            asleep = self._asleep
            if asleep is not None and asleep.deadline == math.inf:
                asleep.deadline = now + self.grace  # (later leaves move _last; it looks again then)
            if self._free:
                self._free.unpark_all()

    def shorten(self, grace: float) -> None:
        """Use ``grace`` from now on, a sleeping background task included."""
        self.grace = grace
        asleep = self._asleep
        if asleep is not None and asleep.deadline != math.inf:
            asleep.deadline = min(asleep.deadline, self._last + grace)

    def hand_back(self) -> None:
        """The tasks that drove are not coming straight back: the background
        task takes over now, not a grace later."""
        self._last = -math.inf
        if self._asleep is not None and not self.tasks:
            self._asleep.cancel()

    def hold(self) -> None:
        """Keep the background task off for a grace from now."""
        self._last = trio.current_time()

    def release(self) -> None:
        """Wake whoever waits here to look again (at close)."""
        self._free.unpark_all()
        if self._asleep is not None:
            self._asleep.cancel()

    async def wait_free(self) -> None:
        """Wait until no task drives (or :meth:`release`)."""
        if self.tasks:
            await self._free.park()

    async def background_turn(self) -> None:
        """Return once no task drives and the grace since the last one has passed."""
        while True:
            due = self._last + self.grace
            if self.tasks:
                due = math.inf  # the first to leave sets the deadline
            elif trio.current_time() >= due:
                return
            with trio.CancelScope(deadline=due) as self._asleep:
                await trio.sleep_forever()
            self._asleep = None
