"""Respond: the only code that writes a response head the gateway sends on HTTP/1.1.

Errors (the table's defaults or the Api's gateway responses), mocks, cached,
function, transcoded and templated responses, proxied heads, CORS preflights,
@connections answers and the WebSocket 101 all come out of here, so every
header the gateway writes passes one place.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Sequence

from meshgate.sidecar.errors import STATUS_LINES, GatewayError, kind_of, phrase
from meshgate.sidecar.responses import ApiResponses

Headers = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# Response headers the gateway sets itself: never copied from an integration.
RESPONSE_OWN = HOP_BY_HOP | {b"content-length", b"x-meshgate-request-id"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PHRASES = {status: phrase(status) for status in range(100, 600)}
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def status_line(status: int, reason: bytes = b"") -> bytes:
    if reason and reason != _PHRASES.get(status):
        return b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, phrase(status))


# RFC 9110 §5.5 / §5.6.2: a field name is a token; a value never holds CR, LF or NUL (one C-level
# scan each). Every header the gateway makes or relays from a source that is not llhttp-parsed
# (mappings, authorizer context, claims, function and mock responses, templates) passes here.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BREAKS = re.compile(rb"[\r\n\x00]")


class InvalidHeader(ValueError):
    """A header that would split or corrupt the message it is written into."""


def check_headers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Raise InvalidHeader for the first header with a bad name or a value holding CR, LF or NUL."""
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise InvalidHeader(f"header name {name[:60]!r} is not a token")
        if _BREAKS.search(value) is not None:
            raise InvalidHeader(f"header {name[:60].decode('latin-1')} holds CR, LF or NUL")


