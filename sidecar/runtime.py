"""`Runtime`: the request-phase state that outlives snapshots (token buckets, quotas, JWKS and
authorizer caches, response caches) and the outbound HTTP session, made on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshgate.sidecar.authorizers import JwksCache, RequestAuthorizer
from meshgate.sidecar.cache import ResponseCache
from meshgate.sidecar.throttle import Limiter, QuotaStore

if TYPE_CHECKING:
    import aiohttp


@dataclass
class Runtime:
    """Long-lived request-phase state, shared by every snapshot this sidecar applies."""

    state_dir: Path | None = None
    cache_key: bytes | None = None
    limiter: Limiter = field(default_factory=Limiter)
    quotas: QuotaStore = field(default_factory=lambda: QuotaStore(None))
    jwks: dict[str, JwksCache] = field(default_factory=dict)
    authorizers: dict[tuple[Any, ...], RequestAuthorizer] = field(default_factory=dict)
    caches: dict[tuple[str, str], tuple[tuple[Any, ...], ResponseCache]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        if self.state_dir is not None:
            self.quotas = QuotaStore(self.state_dir / "quotas.json")

    def session(self) -> aiohttp.ClientSession:
        """The outbound HTTP client (authorizers, JWKS, functions, WebSocket APIs): aiohttp loads
        here, on the first call that needs it, not with the sidecar."""
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30), raise_for_status=False
            )
        return self._session

    def jwks_cache(self, uri: str) -> JwksCache:
        cache = self.jwks.get(uri)
        if cache is None:
            cache = self.jwks[uri] = JwksCache(uri, self.session)
        return cache

    def request_authorizer(self, key: tuple[Any, ...], make: Any) -> RequestAuthorizer:
        """Same config -> same object, so the result cache survives new snapshots."""
        auth = self.authorizers.get(key)
        if auth is None:
            auth = self.authorizers[key] = make()
        return auth

    def stage_cache(
        self, stage_key: tuple[str, str], config: tuple[Any, ...], capacity: int, ttl: float, encrypted: bool
    ) -> ResponseCache:
        entry = self.caches.get(stage_key)
        if entry is not None and entry[0] == config:
            return entry[1]
        cache = ResponseCache(capacity, ttl, self.cache_key if encrypted else None)
        self.caches[stage_key] = (config, cache)
        return cache

    async def close(self) -> None:
        self.quotas.save()
        if self._session is not None:
            await self._session.close()
