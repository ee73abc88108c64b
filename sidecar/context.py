"""The one typed request context every step reads: what the listener parsed, what routing matched,
and what the request filters decided (principal, headers for the integration, cache, CORS).

The HTTP/1.1 listener and the gRPC listener each fill one per request; filters,
integrations, templates, authorizer events, access logs and spans all read it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from meshgate.sidecar.jsoncodec import UNPARSED

if TYPE_CHECKING:
    from meshgate.sidecar.cache import ResponseCache
    from meshgate.sidecar.filters.api_key import KeyInfo
    from meshgate.sidecar.filters.cache import Capture
    from meshgate.sidecar.routing import Route
    from meshgate.sidecar.telemetry import RequestSpan

Headers = tuple[tuple[bytes, bytes], ...]
TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})  # the sidecar's own, when it traces
_NO_VALUES: Mapping[str, str] = MappingProxyType({})


class _RequestIds:
    def __init__(self) -> None:
        self.prefix = os.urandom(4).hex()
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:012x}"


REQUEST_IDS = _RequestIds()


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_path(path: str) -> str | None:
    """The one normalised form of a request path (RFC 3986 §6.2.2, §5.2.4), or None to refuse it (400).

    Percent-escapes of unreserved characters are decoded (`%7E` -> `~`, `%2e` -> `.`), others keep
    their encoding with upper-case hex (an encoded `/` stays `%2F`); an escaped control character
    (`%00`-`%1F`, `%7F`) is refused; `.` and `..` segments are removed, and a `..` that would climb
    above the first segment (the stage root, or the path's root on a host-mapped stage) is refused.
    A path with neither `%` nor `/.` is already normal: that check is all most requests pay.
    """
    if "%" not in path and "/." not in path:
        return path
    if "%" in path:
        parts = path.split("%")
        out = [parts[0]]
        for part in parts[1:]:
            hx = part[:2]
            if len(hx) < 2 or hx[0] not in _HEX or hx[1] not in _HEX:
                out.append("%" + part)  # not an escape: left as it is
                continue
            code = int(hx, 16)
            if code < 0x20 or code == 0x7F:
                return None
            ch = chr(code)
            out.append((ch if ch in _UNRESERVED else "%" + hx.upper()) + part[2:])
        path = "".join(out)
    segs = path.split("/")
    kept: list[str] = []
    for seg in segs[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if len(kept) <= 1:
                return None
            kept.pop()
            continue
        kept.append(seg)
    normal = "/" + "/".join(kept)
    return normal + "/" if segs[-1] in (".", "..") and not normal.endswith("/") else normal


class LazyHeaders(Mapping[str, str]):
    """Request headers as a lowercase-name mapping, built only if a step needs one."""

    __slots__ = ("_d", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._d: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        if self._d is None:
            self._d = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw}
        return self._d

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if self._d is not None:
            return self._d.get(key, default)
        want = key.encode("latin-1")
        for k, v in self._raw:  # a handful of headers: a scan beats building the dict
            if len(k) == len(want) and k.lower() == want:
                return v.decode("latin-1")
        return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


class RequestContext:
    """One request, in one shape, from the listener to the access log."""

    __slots__ = (
        "__dict__",
        "_query_params",
        "auth_values",
        "authorized",
        "authorizer_s",
        "body_chunks",
        "body_complete",
        "body_doc",
        "body_received",
        "cache",
        "cache_header",
        "cache_key",
        "canary",
        "capture",
        "chunked",
        "content_length",
        "content_type",
        "cors_headers",
        "host",
        "method",
        "params",
        "path",
        "port",
        "principal",
        "query",
        "raw_headers",
        "raw_tail",
        "request_id",
        "route",
        "source_ip",
        "stage_path",
        "target",
        "trace",
        "trace_headers",
        "upstream_headers",
        "usage_key",
    )

    def __init__(self, source_ip: str, request_id: str = "") -> None:
        self.source_ip = source_ip
        self.request_id = request_id or REQUEST_IDS.next()
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body_chunks: list[bytes] | None = []  # held until the integration takes the body
        self.params: dict[str, str] = {}
        self.method = "GET"
        self.target = b""  # the request target as received (path?query)
        self.path = ""  # the path part, as received
        self.query = ""
        self.host = ""
        self.port = 0  # the app port a redirected connection was going to (0: made to the sidecar)
        self.content_length = -1
        self.content_type = b""
        self.chunked = False
        self.body_complete = False
        self.body_received = 0
        self.body_doc: object = UNPARSED  # the JSON body once validation parsed it
        self.route: Route | None = None
        self.stage_path = ""  # the stage-relative request path (/pets/7), as the route matched it
        self.raw_tail = ""  # a greedy {proxy+} value still percent-encoded, when the path had escapes
        self.canary = False
        self.authorized = False  # an authorizer allowed the request
        self.authorizer_s = 0.0  # how long it took
        self.principal = ""
        self.auth_values: Mapping[str, str] = _NO_VALUES
        self.usage_key: KeyInfo | None = None  # the API key's usage plan
        self.upstream_headers: Headers = ()  # headers the filters add to the integration request
        self.cors_headers = b""  # CORS response headers for this request's origin
        self.cache: ResponseCache | None = None  # where the response goes once it is complete
        self.cache_key: bytes | None = None
        self.cache_header = b""
        self.capture: Capture | None = None  # the response being stored in the cache as it streams
        self.trace: RequestSpan | None = None
        self.trace_headers: Mapping[str, str] | None = None  # traceparent for an authorizer call
        self._query_params: dict[str, str] | None = None

    @functools.cached_property
    def headers(self) -> Mapping[str, str]:
        """The headers by lowercase name, made on first use (a plain route never reads them); the
        gRPC listener assigns its metadata here instead."""
        return LazyHeaders(self.raw_headers)

    def set_target(self, target: bytes) -> None:
        self.target = target
        path, _, query = target.decode("latin-1").partition("?")
        self.path = path
        self.query = query

    def query_params(self) -> dict[str, str]:
        if self._query_params is None:
            self._query_params = dict(parse_qsl(self.query, keep_blank_values=True))
        return self._query_params

    @property
    def stage(self) -> str:
        return self.route.stage if self.route is not None else ""

    @property
    def api(self) -> str:
        return self.route.api if self.route is not None else ""

    @property
    def resource(self) -> str:
        """The route template (/pets/{id}); the matched path when no route matched."""
        return self.route.resource if self.route is not None else self.stage_path

    @property
    def stage_variables(self) -> Mapping[str, str]:
        return self.route.stage_variables if self.route is not None else {}

    def header_pairs(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]

    def header_dict(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}

    def whole_body(self) -> bytes:
        """The held request body as one bytes object, joined at most once."""
        chunks = self.body_chunks
        if not chunks:
            return b""
        if len(chunks) == 1:
            return chunks[0]
        body = b"".join(chunks)
        self.body_chunks = [body]
        return body

    def template_params(self) -> dict[str, dict[str, str]]:
        return {
            "path": dict(self.params),
            "querystring": dict(self.query_params()),
            "header": self.header_dict(),
        }

    def template_context(self) -> dict[str, object]:
        return {
            "requestId": self.request_id,
            "stage": self.stage,
            "httpMethod": self.method,
            "resourcePath": self.route.resource if self.route is not None else "",
            "path": self.path,
            "sourceIp": self.source_ip,
            "authorizer": dict(self.auth_values),
        }
