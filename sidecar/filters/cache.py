"""Filter: the stage response cache. The request side looks up (keyed by method, Api, stage,
stage-relative path, the route's cache key parameters and, on an authorized route, the caller) and honours `Cache-Control: max-age=0`
per the stage's invalidation setting; the response side (`Capture`) stores a cacheable response
as it streams to the client."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshgate.sidecar.cache import CachedResponse, ResponseCache
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.filters import Answer

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision


@dataclass(frozen=True, slots=True)
class CacheFilter:
    name = "cache"
    needs_body = False

    cache: ResponseCache
    api: str
    stage: str
    methods: frozenset[str] = frozenset({"GET"})
    params: tuple[tuple[str, str], ...] = ()  # (query|header, name) in the key
    invalidation: str = "require_authorization"  # | "fail" | "ignore"
    per_caller: bool = False  # an authorized route: the principal / API key joins the key (RFC 9111 §3.5)

    def key(self, ctx: RequestContext) -> bytes:
        parts = [ctx.method, self.api, self.stage, ctx.stage_path]
        if self.per_caller:
            parts.append(f"p:{ctx.principal}")
            if ctx.usage_key is not None:
                parts.append(f"k:{ctx.usage_key.name}")
        for kind, name in self.params:
            if kind == "query":
                parts.append(f"q:{name}={ctx.query_params().get(name, '')}")
            else:
                parts.append(f"h:{name}={ctx.headers.get(name, '')}")
        return "\n".join(parts).encode("utf-8", "replace")

    def request(self, ctx: RequestContext) -> Decision:
        if ctx.method not in self.methods:
            return None
        ckey = self.key(ctx)
        if (
            "max-age=0" in ctx.headers.get("cache-control", "").replace(" ", "")
            and self.invalidation != "ignore"
        ):
            if ctx.authorized:
                self.cache.invalidate(ckey)
                if ctx.trace is not None:
                    ctx.trace.end_sub(ctx.trace.start_sub("cache", self._attrs(ctx, "invalidated")))
                return self._miss(ctx, ckey, b"invalidated")
            if self.invalidation == "fail":
                return GatewayError(403, "cache invalidation needs an authorized request")
            hit = self._lookup(ctx, ckey)
            if hit is not None:
                ctx.cache_header = b"ignored-invalidation"
                return _answer(hit)
            return self._miss(ctx, ckey, b"ignored-invalidation")
        hit = self._lookup(ctx, ckey)
        if hit is not None:
            ctx.cache_header = b"hit"
            return _answer(hit)
        return self._miss(ctx, ckey, b"miss")

    def _miss(self, ctx: RequestContext, ckey: bytes, header: bytes) -> Decision:
        ctx.cache = self.cache
        ctx.cache_key = ckey
        ctx.cache_header = header
        return None

    def _lookup(self, ctx: RequestContext, ckey: bytes) -> CachedResponse | None:
        if ctx.trace is None:
            return _same_variant(ctx, self.cache.get(ckey))
        span = ctx.trace.start_sub("cache", self._attrs(ctx, ""))
        hit = _same_variant(ctx, self.cache.get(ckey))
        ctx.trace.end_sub(span, attrs={"meshgate.cache.result": "miss" if hit is None else "hit"})
        return hit

    def _attrs(self, ctx: RequestContext, result: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "meshgate.cache.encrypted": self.cache.encrypted,
            "meshgate.cache.ttl_s": self.cache.ttl_s,
            "meshgate.cache.entries": len(self.cache),
        }
        if result:
            attrs["meshgate.cache.result"] = result
        return attrs


def _answer(hit: CachedResponse) -> Answer:
    return Answer(hit.status, hit.headers, hit.body)


def _same_variant(ctx: RequestContext, hit: CachedResponse | None) -> CachedResponse | None:
    """The entry, if this request has the values of its Vary headers that the stored one had (one
    variant per key: a request for another variant misses and its response replaces the entry)."""
    if hit is None or not hit.varied:
        return hit
    headers = ctx.headers
    return hit if all(headers.get(name, "") == value for name, value in hit.varied) else None


_UNSHARED = re.compile(rb"\b(private|no-store|no-cache)\b")
# Request headers that change what a backend answers but are not in the cache key: on a cached route
# the client's are never forwarded (a cached answer would carry whatever one client sent).
UNKEYED_REQUEST_HEADERS = frozenset(
    {
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"forwarded",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-host",
    }
)


class Capture:
    """A response being copied into the stage cache as it streams to the client (response side)."""

    __slots__ = ("body", "cache", "headers", "key", "size", "status", "varied")

    def __init__(self, cache: ResponseCache, key: bytes) -> None:
        self.cache = cache
        self.key = key
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.body: list[bytes] = []
        self.size = 0
        self.varied: tuple[tuple[str, str], ...] = ()

    @classmethod
    def begin(
        cls, ctx: RequestContext, status: int, headers: Sequence[tuple[bytes, bytes]], is_head: bool
    ) -> Capture | None:
        """A capture when a shared cache may store the response (RFC 9111 §3): a 200, not to HEAD,
        without Set-Cookie, `Cache-Control: private | no-store | no-cache` or `Vary: *`; a `Vary`
        list is kept with this request's values of those headers."""
        if ctx.cache is None or ctx.cache_key is None or status != 200 or is_head:
            return None
        vary: list[str] = []
        for n, v in headers:
            low = n.lower()
            if low == b"set-cookie":
                return None
            if low == b"vary":
                names = [x.strip().lower() for x in v.decode("latin-1").split(",") if x.strip()]
                if "*" in names:
                    return None
                vary += names
            if low == b"cache-control" and _UNSHARED.search(v.lower()) is not None:
                return None
        cap = cls(ctx.cache, ctx.cache_key)
        cap.status = status
        cap.headers = tuple(headers)
        if vary:
            req = ctx.headers
            cap.varied = tuple((name, req.get(name, "")) for name in dict.fromkeys(vary))
        return cap

    def add(self, chunk: bytes) -> bool:
        self.size += len(chunk)
        if self.size > self.cache.capacity:
            return False
        self.body.append(chunk)
        return True

    def store(self) -> None:
        if self.status:
            body = b"".join(self.body)
            self.cache.put(self.key, CachedResponse(self.status, self.headers, body, self.varied))