def h2_field_error(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """What makes an HTTP/2 field list malformed (RFC 9113 §8.2.1), or None: the checks above, and
    names in lower case; pseudo-header values (`:path`, `:authority`) hold no CR, LF or NUL either."""
    for name, value in headers:
        if _BREAKS.search(value) is not None:
            return f"field {name[:60].decode('latin-1')!r} holds CR, LF or NUL"
        if name[:1] != b":" and (_TOKEN.fullmatch(name) is None or name.lower() != name):
            return f"field name {name[:60]!r} is not a lower-case token"
    return None


def refuse_request_headers(headers: Iterable[tuple[bytes, bytes]]) -> GatewayError | None:
    """The 400 for headers the gateway would add to an integration request but must not write."""
    try:
        check_headers(headers)
    except InvalidHeader as exc:
        return GatewayError(400, f"invalid integration request: {exc}", "BAD_REQUEST_PARAMETERS")
    return None


def _lines(headers: Iterable[tuple[bytes, bytes]], out: list[bytes]) -> None:
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None or _BREAKS.search(value) is not None:
            check_headers(((name, value),))  # raises, saying which
        out += (name, b": ", value, b"\r\n")


def bodiless(status: int, is_head: bool = False) -> bool:
    """A response that carries no body (and, but for HEAD, no Content-Length): 1xx, 204, 304."""
    return is_head or status in (204, 304) or 100 <= status < 200


def route_headers(deployment_id: int, canary: bool) -> bytes:
    """The gateway's own response headers that are the same for every request of a route (built
    once per snapshot)."""
    out = b"x-meshgate-deployment: %d\r\n" % deployment_id if deployment_id else b""
    return out + b"x-meshgate-canary: 1\r\n" if canary else out


def tail(
    request_id: str,
    route_headers: bytes = b"",
    cache_header: bytes = b"",
    cors: bytes = b"",
    close: bool = False,
    http10_keep_alive: bool = False,
) -> bytes:
    """The gateway's own response headers for one request, and the blank line that ends the head."""
    out = b"x-meshgate-request-id: " + request_id.encode() + b"\r\n" + route_headers
    if cache_header:
        out += b"x-meshgate-cache: %s\r\n" % cache_header
    if cors:
        out += cors
    if close:
        out += b"connection: close\r\n"
    elif http10_keep_alive:  # an HTTP/1.0 client keeps the connection only when told so
        out += b"connection: keep-alive\r\n"
    return out + b"\r\n"


def full(
    status: int, headers: Headers, body: bytes, tail: bytes, *, reason: bytes = b"", is_head: bool = False
) -> bytes:
    """A complete response made by the gateway (mock, cache, function, transcoded, templated, preflight)."""
    head = [status_line(status, reason)]
    _lines(((n, v) for n, v in headers if n.lower() not in RESPONSE_OWN), head)
    no_body = bodiless(status)
    if not no_body:
        head.append(b"content-length: %d\r\n" % len(body))  # a HEAD answer announces the GET's length
    head.append(tail)
    if not (no_body or is_head):
        head.append(body)
    return b"".join(head)


# A proxied response's head for the client: (status line and headers without the gateway's tail,
# the headers kept when asked for (a cached copy stores these), re-chunked to the client?,
# close-delimited (an HTTP/1.0 client and no length)?)
ProxiedHead = tuple[bytes, list[tuple[bytes, bytes]], bool, bool]


def proxied(
    status: int, reason: bytes, headers: Headers, *, is_head: bool, http10: bool, keep: bool = False
) -> ProxiedHead | GatewayError:
    """The client's head for a proxied response: hop-by-hop headers (and those `Connection` names)
    dropped, framing decided here. One pass over the headers: this runs for every proxied response."""
    length = -1
    named: list[bytes] | None = None
    kept: list[tuple[bytes, bytes]] = []
    out = [status_line(status, reason)]
    for name, value in headers:
        low = name.lower()
        if low in RESPONSE_OWN:
            if low == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return GatewayError(502, "invalid upstream response: bad content-length")
            elif low == b"connection" and value.lower() not in (b"keep-alive", b"close"):
                tokens = [t.strip().lower() for t in value.split(b",")]
                named = (named or []) + [t for t in tokens if t not in (b"keep-alive", b"close")]
            continue
        if keep:
            kept.append((name, value))
        out += (name, b": ", value, b"\r\n")
    if named:  # headers listed in Connection are hop-by-hop too (rare): build again without them
        kept = [(n, v) for n, v in headers if n.lower() not in RESPONSE_OWN and n.lower() not in named]
        out = [out[0]]
        _lines(kept, out)
    chunked = close_delimited = False
    if length >= 0:
        out.append(b"content-length: %d\r\n" % length)
    elif bodiless(status, is_head):
        pass
    elif not http10:
        chunked = True
        out.append(b"transfer-encoding: chunked\r\n")
    else:
        close_delimited = True
    return b"".join(out), kept, chunked, close_delimited


def error_body(
    status: int, reason: str, request_id: str, message: str | None = None, details: Sequence[object] = ()
) -> bytes:
    """`{message[, reason], requestId[, errors]}`: an empty reason is left out."""
    doc: dict[str, object] = {"message": message or kind_of(status).message}
    if reason:
        doc["reason"] = reason
    doc["requestId"] = request_id
    if details:
        doc["errors"] = list(details)
    return json.dumps(doc).encode()


def error(
    err: GatewayError,
    request_id: str,
    *,
    responses: ApiResponses | None = None,
    cors: bytes = b"",
    close: bool = False,
    detail: bool = True,
) -> bytes:
    """A gateway error: the Api's gateway response when it overrides this type, else the table's
    JSON body `{message, reason, requestId[, errors]}`. Without `detail` (a caller outside the
    cluster networks) the reason is left out: API Gateway's message and the request id only."""
    reason = err.reason if detail else ""
    over = responses.override(err, request_id, reason) if responses is not None else None
    if over is not None:
        status, headers, body, kind = over
    else:
        status = err.status
        headers = ((b"content-type", b"application/json"),)
        body = error_body(err.status, reason, request_id, err.message, err.details)
        kind = err.kind.error_type
    head = [status_line(status)]
    _lines(headers, head)
    head.append(b"content-length: %d\r\nx-meshgate-request-id: %s\r\n" % (len(body), request_id.encode()))
    head.append(b"x-meshgate-error-type: %s\r\n" % kind.encode())
    _lines(err.headers, head)
    if cors:
        head.append(cors)
    if close or err.close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def render_http_error(
    status: int,
    reason: str,
    request_id: str,
    *,
    close: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    details: Sequence[dict[str, str]] = (),
    detail: bool = True,
) -> bytes:
    """A complete HTTP/1.1 error response with the table's default rendering."""
    return error(
        GatewayError(status, reason, headers=tuple(extra_headers), details=tuple(details)),
        request_id,
        close=close,
        detail=detail,
    )


def switching_protocols(
    key: bytes, subprotocol: str | None, request_id: str, connection_id: str = ""
) -> bytes:
    """The 101 that completes a client's WebSocket handshake."""
    accept = base64.b64encode(hashlib.sha1(key.strip() + _WS_GUID).digest())
    head = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"]
    headers = [(b"sec-websocket-accept", accept), (b"x-meshgate-request-id", request_id.encode())]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    if connection_id:
        headers.append((b"x-meshgate-connection-id", connection_id.encode()))
    _lines(headers, head)
    head.append(b"\r\n")
    return b"".join(head)
