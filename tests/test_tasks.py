"""The handover between tasks that drive a resource themselves and a background task."""

from __future__ import annotations

import trio
import trio.testing

from smbdirect_socket._tasks import Handover


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
