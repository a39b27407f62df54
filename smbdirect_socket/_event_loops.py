"""Which event loop is running: for errors that say which front door to use.

trio's own functions, called outside ``trio.run``, raise ``RuntimeError: must
be called from async context``, which does not tell an asyncio program that
this package has a front door for it.  :func:`require_trio` raises an error
that does.  It imports nothing: asyncio is looked up only if the program has
imported it already.
"""

from __future__ import annotations

import sys

import trio

__all__ = ["asyncio_running", "require_trio"]


def asyncio_running() -> bool:
    """An asyncio event loop runs in this thread."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio._get_running_loop() is not None


def require_trio(what: str) -> None:
    """Raise ``RuntimeError`` naming the right front door unless trio runs in this thread.

    ``what`` names the trio API that was called, for the message.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass
    else:
        return
    if asyncio_running():
        raise RuntimeError(
            f"{what} is smbdirect_socket's trio API, called from asyncio: use smbdirect_socket.asyncio"
            " (open_connection, start_server, socket) instead"
        )
    raise RuntimeError(
        f"{what} must be called under trio.run; from asyncio use smbdirect_socket.asyncio,"
        " from threads the blocking socket (smbdirect_socket.socket, create_connection)"
    )
