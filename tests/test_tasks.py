"""The handover between tasks that drive a resource themselves and a background task."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from smbdirect_socket._tasks import ACCEPT_PAUSE, Handover, serve_accepted


async def test_the_background_waits_for_tasks_and_their_grace(mock_clock: trio.testing.MockClock) -> None:
    handover = Handover(grace=1.0)
    turns: list[float] = []

    async def background() -> None:
        await handover.background_turn()
        turns.append(trio.current_time())

    handover.enter()  # a task drives
    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(5)
        await trio.testing.wait_all_tasks_blocked()
        assert not turns  # not while the task drives, however long
        handover.leave()
        for _ in range(3):  # tasks that come straight back keep it off
            mock_clock.jump(0.5)
            handover.enter()
            await trio.testing.wait_all_tasks_blocked()
            handover.leave()
        assert not turns
        mock_clock.jump(1.0)
    assert turns == [trio.current_time()]


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
async def test_a_listener_waits_out_a_lack_of_resources(
    code: int, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """The errors the kernel's accept() gives for a lack of resources (EMFILE is
    shown for real in test_listener_resources): logged once, retried after a
    pause; ECONNABORTED passed over; the listener ends when it is closed."""
    outcomes: list[OSError | str] = [
        OSError(code, "out"),
        OSError(code, "out"),
        OSError(errno.ECONNABORTED, "gone"),
        "first",
        "second",
        OSError(errno.EBADF, "closed"),
    ]
    handled: list[str] = []

    async def accept() -> str:
        await trio.lowlevel.checkpoint()
        outcome = outcomes.pop(0)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    async def handle(item: str) -> None:
        handled.append(item)

    started = trio.current_time()
    with caplog.at_level(logging.DEBUG, logger="smbdirect_socket"):
        await serve_accepted(accept, handle, "test listener")
    assert handled == ["first", "second"]
    assert trio.current_time() - started == pytest.approx(2 * ACCEPT_PAUSE)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errno.errorcode[code] in errors[0].getMessage()
    assert any("accepts again" in r.getMessage() for r in caplog.records)
