"""The one error table: HTTP status -> gRPC status, error type, gateway-response type, default message.

Every refusal the gateway makes is a `GatewayError` value; `respond.py` renders
it for HTTP/1.1 and `grpc_relay.py` for gRPC, both from this table. The reverse
mapping (an upstream's gRPC status -> HTTP status, as grpc-gateway and Envoy's
transcoder map it) lives here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from http import HTTPStatus

Headers = tuple[tuple[bytes, bytes], ...]


class GrpcCode(IntEnum):
    """gRPC status codes (the wire values of `grpc-status`), here so that the sidecar answers and relays
    gRPC without loading grpcio."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One row of the table."""

    status: int
    grpc: GrpcCode
    error_type: str  # x-meshgate-error-type
    gateway_type: str  # the API Gateway gateway-response type it maps to by default
    message: str  # the client-facing message (API Gateway's)


_ROWS = (
    ErrorKind(400, GrpcCode.INVALID_ARGUMENT, "BadRequest", "BAD_REQUEST_PARAMETERS", "Bad request"),
    ErrorKind(401, GrpcCode.UNAUTHENTICATED, "Unauthorized", "UNAUTHORIZED", "Unauthorized"),
    ErrorKind(403, GrpcCode.PERMISSION_DENIED, "Forbidden", "ACCESS_DENIED", "Forbidden"),
    ErrorKind(404, GrpcCode.NOT_FOUND, "NotFound", "RESOURCE_NOT_FOUND", "Not found"),
    ErrorKind(405, GrpcCode.UNIMPLEMENTED, "MethodNotAllowed", "RESOURCE_NOT_FOUND", "Method not allowed"),
    ErrorKind(408, GrpcCode.DEADLINE_EXCEEDED, "RequestTimeout", "DEFAULT_4XX", "Request timeout"),
    ErrorKind(413, GrpcCode.RESOURCE_EXHAUSTED, "PayloadTooLarge", "REQUEST_TOO_LARGE", "Request too long"),
    ErrorKind(414, GrpcCode.RESOURCE_EXHAUSTED, "UriTooLong", "DEFAULT_4XX", "Request-URI too long"),
    ErrorKind(
        415,
        GrpcCode.INVALID_ARGUMENT,
        "UnsupportedMediaType",
        "UNSUPPORTED_MEDIA_TYPE",
        "Unsupported media type",
    ),
    ErrorKind(426, GrpcCode.FAILED_PRECONDITION, "UpgradeRequired", "DEFAULT_4XX", "Upgrade required"),
    ErrorKind(429, GrpcCode.RESOURCE_EXHAUSTED, "TooManyRequests", "THROTTLED", "Too many requests"),
    ErrorKind(
        431,
        GrpcCode.RESOURCE_EXHAUSTED,
        "RequestHeaderFieldsTooLarge",
        "DEFAULT_4XX",
        "Request header fields too large",
    ),
    ErrorKind(
        500,
        GrpcCode.INTERNAL,
        "InternalServerError",
        "API_CONFIGURATION_ERROR",
        "Internal server error",
    ),
    ErrorKind(502, GrpcCode.UNAVAILABLE, "BadGateway", "INTEGRATION_FAILURE", "Bad gateway"),
    ErrorKind(503, GrpcCode.UNAVAILABLE, "ServiceUnavailable", "INTEGRATION_FAILURE", "Service unavailable"),
    ErrorKind(
        504,
        GrpcCode.DEADLINE_EXCEEDED,
        "GatewayTimeout",
        "INTEGRATION_TIMEOUT",
        "Endpoint request timed out",
    ),
)
TABLE: Mapping[int, ErrorKind] = {row.status: row for row in _ROWS}
GRPC_CODE: Mapping[int, int] = {row.status: int(row.grpc) for row in _ROWS}

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
HTTP_FOR_GRPC: Mapping[int, int] = {
    GrpcCode.OK: 200,
    GrpcCode.CANCELLED: 499,
    GrpcCode.UNKNOWN: 500,
    GrpcCode.INVALID_ARGUMENT: 400,
    GrpcCode.DEADLINE_EXCEEDED: 504,
    GrpcCode.NOT_FOUND: 404,
    GrpcCode.ALREADY_EXISTS: 409,
    GrpcCode.PERMISSION_DENIED: 403,
    GrpcCode.UNAUTHENTICATED: 401,
    GrpcCode.RESOURCE_EXHAUSTED: 429,
    GrpcCode.FAILED_PRECONDITION: 400,
    GrpcCode.ABORTED: 409,
    GrpcCode.OUT_OF_RANGE: 400,
    GrpcCode.UNIMPLEMENTED: 501,
    GrpcCode.INTERNAL: 500,
    GrpcCode.UNAVAILABLE: 503,
    GrpcCode.DATA_LOSS: 500,
}

_UNKNOWN = ErrorKind(0, GrpcCode.UNKNOWN, "Error", "DEFAULT_4XX", "Error")


def kind_of(status: int) -> ErrorKind:
    """The table row of a status (an unlisted one gets a generic row of its class)."""
    row = TABLE.get(status)
    if row is not None:
        return row
    if status >= 500:
        return ErrorKind(status, GrpcCode.UNKNOWN, "Error", "DEFAULT_5XX", "Error")
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
    def grpc_code(self) -> GrpcCode:
        return kind_of(self.status).grpc


def internal(reason: str = "internal error") -> GatewayError:
    return GatewayError(500, reason)
