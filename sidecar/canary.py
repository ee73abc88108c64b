"""Canary choice: a deterministic share of requests, by request id or sticky by a header or cookie."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass


def bucket(key: str) -> int:
    """A stable bucket in [0, 10000) for a key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


def cookie_value(cookie_header: str, name: str) -> str | None:
    for part in cookie_header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v
    return None


@dataclass(frozen=True, slots=True)
class CanaryChooser:
    """Built once per stage from CanarySettings; `is_canary` runs per request."""

    threshold: int  # percent * 100
    sticky_header: str = ""
    sticky_cookie: str = ""

    def is_canary(self, headers: Mapping[str, str], request_id: str) -> bool:
        if self.threshold <= 0:
            return False
        if self.threshold >= 10000:
            return True
        key: str | None = None
        if self.sticky_header:
            key = headers.get(self.sticky_header)
        if key is None and self.sticky_cookie:
            cookie = headers.get("cookie")
            if cookie:
                key = cookie_value(cookie, self.sticky_cookie)
        return bucket(key if key is not None else request_id) < self.threshold
