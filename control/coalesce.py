"""Burst coalescing for etcd-driven work: mark() on every change, settled() returns once the burst
has been quiet for `quiet_s` (or has lasted `max_delay_s`), so a flurry of writes costs one push."""

from __future__ import annotations

import asyncio
import time


class Coalescer:
    def __init__(self, quiet_s: float, max_delay_s: float) -> None:
        self.quiet_s = quiet_s
        self.max_delay_s = max_delay_s
        self._dirty = asyncio.Event()
        self._first = 0.0
        self._last = 0.0

    def mark(self) -> None:
        now = time.monotonic()
        if not self._dirty.is_set():
            self._first = now
            self._dirty.set()
        self._last = now

    async def settled(self) -> None:
        """Wait for a change, then for its burst to settle; the next mark() starts a new burst."""
        await self._dirty.wait()
        while True:
            now = time.monotonic()
            quiet, age = now - self._last, now - self._first
            if quiet >= self.quiet_s or age >= self.max_delay_s:
                break
            await asyncio.sleep(max(0.0005, min(self.quiet_s - quiet, self.max_delay_s - age)))
        self._dirty.clear()
