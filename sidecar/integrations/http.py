"""Integration `http`: the HTTP/1.1 proxy over pooled keep-alive upstream connections.

Compiled per route: upstream address, URI template, parameter mapping, timeouts,
integration responses. Per request `HttpCall` writes the integration request (head
and streamed body), receives the response as `UpstreamListener` events and streams
it back through the exchange; a response template holds it until it is complete.
A non-proxy integration (`proxy: false`, AWS's `http` type) sends only the mapped
query parameters and headers, and returns only mapped headers.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.filters.cache import UNKEYED_REQUEST_HEADERS
from meshgate.sidecar.integrations import CompileError, RouteError, RouteSpec
from meshgate.sidecar.mapping import MappingError, ParamMapping, compile_parameters, quote_param, value_of
from meshgate.sidecar.respond import HOP_BY_HOP, proxied, refuse_request_headers
from meshgate.sidecar.transform import MAX_INPUT as TEMPLATE_MAX_INPUT
from meshgate.sidecar.transform import Transform, compile_transform
from meshgate.sidecar.transform_responses import IntegrationResponses, compile_responses, is_proxy
from meshgate.sidecar.upstream import UpstreamConn

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.exchange import Exchange

_URI_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}")
# Request headers the sidecar sets itself (an Expect it has met itself: 100 Continue is its answer).
REQUEST_OWN = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-forwarded-proto",
    b"x-meshgate-request-id",
    b"expect",
}
# What a non-proxy integration request keeps of the client's headers (LocalStack, checked against AWS:
# the mapped ones, Content-Type on requests with a body, API Gateway's Accept and User-Agent).
NON_PROXY_KEEP = frozenset({b"content-type"})
NO_BODY_METHODS = (b"GET", b"HEAD", b"OPTIONS")


@dataclass(frozen=True, slots=True)
class HttpIntegration:
    kind = "http"
    upgrade = False

    method: bytes  # b"" = the request's method
    host: str
    port: int
    path_parts: tuple[tuple[int, str], ...]  # (0 literal | 1 param | 2 greedy param, text)
    uri_query: str
    mapping: ParamMapping
    timeout_s: float
    connect_timeout_s: float
    transform: Transform | None
    host_header: bytes
    static_path: str | None  # the upstream path when it never varies (no parameters in the URI)
    static_target: bytes | None  # the whole request target, for a request without a query string
    responses: IntegrationResponses | None = None  # selected per status code; None: the answer as it is
    proxy: bool = True  # the client's query string and headers go on (false: mapped ones only)
    user_agent: bytes = b""  # non-proxy: API Gateway's AmazonAPIGateway_{apiId}

    @property
    def needs_body(self) -> bool:
        return self.transform is not None and self.transform.needs_request_body

    def request_target(self, ctx: RequestContext) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
        """The upstream request target (path?query) and the headers the parameter mapping sets."""
        query = ctx.query if self.proxy else ""  # non-proxy: mapped query parameters only
        if not query and self.static_target is not None:
            return self.static_target, ()  # (attach checks this first, without the call)
        m = self.mapping
        set_headers: tuple[tuple[bytes, bytes], ...] = ()
        params = ctx.params
        if m.headers or m.query or m.path:
            hs = []
            for name, src in m.headers:
                v = value_of(src, ctx)
                if v is not None:
                    hs.append((name, v.encode("latin-1", "replace")))
            set_headers = tuple(hs)
            if m.path:
                params = dict(params)
                for pname, src in m.path:
                    v = value_of(src, ctx)
                    if v is not None:
                        params[pname] = v
            if m.query:
                extra = [(name, v) for name, src in m.query if (v := value_of(src, ctx)) is not None]
                if extra:
                    query = (query + "&" if query else "") + urlencode(extra)
        if m.late_headers:
            set_headers += tuple(
                (name, v.encode("utf-8", "replace"))
                for name, key in m.late_headers
                if (v := ctx.auth_values.get(key)) is not None
            )
        path = self.static_path
        if path is None:
            path = "".join(self._part(kind, text, params, ctx) for kind, text in self.path_parts) or "/"
        tr = self.transform
        if tr is not None and tr.remove_request_query and query:
            query = urlencode(
                [
                    (k, v)
                    for k, v in parse_qsl(query, keep_blank_values=True)
                    if k not in tr.remove_request_query
                ]
            )
        if self.uri_query:
            query = self.uri_query + ("&" + query if query else "")
        target = path + "?" + query if query else path
        return target.encode("latin-1", "replace"), set_headers

    @staticmethod
    def _part(kind: int, text: str, params: dict[str, str], ctx: RequestContext) -> str:
        if kind == 0:
            return text
        value = params.get(text, "")
        if kind == 2 and ctx.raw_tail and value == ctx.params.get(text):
            return ctx.raw_tail  # the request's own encoding: an encoded / is not a segment boundary
        return quote_param(value, kind == 2)

    def start(self, ex: Exchange) -> None:
        ctx = ex.ctx
        if (ctx.query and self.proxy) or self.static_target is None:
            target, set_headers = self.request_target(ctx)
        else:
            target, set_headers = self.static_target, ()
        if set_headers and (refusal := refuse_request_headers(set_headers)) is not None:
            ex.fail(refusal)  # a value mapped from the request would split the message: nothing goes out
            return
        call = HttpCall(ex, self, target, set_headers)
        ex.call = call
        conn = ex.conn
        if self.timeout_s >= 1.0:  # coarse timeouts ride the connection sweep: no timer handle per request
            ex.deadline = conn.loop.time() + self.timeout_s
        else:
            ex.arm_timeout(self.timeout_s)
        up = conn.pool.take_idle(self.host, self.port)
        if up is not None:
            call.attach(up)
        else:
            conn.loop.create_task(call.connect())


def compile_http(spec: RouteSpec) -> HttpIntegration:
    uri = spec.uri()
    if not uri.startswith("http://"):
        raise CompileError(
            f"{spec.where}: only http:// integration URIs are supported, got {spec.integ.uri!r}"
        )
    authority, slash, path_and_query = uri[len("http://") :].partition("/")
    path_template, _, uri_query = ("/" + path_and_query if slash else "/").partition("?")
    host, colon, port_s = authority.rpartition(":")
    if not colon:
        host, port_s = authority, "80"
    host = host.strip("[]")
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise RouteError(f"integration uri has an invalid host or port: {uri!r}")
    parts: list[tuple[int, str]] = []
    pos = 0
    for m in _URI_PARAM.finditer(path_template):
        if m.start() > pos:
            parts.append((0, path_template[pos : m.start()]))
        name = m.group(1)
        greedy = bool(m.group(2)) or (name == "proxy" and spec.route.path.rstrip("/").endswith("+}"))
        parts.append((2 if greedy else 1, name))
        pos = m.end()
    if pos < len(path_template):
        parts.append((0, path_template[pos:]))
    integ = spec.integ
    try:
        mapping = compile_parameters(integ.request_parameters, spec.stage, spec.variables, spec.route.path)
    except MappingError as exc:
        raise CompileError(f"{spec.where}: requestParameters: {exc}") from None
    try:
        transform = compile_transform(integ, spec.variables, spec.binary_media_types, spec.template_language)
    except ValueError as exc:
        raise CompileError(f"{spec.where}: {exc}") from None
    responses: IntegrationResponses | None = None
    try:
        responses = compile_responses(integ, spec.variables, spec.template_language)
    except ValueError as exc:
        raise CompileError(f"{spec.where}: {exc}") from None
    if responses is not None and transform is not None:  # the responses map the answer, not the transform
        transform = dataclasses.replace(
            transform, response_headers=(), remove_response_headers=frozenset(), response_templates={}
        )
    port = int(port_s)
    static = "".join(t for _, t in parts) or "/" if all(k == 0 for k, _ in parts) else None
    return HttpIntegration(
        method=integ.http_method.encode() if integ.http_method and integ.http_method != "ANY" else b"",
        host=host,
        port=port,
        path_parts=tuple(parts),
        uri_query=uri_query,
        mapping=mapping,
        timeout_s=spec.timeout_s(),
        connect_timeout_s=spec.connect_timeout_s(),
        transform=transform,
        host_header=f"{host}:{port}".encode() if port != 80 else host.encode(),
        static_path=static,
        static_target=(
            static.encode("latin-1", "replace")
            if static is not None
            and not uri_query
            and not (mapping.headers or mapping.query or mapping.path)
            and not mapping.late_headers
            else None
        ),
        responses=responses,
        proxy=integ.type != "http" or is_proxy(integ),
        user_agent=f"AmazonAPIGateway_{spec.api.partition('/')[2]}".encode(),
    )


class _Held:
    """An integration response held back until its mapping template has run."""

    __slots__ = ("body", "headers", "reason", "size", "status")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body: list[bytes] = []
        self.size = 0


class HttpCall:
    """One proxied request: implements UpstreamListener for the upstream connection it holds."""

    __slots__ = ("chunked_out", "conn", "ex", "held", "integ", "retry_ok", "set_headers", "target", "up")

    def __init__(
        self,
        ex: Exchange,
        integ: HttpIntegration,
        target: bytes,
        set_headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        self.ex = ex
        self.target = target  # the upstream request target and the mapping's headers, checked in start
        self.set_headers = set_headers
        self.conn = ex.conn
        self.integ = integ
        self.up: UpstreamConn | None = None
        self.chunked_out = False
        self.held: _Held | None = None
        ctx = ex.ctx
        self.retry_ok = ctx.content_length <= 0 and not ctx.chunked

    async def connect(self) -> None:
        integ, ex = self.integ, self.ex
        where = f"{integ.host}:{integ.port}"
        try:
            up = await ex.conn.pool.connect(integ.host, integ.port, integ.connect_timeout_s)
        except ConnectionRefusedError:
            ex.fail(GatewayError(503, f"upstream connect refused ({where})"))
            return
        except TimeoutError:
            ex.fail(
                GatewayError(503, f"upstream connect timeout after {integ.connect_timeout_s:g}s ({where})")
            )
            return
        except socket.gaierror as exc:
            ex.fail(GatewayError(503, f"upstream DNS resolution failed for {integ.host}: {exc.strerror}"))
            return
        except OSError as exc:
            ex.fail(GatewayError(503, f"upstream connect failed ({where}): {exc.strerror or exc}"))
            return
        if not ex.awaiting_response:
            up.release()
            return
        self.attach(up)

    def attach(self, up: UpstreamConn) -> None:
        ex, integ = self.ex, self.integ
        ctx = ex.ctx
        span = ctx.trace
        if span is not None and span.child is None:
            span.start_child("integration", **{"server.address": integ.host, "server.port": integ.port})
        ex.t_integration = perf_counter()
        self.up = up
        up.attach(self)
        conn = ex.conn
        target, set_headers = self.target, self.set_headers
        lines = [
            integ.method or ctx.method.encode(),
            b" ",
            target,
            b" HTTP/1.1\r\nhost: ",
            integ.host_header,
            b"\r\n",
        ]
        peer = ctx.source_ip.encode()
        xff = peer
        drop = REQUEST_OWN
        added = set_headers + ctx.upstream_headers if ctx.upstream_headers else set_headers
        if span is not None:
            added = added + tuple(span.inject())
        if added:
            names = {n for n, _ in added if not n.startswith(b"x-meshgate-")}
            if names:
                drop = drop | names
        tr = integ.transform
        if tr is not None and tr.remove_request_headers:
            drop = drop | tr.remove_request_headers
        if ctx.cache_key is not None:  # a cached route: nothing unkeyed from the client reaches the backend
            drop = drop | UNKEYED_REQUEST_HEADERS
        raw = ctx.raw_headers
        for name, value in raw:
            if len(name) == 10 and name.lower() == b"connection":
                drop = drop | {v.strip().lower() for v in value.split(b",")}
        keep = None if integ.proxy else self._non_proxy_keep(lines, added)
        for name, value in raw:
            low = name.lower()
            if low in drop or low.startswith(b"x-meshgate-"):  # the gateway's own headers are never spoofed
                continue
            if keep is not None and low not in keep:
                continue
            if low == b"x-forwarded-for":
                xff = value + b", " + peer
                continue
            lines += (name, b": ", value, b"\r\n")
        lines += (
            b"x-forwarded-for: ",
            xff,
            b"\r\nx-forwarded-proto: http\r\nx-meshgate-request-id: ",
            ctx.request_id.encode(),
            b"\r\n",
        )
        for name, value in added:
            lines += (name, b": ", value, b"\r\n")
        if ctx.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif ctx.content_length >= 0 and (ctx.content_length > 0 or ctx.method in ("POST", "PUT", "PATCH")):
            lines.append(b"content-length: %d\r\n" % ctx.content_length)
        lines.append(b"\r\n")
        chunks = ctx.body_chunks or ()
        ctx.body_chunks = None
        if ctx.chunked:
            for chunk in chunks:
                lines.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            if ctx.body_complete:
                lines.append(b"0\r\n\r\n")
        else:
            lines.extend(chunks)
        ex.sink = self
        up.write(b"".join(lines), conn.batching > 0)
        if conn.paused_by_upstream:
            conn.resume_reading_from("upstream")

    def _non_proxy_keep(self, lines: list[bytes], added: tuple[tuple[bytes, bytes], ...]) -> frozenset[bytes]:
        """A non-proxy request: API Gateway's Accept and User-Agent unless mapped; the client's headers
        that still go (Content-Type where a body may be)."""
        names = {n.lower() for n, _ in added}
        if b"accept" not in names:
            lines.append(b"accept: application/json\r\n")
        if b"user-agent" not in names:
            lines += (b"user-agent: ", self.integ.user_agent, b"\r\n")
        method = self.integ.method or self.ex.ctx.method.encode()
        return frozenset() if method in NO_BODY_METHODS else NON_PROXY_KEEP

    # ------------------------------------------------------------------ the request body, streamed
    def body(self, chunk: bytes) -> None:
        up = self.up
        if up is not None:
            up.write(
                b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.ex.ctx.chunked else chunk,
                self.conn.batching > 0,
            )

    def body_end(self) -> None:
        """The end of a chunked request body."""
        up = self.up
        if up is not None:
            up.write(b"0\r\n\r\n", self.conn.batching > 0)

    # ------------------------------------------------------------------ Call (the exchange's handle)
    def cancel(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.discard()

    def pause(self, paused: bool) -> None:
        if self.up is not None:
            if paused:
                self.up.pause_reading()
            else:
                self.up.resume_reading()

    def flush(self) -> None:
        if self.up is not None:
            self.up.flush()

    # ------------------------------------------------------------------ UpstreamListener
    def cork(self) -> None:
        self.conn.batching += 1

    def uncork(self) -> None:
        c = self.conn
        c.batching -= 1
        if not c.batching:
            c.flush_all()

    def on_upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        ex = self.ex
        ex.status_code = status
        ex.t_head = perf_counter()
        self.retry_ok = False
        if self.integ.responses is not None:
            self._integration_response(status, reason, headers)
            return
        tf = ex.route_transform
        if tf is not None:
            headers = tf.response_head(ex.ctx, headers)
            if tf.holds_response(ex.is_head):  # rendered at the end (on_upstream_end)
                self.held = _Held(status, reason, headers)
                return
        self._stream_head(status, reason, headers)

    def _integration_response(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The integration response selected on the status: held for its template or body mapping,
        else its head goes now and the body streams."""
        ex, rs = self.ex, self.integ.responses
        assert rs is not None
        chosen = rs.pick(str(status))
        if chosen is None or (chosen.needs_body and not ex.is_head):
            self.held = _Held(status, reason, headers)
            return
        out = rs.answer(ex.ctx, str(status), status, headers, b"")
        if isinstance(out, GatewayError):
            ex.fail(out)
            return
        framing = [(n, v) for n, v in headers if n.lower() in (b"content-length", b"transfer-encoding")]
        new_status, new_headers, _ = out
        ex.status_code = new_status
        self._stream_head(new_status, reason if new_status == status else b"", new_headers + framing)

    def _stream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        ex = self.ex
        head = proxied(
            status, reason, headers, is_head=ex.is_head, http10=ex.http10, keep=ex.ctx.cache is not None
        )
        if isinstance(head, GatewayError):
            ex.fail(head)
            return
        data, kept, self.chunked_out, close_delimited = head
        ex.send_head(status, data, kept, close_delimited)
        if ex.is_head:  # a HEAD response ends at its head (httptools would wait for the announced body)
            up, self.up = self.up, None
            if up is not None:
                self._hand_back(up, up.parser.should_keep_alive())  # release: a new parser
            ex.call = None
            ex.finish()

    def on_upstream_body(self, chunk: bytes) -> None:
        held = self.held
        ex = self.ex
        if held is not None:
            held.body.append(chunk)
            held.size += len(chunk)
            if held.size > TEMPLATE_MAX_INPUT:
                self.held = None
                ex.fail(
                    GatewayError(
                        502, "integration response too large for its mapping template", "INTEGRATION_FAILURE"
                    )
                )
            return
        cap = ex.ctx.capture
        if cap is not None and not cap.add(chunk):
            ex.ctx.capture = None
        self.conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked_out else chunk)

    def on_upstream_end(self, keep_alive: bool) -> None:
        ex = self.ex
        up, self.up = self.up, None
        held, self.held = self.held, None
        if up is not None:
            self._hand_back(up, keep_alive)
        if held is not None and self.integ.responses is not None:
            body = b"".join(held.body)
            answered = self.integ.responses.answer(ex.ctx, str(held.status), held.status, held.headers, body)
            if isinstance(answered, GatewayError):
                ex.fail(answered)
            else:
                code, hs, data = answered
                ex.respond_full(code, hs, data, held.reason if code == held.status else b"")
            return
        if held is not None:  # the response template runs now, on the whole body
            tf = ex.route_transform
            assert tf is not None
            out = tf.render_response(ex.ctx, held.headers, b"".join(held.body))
            if isinstance(out, GatewayError):
                ex.fail(out)
            else:
                status = out[2]  # a VTL template's $context.responseOverride.status
                ex.respond_full(status or held.status, out[0], out[1], b"" if status else held.reason)
            return
        if self.chunked_out:
            self.conn.write(b"0\r\n\r\n")
        cap = ex.ctx.capture
        if cap is not None:
            ex.ctx.capture = None
            cap.store()
        ex.call = None  # done: nothing to cancel, pause or flush any more
        ex.finish()

    def _hand_back(self, up: UpstreamConn, keep_alive: bool) -> None:
        """The response is over: pool the upstream connection if both sides allow it, else close it."""
        if keep_alive and self.ex.ctx.body_complete and not self.ex.discard_body:
            up.release()
        else:
            up.discard()

    def on_upstream_error(self, reason: str, before_head: bool) -> None:
        up, self.up = self.up, None
        if before_head and self.retry_ok and up is not None and up.reused and not up.got_bytes:
            self.retry_ok = False  # a pooled connection the upstream had closed: retry once on a fresh one
            self.ex.conn.loop.create_task(self.connect())
            return
        self.ex.fail(GatewayError(502, reason))

    def on_upstream_writable(self, writable: bool) -> None:
        if writable:
            self.ex.conn.resume_reading_from("upstream")
        else:
            self.ex.conn.pause_reading_from("upstream")
