"""Filter: CORS. Answers preflights without calling the integration and picks the CORS response
headers for the request's origin (added by `respond` to every response, gateway errors included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.filters import Answer
from meshgate.sidecar.responses import CorsPolicy

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision


@dataclass(frozen=True, slots=True)
class CorsFilter:
    name = "cors"
    needs_body = False

    policy: CorsPolicy
    preflight_ok: bool = True  # False where the path has no route at all (a 404 answers instead)

    def request(self, ctx: RequestContext) -> Decision:
        origin = ctx.headers.get("origin")
        if not origin:
            return None
        if self.preflight_ok and ctx.method == "OPTIONS" and "access-control-request-method" in ctx.headers:
            return self.preflight(origin, ctx.headers.get("access-control-request-headers", ""))
        ctx.cors_headers = self.policy.response_headers(origin)
        return None

    def preflight(self, origin: str, requested_headers: str) -> Decision:
        p = self.policy
        value = p.allow_origin(origin)
        if value is None:
            return GatewayError(
                403, f"CORS: origin {origin!r} is not allowed", headers=((b"vary", b"Origin"),)
            )
        headers = [(b"access-control-allow-origin", value), (b"access-control-allow-methods", p.methods)]
        headers.append((b"vary", b"Origin"))
        allow_headers = p.headers or requested_headers.encode("latin-1", "replace")
        if allow_headers:
            headers.append((b"access-control-allow-headers", allow_headers))
        if p.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if p.max_age:
            headers.append((b"access-control-max-age", b"%d" % p.max_age))
        return Answer(204, tuple(headers), b"", cors=False)
