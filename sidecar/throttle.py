"""Throttling: token buckets (rate + burst) and per-key quotas, persisted so restarts do not reset them.

Buckets live in a `Limiter` that outlives snapshots: a new snapshot with the
same limits keeps the same buckets (and their tokens).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger("meshgate.sidecar.throttle")

DEFAULT_RATE = 10000.0
DEFAULT_BURST = 5000


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def take(self, now: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        elapsed = now - self.stamp
        self.stamp = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 3600.0


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float
    burst: int

    def divided(self, replicas: int) -> Limit:
        """This replica's share of a limit meant to hold across `replicas` sidecars."""
        n = max(1, replicas)
        return Limit(self.rate / n, max(1, math.ceil(self.burst / n)))


class Limiter:
    """Buckets by key, re-created only when their configured limit changes."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[Limit, TokenBucket]] = {}

    def bucket(self, key: str, limit: Limit) -> TokenBucket:
        """The bucket for key; kept (with its tokens) while its limit stays the same."""
        entry = self._buckets.get(key)
        if entry is None or entry[0] != limit:
            entry = (limit, TokenBucket(limit.rate, limit.burst))
            self._buckets[key] = entry
        return entry[1]

    def take(self, key: str, limit: Limit) -> float:
        return self.bucket(key, limit).take(time.monotonic())


def period_start(period: str, now: datetime) -> datetime:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "DAY":
        return day
    if period == "WEEK":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(period: str, start: datetime) -> datetime:
    if period == "DAY":
        return start + timedelta(days=1)
    if period == "WEEK":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


class QuotaStore:
    """Requests per API key per period (UTC), saved to a file in the state dir."""

    def __init__(self, path: Path | None, save_every_s: float = 1.0) -> None:
        self.path = path
        self.save_every_s = save_every_s
        self._counts: dict[str, tuple[str, int]] = {}  # key -> (period start iso, count)
        self._dirty = False
        self._saved = 0.0
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self._counts = {k: (v[0], int(v[1])) for k, v in raw.items()}
            except (ValueError, OSError, IndexError, TypeError) as exc:
                log.warning("ignoring quota file %s: %s", path, exc)

    def take(self, key: str, limit: int, period: str) -> float:
        """Count one request: 0.0 when within quota, else seconds until the period resets."""
        now = datetime.now(UTC)
        start = period_start(period, now)
        stamp = start.isoformat()
        current = self._counts.get(key)
        count = current[1] if current is not None and current[0] == stamp else 0
        if count >= limit:
            return max(1.0, (period_end(period, start) - now).total_seconds())
        self._counts[key] = (stamp, count + 1)
        self._dirty = True
        if time.monotonic() - self._saved > self.save_every_s:
            self.save()
        return 0.0

    def used(self, key: str) -> int:
        current = self._counts.get(key)
        return current[1] if current is not None else 0

    def save(self) -> None:
        self._saved = time.monotonic()
        if self.path is None or not self._dirty:
            return
        self._dirty = False
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({k: list(v) for k, v in self._counts.items()}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save quotas to %s: %s", self.path, exc)
