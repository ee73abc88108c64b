"""The one error table: HTTP status -> gRPC status, error type, gateway-response type, default message.

Every refusal the gateway makes is a `GatewayError` value; `respond.py` renders
it for HTTP/1.1 and `grpc_relay.py` for gRPC, both from this table. The reverse
mapping (an upstream's gRPC status -> HTTP status, as grpc-gateway and Envoy's
transcoder map it) lives here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

import grpc

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One row of the table."""

    status: int
    grpc: grpc.StatusCode
    error_type: str  # x-meshgate-error-type
    gateway_type: str  # the API Gateway gateway-response type it maps to by default
    message: str  # the client-facing message (API Gateway's)


_ROWS = (
    ErrorKind(400, grpc.StatusCode.INVALID_ARGUMENT, "BadRequest", "BAD_REQUEST_PARAMETERS", "Bad request"),
    ErrorKind(401, grpc.StatusCode.UNAUTHENTICATED, "Unauthorized", "UNAUTHORIZED", "Unauthorized"),
    ErrorKind(403, grpc.StatusCode.PERMISSION_DENIED, "Forbidden", "ACCESS_DENIED", "Forbidden"),
    ErrorKind(404, grpc.StatusCode.NOT_FOUND, "NotFound", "RESOURCE_NOT_FOUND", "Not found"),
    ErrorKind(
        405, grpc.StatusCode.UNIMPLEMENTED, "MethodNotAllowed", "RESOURCE_NOT_FOUND", "Method not allowed"
    ),
    ErrorKind(408, grpc.StatusCode.DEADLINE_EXCEEDED, "RequestTimeout", "DEFAULT_4XX", "Request timeout"),
    ErrorKind(
        413, grpc.StatusCode.RESOURCE_EXHAUSTED, "PayloadTooLarge", "REQUEST_TOO_LARGE", "Request too long"
    ),
    ErrorKind(414, grpc.StatusCode.RESOURCE_EXHAUSTED, "UriTooLong", "DEFAULT_4XX", "Request-URI too long"),
    ErrorKind(
        415,
        grpc.StatusCode.INVALID_ARGUMENT,
        "UnsupportedMediaType",
        "UNSUPPORTED_MEDIA_TYPE",
        "Unsupported media type",
    ),
    ErrorKind(426, grpc.StatusCode.FAILED_PRECONDITION, "UpgradeRequired", "DEFAULT_4XX", "Upgrade required"),
    ErrorKind(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "TooManyRequests", "THROTTLED", "Too many requests"),
    ErrorKind(
        431,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RequestHeaderFieldsTooLarge",
        "DEFAULT_4XX",
        "Request header fields too large",
    ),
    ErrorKind(
        500,
        grpc.StatusCode.INTERNAL,
        "InternalServerError",
        "API_CONFIGURATION_ERROR",
        "Internal server error",
    ),
    ErrorKind(502, grpc.StatusCode.UNAVAILABLE, "BadGateway", "INTEGRATION_FAILURE", "Bad gateway"),
    ErrorKind(
        503, grpc.StatusCode.UNAVAILABLE, "ServiceUnavailable", "INTEGRATION_FAILURE", "Service unavailable"
    ),
    ErrorKind(
        504,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "GatewayTimeout",
        "INTEGRATION_TIMEOUT",
        "Endpoint request timed out",
    ),
)
TABLE: Mapping[int, ErrorKind] = {row.status: row for row in _ROWS}
GRPC_CODE: Mapping[int, int] = {row.status: row.grpc.value[0] for row in _ROWS}

# Every gateway-response type a user may override (Api.gatewayResponses[].type).
GATEWAY_TYPES = frozenset(
    {row.gateway_type for row in _ROWS}
    | {
        "DEFAULT_5XX",
        "BAD_REQUEST_BODY",
        "INVALID_API_KEY",
        "MISSING_AUTHENTICATION_TOKEN",
        "QUOTA_EXCEEDED",
        "AUTHORIZER_FAILURE",
        "AUTHORIZER_CONFIGURATION_ERROR",
    }
)

# Gateway-response types whose client-facing message is not their status's (API Gateway's wording).
GATEWAY_MESSAGES: Mapping[str, str] = {
    "API_CONFIGURATION_ERROR": "Internal server error",
    "BAD_REQUEST_BODY": "Invalid request body",
}

# An upstream gRPC status -> the HTTP status of a transcoded response (and of a gRPC call's metrics).
HTTP_FOR_GRPC: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_UNKNOWN = ErrorKind(0, grpc.StatusCode.UNKNOWN, "Error", "DEFAULT_4XX", "Error")


def kind_of(status: int) -> ErrorKind:
    """The table row of a status (an unlisted one gets a generic row of its class)."""
    row = TABLE.get(status)
    if row is not None:
        return row
    if status >= 500:
        return ErrorKind(status, grpc.StatusCode.UNKNOWN, "Error", "DEFAULT_5XX", "Error")
    return _UNKNOWN


def phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


STATUS_LINES: dict[int, bytes] = {s: b"HTTP/1.1 %d %s\r\n" % (s, phrase(s)) for s in range(100, 600)}


@dataclass(frozen=True, slots=True)
class GatewayError:
    """A refusal or failure of the gateway, as a value: status, the reason (logs, spans, the
    `reason` field), and what the response needs besides the table's defaults."""

    status: int
    reason: str
    gateway_type: str = ""  # overrides the table's type (e.g. INVALID_API_KEY for a 403)
    headers: Headers = ()  # extra response headers (Retry-After, Allow, WWW-Authenticate, ...)
    details: tuple[dict[str, str], ...] = ()  # validation failures, listed in the body
    close: bool = False  # the connection cannot be reused after this answer

    @property
    def kind(self) -> ErrorKind:
        return kind_of(self.status)

    @property
    def message(self) -> str:
        """What the client is told: the gateway type's message where it has its own, else the status's."""
        return GATEWAY_MESSAGES.get(self.response_type) or kind_of(self.status).message

    @property
    def response_type(self) -> str:
        return self.gateway_type or kind_of(self.status).gateway_type

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return kind_of(self.status).grpc


def internal(reason: str = "internal error") -> GatewayError:
    return GatewayError(500, reason)
