"""Filter: the route's authorizer (JWT, or a request/token authorizer service); allow sets the
principal, the values `context.authorizer.*` reads and the headers passed to the integration."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshgate.sidecar.authorizers import AuthResult, JwtAuthorizer, RequestAuthorizer
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.filters import Pending

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.filters import Decision

_FAILURE_TYPES = {500: "AUTHORIZER_CONFIGURATION_ERROR", 502: "AUTHORIZER_FAILURE"}


@dataclass(frozen=True, slots=True)
class AuthorizerFilter:
    name = "authorizer"
    needs_body = False

    authorizer: JwtAuthorizer | RequestAuthorizer
    scopes: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "jwt" if isinstance(self.authorizer, JwtAuthorizer) else self.authorizer.kind

    def request(self, ctx: RequestContext) -> Decision:
        t0 = time.monotonic()
        span = None
        trace = ctx.trace
        authorizer = self.authorizer
        if trace is not None:
            kind = self.kind
            span = trace.start_sub(
                "authorizer", {"meshgate.authorizer.name": authorizer.name, "meshgate.authorizer.type": kind}
            )
            if kind != "jwt":
                ctx.trace_headers = trace.carrier(span)  # the authorizer service joins the trace
        if isinstance(authorizer, JwtAuthorizer):
            res = authorizer.authorize(ctx.headers, self.scopes)
        else:
            res = authorizer.authorize(ctx)
        if isinstance(res, AuthResult):
            return self._decided(ctx, res, t0, span, True)
        return Pending(self._wait(ctx, res, t0, span))

    async def _wait(
        self, ctx: RequestContext, pending: Awaitable[AuthResult], t0: float, span: Any
    ) -> Decision:
        return self._decided(ctx, await pending, t0, span, False)

    def _decided(self, ctx: RequestContext, auth: AuthResult, t0: float, span: Any, cached: bool) -> Decision:
        ctx.authorizer_s = time.monotonic() - t0
        if span is not None and ctx.trace is not None:
            # cached: answered without a call (a cached result, known JWKS keys, or a missing identity)
            attrs: dict[str, Any] = {
                "meshgate.authorizer.cached": cached,
                "meshgate.authorizer.status": auth.status,
            }
            if auth.principal:
                attrs["enduser.id"] = auth.principal
            ctx.trace.end_sub(span, auth.reason if auth.status else "", attrs)
        if auth.status:
            return GatewayError(
                auth.status,
                auth.reason,
                gateway_type=_FAILURE_TYPES.get(auth.status, ""),
                headers=auth.response_headers,
            )
        ctx.authorized = True
        ctx.principal = auth.principal
        ctx.auth_values = auth.values
        if auth.headers:
            ctx.upstream_headers = ctx.upstream_headers + auth.headers
        return None
