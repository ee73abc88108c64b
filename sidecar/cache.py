"""The stage response cache: LRU by bytes, TTL, optional AES-GCM encryption of what it holds.

Keys are hashed (SHA-256) so request URLs are not kept in clear; with
encryption on, entries are sealed with a key that comes from the sidecar's
secret file or environment, never from config in etcd.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


ENTRY_OVERHEAD = 96  # bytes charged per entry on top of its payload


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    # The response's Vary names with the values the storing request had (RFC 9111 §4.1): only a
    # request with the same values may be served this entry.
    varied: tuple[tuple[str, str], ...] = ()


def load_key(path: str | None = None, env: str = "MESHGATE_CACHE_KEY") -> bytes | None:
    """A 256-bit key from a file (raw 32 bytes, hex or base64) or the environment."""
    raw: bytes | None = None
    if path:
        raw = Path(path).read_bytes().strip()
    elif os.environ.get(env):
        raw = os.environ[env].strip().encode()
    if raw is None:
        return None
    if len(raw) == 32:
        return raw
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(raw.decode())
        except ValueError:
            continue
        if len(key) == 32:
            return key
    raise ValueError("cache key must be 32 bytes (raw, hex or base64)")


def _pack(resp: CachedResponse) -> bytes:
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in resp.headers]
    head = json.dumps([headers, resp.varied]).encode()
    return struct.pack(">HI", resp.status, len(head)) + head + resp.body


def _unpack(blob: bytes) -> CachedResponse:
    status, n = struct.unpack_from(">HI", blob)
    head, varied = json.loads(blob[6 : 6 + n])
    headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in head)
    return CachedResponse(status, headers, blob[6 + n :], tuple((k, v) for k, v in varied))


class ResponseCache:
    def __init__(self, capacity_bytes: int, ttl_s: float, key: bytes | None = None) -> None:
        self.capacity = capacity_bytes
        self.ttl_s = ttl_s
        self._aead = _aesgcm(key) if key is not None else None
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self.size = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @staticmethod
    def digest(key: bytes) -> bytes:
        return hashlib.sha256(key).digest()

    def get(self, key: bytes) -> CachedResponse | None:
        d = self.digest(key)
        entry = self._entries.get(d)
        if entry is None:
            self.misses += 1
            return None
        expires, blob = entry
        if time.monotonic() >= expires:
            self._drop(d)
            self.misses += 1
            return None
        self._entries.move_to_end(d)
        self.hits += 1
        if self._aead is not None:
            blob = self._aead.decrypt(blob[:12], blob[12:], d)
        return _unpack(blob)

    def put(self, key: bytes, resp: CachedResponse) -> bool:
        if self.ttl_s <= 0:
            return False
        d = self.digest(key)
        blob = _pack(resp)
        if self._aead is not None:
            nonce = os.urandom(12)
            blob = nonce + self._aead.encrypt(nonce, blob, d)
        cost = len(blob) + ENTRY_OVERHEAD
        if cost > self.capacity:
            return False
        if d in self._entries:
            self._drop(d)
        while self.size + cost > self.capacity and self._entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        self._entries[d] = (time.monotonic() + self.ttl_s, blob)
        self.size += cost
        return True

    def invalidate(self, key: bytes) -> None:
        d = self.digest(key)
        if d in self._entries:
            self._drop(d)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def raw_values(self) -> list[bytes]:
        """What the cache holds (tests check that encrypted entries are ciphertext)."""
        return [blob for _, blob in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, d: bytes) -> None:
        _, blob = self._entries.pop(d)
        self.size -= len(blob) + ENTRY_OVERHEAD


def _aesgcm(key: bytes) -> AESGCM:
    """The cipher of an encrypted cache (cryptography loads with the first one)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)
