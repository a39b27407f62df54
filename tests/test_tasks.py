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


async def test_tasks_that_come_and_go_do_not_wake_the_background(mock_clock: trio.testing.MockClock) -> None:
    """A ping-pong's tasks leave and come straight back: the background task
    sleeps through it, waking at most once a grace, and never while one stays."""
    handover = Handover(grace=1.0)
    steps: list[float] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name == "background":
                steps.append(trio.current_time())

    async def background() -> None:
        await handover.background_turn()

    handover.enter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(background, name="background")
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(Steps())
        for _ in range(100):  # 100 messages in 0.5 s
            handover.leave()
            mock_clock.jump(0.005)
            handover.enter()
            await trio.testing.wait_all_tasks_blocked()
        assert not steps  # the deadline the first leave gave it is still ahead
        for _ in range(100):  # 100 more in 1 s: past that deadline once
            handover.leave()
            mock_clock.jump(0.01)
            handover.enter()
            await trio.testing.wait_all_tasks_blocked()
        assert len(steps) == 1
        for _ in range(3):  # a task that stays: one look, a grace after the last leave, then none
            mock_clock.jump(60)
            await trio.testing.wait_all_tasks_blocked()
            assert len(steps) == 2
        handover.leave()
        mock_clock.jump(1.0)
    assert len(steps) == 3  # its turn
