"""cancel_and_wait ends tasks that swallow a cancel (Python 3.11 wait_for does, inside aetcd)."""

from __future__ import annotations

import asyncio

from meshgate.control.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # what wait_for does when its inner result arrives with the cancel
                raise

    async def failing() -> None:
        raise ValueError("boom")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    left = await asyncio.wait_for(cancel_and_wait(tasks, retry_s=0.01), 5)
    assert left == set() and swallowed == 2 and all(t.done() for t in tasks)
    assert tasks[0].cancelled() and isinstance(tasks[1].exception(), ValueError)


async def test_a_task_that_never_ends_is_reported_after_the_timeout() -> None:
    give_up = False

    async def immortal() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if give_up:
                    raise

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    left = await cancel_and_wait([task], retry_s=0.01, timeout_s=0.1)
    assert left == {task} and not task.done()
    give_up = True
    assert await cancel_and_wait([task]) == set() and task.cancelled()
