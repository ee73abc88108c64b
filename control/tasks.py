"""Stopping background tasks for sure.

A single ``task.cancel()`` is not always enough: on Python 3.11,
``asyncio.wait_for`` returns its inner result and drops the cancellation when
the two arrive together. aetcd waits that way for a watch's "created"
response, so a control replica stopped while its etcd watch was being set up
could keep watching and never stop (seen as a hung shutdown under load).
``cancel_and_wait`` cancels again until the tasks have ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("meshgate.control")


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, retry_s: float = 0.1, timeout_s: float = 10.0
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks`, re-cancelling any that swallowed it, until all end; return those that did not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    all_tasks = set(tasks)
    done = {t for t in all_tasks if t.done()}
    pending = all_tasks - done
    while pending:
        for task in pending:
            task.cancel()
        finished, pending = await asyncio.wait(pending, timeout=retry_s)
        done |= finished
        if pending and loop.time() >= deadline:
            log.warning(
                "tasks still running %.0fs after cancel: %s", timeout_s, sorted(t.get_name() for t in pending)
            )
            break
    for task in done:  # retrieve outcomes so asyncio does not log them as never retrieved
        if not task.cancelled():
            task.exception()
    return pending
