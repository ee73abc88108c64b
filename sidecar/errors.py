"""The one error table (HTTP status, gRPC code, error type, default message) and its HTTP rendering."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus

# status -> (gRPC status code number, error type, default message)
TABLE: dict[int, tuple[int, str, str]] = {
    400: (3, "BadRequest", "Bad request"),
    415: (3, "UnsupportedMediaType", "Unsupported media type"),
    426: (9, "UpgradeRequired", "Upgrade required"),
    401: (16, "Unauthorized", "Unauthorized"),
    403: (7, "Forbidden", "Forbidden"),
    404: (5, "NotFound", "Not found"),
    405: (12, "MethodNotAllowed", "Method not allowed"),
    408: (4, "RequestTimeout", "Request timeout"),
    413: (8, "PayloadTooLarge", "Request too long"),
    429: (8, "TooManyRequests", "Too many requests"),
    431: (8, "RequestHeaderFieldsTooLarge", "Request header fields too large"),
    500: (13, "InternalServerError", "Internal server error"),
    502: (14, "BadGateway", "Bad gateway"),
    503: (14, "ServiceUnavailable", "Service unavailable"),
    504: (4, "GatewayTimeout", "Endpoint request timed out"),
}
GRPC_CODE: dict[int, int] = {status: row[0] for status, row in TABLE.items()}


def phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


STATUS_LINES: dict[int, bytes] = {s: b"HTTP/1.1 %d %s\r\n" % (s, phrase(s)) for s in range(100, 600)}


def error_body(
    status: int, reason: str, request_id: str, message: str | None = None, details: Sequence[object] = ()
) -> bytes:
    default = TABLE.get(status, (2, "Error", "Error"))[2]
    doc: dict[str, object] = {"message": message or default, "reason": reason, "requestId": request_id}
    if details:
        doc["errors"] = list(details)
    return json.dumps(doc).encode()


def render_http_error(
    status: int,
    reason: str,
    request_id: str,
    *,
    message: str | None = None,
    close: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    details: Sequence[object] = (),
) -> bytes:
    """A complete HTTP/1.1 error response with the JSON body `{message, reason, requestId[, errors]}`."""
    body = error_body(status, reason, request_id, message, details)
    head = [
        STATUS_LINES.get(status) or b"HTTP/1.1 %d Error\r\n" % status,
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        b"x-meshgate-request-id: %s\r\n" % request_id.encode(),
        b"x-meshgate-error-type: %s\r\n" % TABLE.get(status, (2, "Error", ""))[1].encode(),
    ]
    for name, value in extra_headers:
        head.append(name + b": " + value + b"\r\n")
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body
