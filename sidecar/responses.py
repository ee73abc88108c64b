"""Per-Api response policy: the CORS policy (run by the CORS filter) and gateway-response overrides
(how `respond` renders each gateway error for this Api). Compiled once per deployment."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field

from meshgate.sidecar.errors import GatewayError
from meshgate.v1 import resources_pb2


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: tuple[str, ...]
    methods: bytes
    headers: bytes
    expose: bytes
    credentials: bool
    max_age: int

    def allow_origin(self, origin: str) -> bytes | None:
        """The Access-Control-Allow-Origin value for this origin, or None when not allowed."""
        for pattern in self.origins:
            if pattern == "*":
                return origin.encode() if self.credentials else b"*"
            if pattern == origin or ("*" in pattern and fnmatch.fnmatchcase(origin, pattern)):
                return origin.encode()
        return None

    def response_headers(self, origin: str) -> bytes:
        """Headers added to an actual (non-preflight) response, errors included."""
        value = self.allow_origin(origin)
        if value is None:
            return b""
        out = [b"access-control-allow-origin: ", value, b"\r\nvary: Origin\r\n"]
        if self.credentials:
            out.append(b"access-control-allow-credentials: true\r\n")
        if self.expose:
            out += (b"access-control-expose-headers: ", self.expose, b"\r\n")
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class GatewayResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    template: str


@dataclass(frozen=True, slots=True)
class ApiResponses:
    cors: CorsPolicy | None = None
    overrides: dict[str, GatewayResponse] = field(default_factory=dict)

    def override(
        self, err: GatewayError, request_id: str, reason: str
    ) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes, str] | None:
        """The Api's gateway response for this error (status, headers, body, type), or None: the
        default. `reason` is the error's reason, or "" for a caller who may not see it."""
        kind = err.response_type
        over = self.overrides.get(kind) or self.overrides.get(
            "DEFAULT_5XX" if err.status >= 500 else "DEFAULT_4XX"
        )
        if over is None:
            return None
        message = err.message
        values = {
            "$context.requestId": request_id,
            "$context.error.messageString": json.dumps(message),
            "$context.error.message": message,
            "$context.error.reasonString": json.dumps(reason),
            "$context.error.validationErrorString": json.dumps(list(err.details)),
            "$context.error.reason": reason,
            "$context.error.responseType": kind,
        }
        body = over.template
        for key in sorted(values, key=len, reverse=True):
            body = body.replace(key, values[key])
        headers = over.headers
        if not any(n == b"content-type" for n, _ in headers):
            headers = ((b"content-type", b"application/json"), *headers)
        return over.status or err.status, headers, body.encode(), kind


def compile_responses(spec: resources_pb2.ApiSpec) -> ApiResponses | None:
    cors = None
    if spec.HasField("cors") and spec.cors.allow_origins:
        c = spec.cors
        methods = list(c.allow_methods) or sorted(
            {r.method.upper() for r in spec.routes if r.method.upper() != "ANY"} | {"OPTIONS"}
        )
        if any(r.method.upper() == "ANY" for r in spec.routes) and not c.allow_methods:
            methods = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"]
        cors = CorsPolicy(
            tuple(c.allow_origins),
            ", ".join(methods).encode(),
            ", ".join(c.allow_headers).encode(),
            ", ".join(c.expose_headers).encode(),
            c.allow_credentials,
            c.max_age_seconds,
        )
    overrides = {
        g.type: GatewayResponse(
            g.status,
            tuple(
                (k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
                for k, v in sorted(g.headers.items())
            ),
            g.body_template
            or '{"message": $context.error.messageString, "reason": $context.error.reasonString, '
            '"requestId": "$context.requestId"}',
        )
        for g in spec.gateway_responses
    }
    if cors is None and not overrides:
        return None
    return ApiResponses(cors, overrides)
