"""One trio event loop per process, in a thread, for the blocking front doors.

The blocking socket has no protocol code of its own: every call is the trio
socket's, run on this loop with :func:`run` (or :func:`run_sync`) from the
calling thread.  The loop starts on first use, lives as a daemon thread, and
a forked child starts its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

__all__ = ["call_soon", "run", "run_sync"]

T = TypeVar("T")


class _EngineThread:
    def __init__(self) -> None:
        started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            started.set()
            await trio.sleep_forever()

        self._thread = threading.Thread(target=trio.run, args=(main,), name="smbdirect-engine", daemon=True)
        self._thread.start()
        started.wait()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def call_soon(self, fn: Callable[[], object]) -> None:
        assert self._token is not None
        self._token.run_sync_soon(fn)


_engine: _EngineThread | None = None
_lock = threading.Lock()


def _get() -> _EngineThread:
    global _engine
    if sys.is_finalizing() or (_engine is not None and not _engine.alive):
        # The loop's thread is gone or frozen: waiting on it would hang forever.
        raise OSError(errno.EBADF, "the smbdirect engine has stopped (the interpreter is shutting down)")
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = _EngineThread()
    return _engine


def _forget_after_fork() -> None:
    global _engine, _lock
    _engine = None  # the thread did not survive the fork
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def run(afn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``afn(*args)`` on the engine loop and wait for its result."""
    return _get().run(afn, *args)


def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the engine loop's thread (for code that touches its state)."""
    return _get().run_sync(fn, *args)


def call_soon(fn: Callable[[], object]) -> None:
    """Have the engine loop call ``fn()`` soon; from any thread, the engine's too,
    without waiting (for finalizers).  Does nothing once the engine has stopped."""
    engine = _engine
    if engine is None or not engine.alive or sys.is_finalizing():
        return
    with contextlib.suppress(trio.RunFinishedError):
        engine.call_soon(fn)
