"""Per-Api response policy: CORS (preflight and response headers) and gateway-response overrides.

Compiled once per deployment; the listener asks it for the CORS headers of a
request and for the rendering of each gateway error.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field

from meshgate.sidecar.errors import STATUS_LINES, TABLE, phrase
from meshgate.v1 import resources_pb2

DEFAULT_TYPES = {
    400: "BAD_REQUEST_PARAMETERS",
    401: "UNAUTHORIZED",
    403: "ACCESS_DENIED",
    404: "RESOURCE_NOT_FOUND",
    405: "RESOURCE_NOT_FOUND",
    408: "DEFAULT_4XX",
    413: "REQUEST_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "THROTTLED",
    431: "DEFAULT_4XX",
    500: "API_CONFIGURATION_ERROR",
    502: "INTEGRATION_FAILURE",
    503: "INTEGRATION_FAILURE",
    504: "INTEGRATION_TIMEOUT",
}
KNOWN_TYPES = frozenset(
    {
        "DEFAULT_4XX",
        "DEFAULT_5XX",
        "BAD_REQUEST_PARAMETERS",
        "BAD_REQUEST_BODY",
        "UNSUPPORTED_MEDIA_TYPE",
        "UNAUTHORIZED",
        "ACCESS_DENIED",
        "INVALID_API_KEY",
        "MISSING_AUTHENTICATION_TOKEN",
        "RESOURCE_NOT_FOUND",
        "REQUEST_TOO_LARGE",
        "THROTTLED",
        "QUOTA_EXCEEDED",
        "AUTHORIZER_FAILURE",
        "AUTHORIZER_CONFIGURATION_ERROR",
        "INTEGRATION_FAILURE",
        "INTEGRATION_TIMEOUT",
        "API_CONFIGURATION_ERROR",
    }
)


def default_type(status: int) -> str:
    return DEFAULT_TYPES.get(status) or ("DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX")


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

    def preflight(self, origin: str, request_id: str, requested_headers: str) -> bytes:
        value = self.allow_origin(origin)
        if value is None:
            body = json.dumps(
                {
                    "message": "Forbidden",
                    "reason": f"CORS: origin {origin!r} is not allowed",
                    "requestId": request_id,
                }
            ).encode()
            return (
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"x-meshgate-request-id: %s\r\nvary: Origin\r\n\r\n%b"
                % (len(body), request_id.encode(), body)
            )
        allow_headers = self.headers or requested_headers.encode("latin-1", "replace")
        out = [
            b"HTTP/1.1 204 No Content\r\naccess-control-allow-origin: ",
            value,
            b"\r\naccess-control-allow-methods: ",
            self.methods,
            b"\r\nvary: Origin\r\nx-meshgate-request-id: ",
            request_id.encode(),
            b"\r\n",
        ]
        if allow_headers:
            out += (b"access-control-allow-headers: ", allow_headers, b"\r\n")
        if self.credentials:
            out.append(b"access-control-allow-credentials: true\r\n")
        if self.max_age:
            out.append(b"access-control-max-age: %d\r\n" % self.max_age)
        out.append(b"\r\n")
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

    def render_error(
        self,
        status: int,
        reason: str,
        request_id: str,
        *,
        gw_type: str = "",
        close: bool = False,
        extra: bytes = b"",
        context: dict[str, str] | None = None,
        details: tuple[dict[str, str], ...] = (),
    ) -> bytes | None:
        """The overridden error response, or None to use the default rendering."""
        kind = gw_type or default_type(status)
        over = self.overrides.get(kind) or self.overrides.get(
            "DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX"
        )
        if over is None:
            return None
        final = over.status or status
        message = TABLE.get(status, (2, "Error", "Error"))[2]
        values = {
            "$context.requestId": request_id,
            "$context.error.messageString": json.dumps(message),
            "$context.error.message": message,
            "$context.error.reasonString": json.dumps(reason),
            "$context.error.validationErrorString": json.dumps(list(details)),
            "$context.error.reason": reason,
            "$context.error.responseType": kind,
            **(context or {}),
        }
        body = over.template
        for key in sorted(values, key=len, reverse=True):
            body = body.replace(key, values[key])
        data = body.encode()
        head = [STATUS_LINES.get(final) or b"HTTP/1.1 %d %s\r\n" % (final, phrase(final))]
        names = {n for n, _ in over.headers}
        if b"content-type" not in names:
            head.append(b"content-type: application/json\r\n")
        for n, v in over.headers:
            head += (n, b": ", v, b"\r\n")
        head.append(b"content-length: %d\r\nx-meshgate-request-id: %s\r\n" % (len(data), request_id.encode()))
        head.append(b"x-meshgate-error-type: %s\r\n" % kind.encode())
        head.append(extra)
        if close:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        return b"".join(head) + data


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
