"""The HTTP/1.1 listener: the sidecar's hot path (asyncio.Protocol + httptools, callbacks, no framework).

Owns client connections: parsing with limits, keep-alive, pipelining (one
exchange at a time, in order), streaming bodies both ways with backpressure,
hop-by-hop stripping, X-Forwarded-*, request ids, and every gateway error
rendered from the one error table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any, cast
from urllib.parse import urlsplit

import grpc
import httptools
from meshgate.sidecar.accesslog import AccessLog
from meshgate.sidecar.accesslog import context as access_context
from meshgate.sidecar.authorizers import AuthRequest
from meshgate.sidecar.cache import CachedResponse, ResponseCache
from meshgate.sidecar.errors import STATUS_LINES, phrase, render_http_error
from meshgate.sidecar.function import FunctionError, FunctionRequest, invoke
from meshgate.sidecar.metrics import Key, Metrics
from meshgate.sidecar.phase import PhaseResult
from meshgate.sidecar.responses import ApiResponses
from meshgate.sidecar.routing import Miss, TableHolder, Target
from meshgate.sidecar.telemetry import TRACE_HEADERS, RequestSpan, Telemetry
from meshgate.sidecar.transcode import HTTP_STATUS as GRPC_TO_HTTP
from meshgate.sidecar.transcode import TranscodeError
from meshgate.sidecar.transcode import channel as transcode_channel
from meshgate.sidecar.transform import MAX_INPUT as TEMPLATE_MAX_INPUT
from meshgate.sidecar.transform import UNPARSED, BodyTemplate, TemplateLimit, Transform, select
from meshgate.sidecar.upstream import UpstreamConn, UpstreamPool
from meshgate.sidecar.validation import BodyModel, Invalid
from meshgate.sidecar.websocket import WsRelay, handshake_response
from meshgate.sidecar.wsapi import Registry, WsApiConnection

log = logging.getLogger("meshgate.sidecar.http")

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
# Request headers the sidecar sets itself.
REQUEST_OWN = HOP_BY_HOP | {b"host", b"content-length", b"x-forwarded-proto", b"x-meshgate-request-id"}
RESPONSE_OWN = HOP_BY_HOP | {b"content-length", b"x-meshgate-request-id"}


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    lingering_s: float = 2.0


class _RequestIds:
    def __init__(self) -> None:
        self.prefix = os.urandom(4).hex()
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:012x}"


REQUEST_IDS = _RequestIds()


def _split_headers(block: bytes) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out.append((name, value))
    return tuple(out)


class LazyHeaders(Mapping[str, str]):
    """Request headers as a lowercase-name mapping, built only if a route needs one."""

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


class _Abort(Exception):
    """Raised inside parser callbacks to stop parsing with a status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ResponseBuffer:
    """An integration response held back until its mapping template has run."""

    __slots__ = ("body", "headers", "reason", "size", "status")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body: list[bytes] = []
        self.size = 0


class Capture:
    """A response being copied into the stage cache as it streams to the client."""

    __slots__ = ("body", "cache", "headers", "key", "size", "status")

    def __init__(self, cache: ResponseCache, key: bytes) -> None:
        self.cache = cache
        self.key = key
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.body: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> bool:
        self.size += len(chunk)
        if self.size > self.cache.capacity:
            return False
        self.body.append(chunk)
        return True

    def store(self) -> None:
        if self.status:
            self.cache.put(self.key, CachedResponse(self.status, self.headers, b"".join(self.body)))


class Exchange:
    """One client request and its response; implements UpstreamListener."""

    __slots__ = (
        "auth_values",
        "body_chunks",
        "body_complete",
        "body_doc",
        "body_received",
        "cache_header",
        "capture",
        "chunked_in",
        "client",
        "content_length",
        "content_type",
        "cors_headers",
        "deadline",
        "discard_body",
        "error",
        "finished",
        "head_sent",
        "headers",
        "host",
        "is_head",
        "keep_alive",
        "method",
        "out_chunked",
        "pending",
        "pending_manage",
        "phase_headers",
        "rbuf",
        "request_id",
        "response_done",
        "responses",
        "retry_ok",
        "span",
        "status_code",
        "t0",
        "t_head",
        "t_integration",
        "target",
        "timer",
        "upgrade",
        "upstream",
        "url",
        "version",
    )

    def __init__(self, client: ClientConn) -> None:
        self.client = client
        self.method = "GET"
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = ""
        self.version = "1.1"
        self.keep_alive = True
        self.request_id = REQUEST_IDS.next()
        self.content_length = -1
        self.content_type = b""
        self.chunked_in = False
        self.body_chunks: list[bytes] | None = []  # buffered until an upstream is attached
        self.body_received = 0
        self.body_complete = False
        self.body_doc: object = UNPARSED  # the JSON body once request validation has parsed it
        self.discard_body = False
        self.error: tuple[int, str] | None = None
        self.target: Target | None = None
        self.upstream: UpstreamConn | None = None
        self.head_sent = False
        self.response_done = False
        self.out_chunked = False
        self.is_head = False
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.capture: Capture | None = None
        self.cache_header = b""
        self.responses: ApiResponses | None = None
        self.cors_headers = b""
        self.pending: Target | None = None
        self.phase_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.upgrade = False
        self.pending_manage: str | None = None
        self.span: RequestSpan | None = None
        self.status_code = 0
        self.t0 = perf_counter()  # latencies: uvloop's loop.time() only has millisecond resolution
        self.t_head = 0.0
        self.t_integration = 0.0
        self.auth_values: Mapping[str, str] = {}
        self.rbuf: ResponseBuffer | None = None
        self.retry_ok = False
        self.finished = False

    # ------------------------------------------------------------------ request body in
    def feed_body(self, chunk: bytes) -> None:
        if self.discard_body:
            return
        up = self.upstream
        if up is not None and self.body_chunks is None:
            up.write(
                b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked_in else chunk, self.client.batching > 0
            )
        elif self.body_chunks is not None:
            self.body_chunks.append(chunk)

    def end_body(self) -> None:
        self.body_complete = True
        if self.pending_manage is not None:
            conn_id, self.pending_manage = self.pending_manage, None
            self.client.loop.create_task(self._manage(conn_id))
            return
        pending = self.pending
        if pending is not None:
            self.pending = None
            if not (self.finished or self.response_done):
                self.proceed(pending)
        up = self.upstream
        if up is not None and self.body_chunks is None and self.chunked_in and not self.discard_body:
            up.write(b"0\r\n\r\n", self.client.batching > 0)
        if self.response_done:
            self.client.exchange_done(self)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        c = self.client
        if self.error is not None:
            self.fail(*self.error, close=True)
            return
        try:
            path, _, query = self.url.decode("latin-1").partition("?")
            if not path.startswith("/"):
                self.fail(
                    400, f"malformed HTTP request: request target {path[:100]!r} is not an origin-form path"
                )
                return
            hdrs = LazyHeaders(self.headers)
            if path.startswith("/@connections/"):
                self.manage_connection(path[len("/@connections/") :])
                return
            result = c.holder.table.resolve(self.host, self.method, path, query, hdrs, self.request_id)
        except Exception:
            log.exception("route resolution failed (request %s)", self.request_id)
            self.fail(500, "internal error")
            return
        responses = result.responses
        if responses is not None and responses.cors is not None:
            self.responses = responses
            origin = hdrs.get("origin")
            if origin:
                if (
                    self.method == "OPTIONS"
                    and "access-control-request-method" in hdrs
                    and result.status != 404
                ):
                    c.write(
                        responses.cors.preflight(
                            origin, self.request_id, hdrs.get("access-control-request-headers", "")
                        )
                    )
                    self.head_sent = True
                    self.complete_response()  # answered by the sidecar: the integration is never called
                    return
                self.cors_headers = responses.cors.response_headers(origin)
        elif responses is not None:
            self.responses = responses
        if isinstance(result, Miss):
            extra = ((b"allow", result.allow.encode()),) if result.allow else ()
            self.fail(result.status, result.reason, extra_headers=extra)
            return
        self.target = result
        tel = c.server.telemetry
        if tel is not None and (ctx := tel.sample(hdrs, result.trace_ratio)) is not None:
            # sampled: only now is anything built for the span
            self.span = tel.begin(
                ctx,
                f"{self.method} {result.phase.resource if result.phase else path}",
                {
                    "http.request.method": self.method,
                    "url.path": path,
                    "meshgate.api": result.api,
                    "meshgate.stage": result.stage,
                    "meshgate.deployment": result.deployment_id,
                    "meshgate.request_id": self.request_id,
                    "client.address": c.peer_ip.decode(),
                },
            )
        phase = result.phase
        if phase is not None and phase.fast:
            refused = phase.throttled()
            if refused is not None:
                self.fail(refused.status, refused.reason, extra_headers=refused.response_headers)
                return
            phase = None
        if phase is not None:
            req = AuthRequest(
                self.method,
                result.path,
                phase.resource,
                result.stage,
                result.api,
                hdrs,
                query,
                c.peer_ip.decode(),
                self.request_id,
                result.params or {},
                phase.stage_variables,
            )
            if self.span is not None:
                self.span.start_child("request phase", **{"meshgate.authorizer": bool(phase.authorizer)})
            try:
                outcome = phase.run(req, self.span)
            except Exception:
                log.exception("request phase failed (request %s)", self.request_id)
                self.fail(500, "internal error")
                return
            if isinstance(outcome, PhaseResult):
                self.after_phase(result, outcome)
            else:
                c.loop.create_task(self.await_phase(result, outcome))
            return
        self.proceed(result)

    async def await_phase(self, t: Target, pending: Awaitable[PhaseResult]) -> None:
        try:
            outcome = await pending
        except Exception:
            log.exception("request phase failed (request %s)", self.request_id)
            outcome = PhaseResult(500, "internal error")
        if self.finished or self.response_done or self.client.closed:
            return
        self.after_phase(t, outcome)

    def after_phase(self, t: Target, r: PhaseResult) -> None:
        if self.span is not None:
            if r.cache_header:
                self.span.child.set_attribute("meshgate.cache", r.cache_header.decode())
            self.span.end_child(r.reason if r.status else "")
        if r.authorizer_s:
            metrics = self.client.server.metrics
            if metrics is not None:
                metrics.authorizer_latency[t.api, t.stage, t.phase.resource if t.phase else t.path].observe(
                    r.authorizer_s
                )
        if r.status:
            self.fail(
                r.status, r.reason, extra_headers=r.response_headers, gw_type=r.gw_type, details=r.errors
            )
            return
        extra = r.set_headers  # the Target may be shared (static): per-request headers live here
        if t.late_headers:
            extra = extra + tuple(
                (name, v.encode("utf-8", "replace"))
                for name, key in t.late_headers
                if (v := r.auth_values.get(key)) is not None
            )
        self.phase_headers = extra
        self.cache_header = r.cache_header
        self.auth_values = r.auth_values
        if r.cached is not None:
            self.respond_cached(t, r.cached)
            return
        if r.cache is not None and r.store_key is not None:
            self.capture = Capture(r.cache, r.store_key)
        self.proceed(t)

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

    def body_is_valid(self, model: BodyModel) -> bool:
        try:
            verdict = model.parse(self.content_type.decode("latin-1"), self.whole_body())
        except Exception:
            log.exception("request validation failed (request %s)", self.request_id)
            self.fail(500, "internal error")
            return False
        if isinstance(verdict, Invalid):
            self.fail(verdict.status, verdict.reason, gw_type=verdict.gw_type, details=verdict.errors)
            return False
        self.body_doc = verdict.doc
        return True

    def proceed(self, result: Target) -> None:
        c = self.client
        if result.needs_body and not self.body_complete:
            self.pending = result  # resumed by end_body once the whole body is here
            return
        model = result.phase.body_model if result.phase is not None else None
        if model is not None and not self.body_is_valid(model):
            return
        if result.kind in ("websocket", "websocket_api"):
            if not self.upgrade:
                what = "WebSocket API" if result.kind == "websocket_api" else "WebSocket"
                self.fail(
                    426,
                    f"this route is a {what}: send an Upgrade: websocket request",
                    extra_headers=((b"upgrade", b"websocket"),),
                )
                return
            start = self.start_wsapi if result.kind == "websocket_api" else self.start_websocket
            c.loop.create_task(start(result))
            return
        if self.upgrade:
            self.fail(400, "WebSocket upgrade on a route that is not a WebSocket route", close=True)
            return
        if result.kind == "grpc":
            if result.transcoder is None:
                self.fail(400, "this route is a gRPC method: call it on the sidecar's gRPC listener")
                return
            c.loop.create_task(self.call_transcoded(result))
            return
        if result.kind == "mock":
            self.respond_mock(result)
            return
        if result.kind == "function":
            c.loop.create_task(self.call_function(result))
            return
        tr = result.transform
        if tr is not None and tr.needs_request_body and not self.transform_request(result, tr):
            return
        if result.timeout_s >= 1.0:  # coarse timeouts ride the connection sweep: no timer handle per request
            self.deadline = c.loop.time() + result.timeout_s
        else:
            self.timer = c.loop.call_later(result.timeout_s, self.on_timeout)
        self.retry_ok = self.content_length <= 0 and not self.chunked_in
        up = c.pool.take_idle(result.host, result.port)
        if up is not None:
            self.attach(up)
        else:
            c.loop.create_task(self.connect(result))

    async def connect(self, t: Target) -> None:
        where = f"{t.host}:{t.port}"
        try:
            up = await self.client.pool.connect(t.host, t.port, t.connect_timeout_s)
        except ConnectionRefusedError:
            self.fail(503, f"upstream connect refused ({where})")
            return
        except TimeoutError:
            self.fail(503, f"upstream connect timeout after {t.connect_timeout_s:g}s ({where})")
            return
        except socket.gaierror as exc:
            self.fail(503, f"upstream DNS resolution failed for {t.host}: {exc.strerror}")
            return
        except OSError as exc:
            self.fail(503, f"upstream connect failed ({where}): {exc.strerror or exc}")
            return
        if self.finished or self.response_done or self.client.closed:
            up.release()
            return
        self.attach(up)

    def attach(self, up: UpstreamConn) -> None:
        t = self.target
        assert t is not None
        span = self.span
        if span is not None and span.child is None:
            span.start_child("integration", **{"server.address": t.host, "server.port": t.port})
        self.t_integration = perf_counter()
        self.upstream = up
        up.attach(self)
        c = self.client
        lines = [
            t.method,
            b" ",
            t.target,
            b" HTTP/1.1\r\nhost: ",
            f"{t.host}:{t.port}".encode() if t.port != 80 else t.host.encode(),
            b"\r\n",
        ]
        xff = c.peer_ip
        drop = REQUEST_OWN
        added = t.set_headers + self.phase_headers if self.phase_headers else t.set_headers
        if span is not None:
            added = added + tuple(span.inject())
        if added:
            names = {n for n, _ in added if not n.startswith(b"x-meshgate-")}
            if names:
                drop = drop | names
        if t.transform is not None and t.transform.remove_request_headers:
            drop = drop | t.transform.remove_request_headers
        for name, value in self.headers:
            if len(name) == 10 and name.lower() == b"connection":
                drop = drop | {v.strip().lower() for v in value.split(b",")}
        for name, value in self.headers:
            low = name.lower()
            if low in drop or low.startswith(b"x-meshgate-"):  # the gateway's own headers are never spoofed
                continue
            if low == b"x-forwarded-for":
                xff = value + b", " + c.peer_ip
                continue
            lines += (name, b": ", value, b"\r\n")
        lines += (
            b"x-forwarded-for: ",
            xff,
            b"\r\nx-forwarded-proto: http\r\nx-meshgate-request-id: ",
            self.request_id.encode(),
            b"\r\n",
        )
        for name, value in added:
            lines += (name, b": ", value, b"\r\n")
        if self.chunked_in:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif self.content_length >= 0 and (
            self.content_length > 0 or self.method in ("POST", "PUT", "PATCH")
        ):
            lines.append(b"content-length: %d\r\n" % self.content_length)
        lines.append(b"\r\n")
        chunks = self.body_chunks or ()
        self.body_chunks = None
        if self.chunked_in:
            for chunk in chunks:
                lines.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            if self.body_complete:
                lines.append(b"0\r\n\r\n")
        else:
            lines.extend(chunks)
        up.write(b"".join(lines), c.batching > 0)
        if c.paused_by_upstream:
            c.resume_reading_from("upstream")

    # ------------------------------------------------------------------ responses
    def manage_connection(self, conn_id: str) -> None:
        c = self.client
        registry = c.server.registry
        if registry is None or c.server.session is None:
            self.fail(404, "this sidecar serves no WebSocket APIs")
            return
        ip = c.peer_ip.decode()
        from meshgate.sidecar.phase import in_networks

        if not in_networks(ip, c.holder.table.cluster_nets):
            self.fail(403, f"@connections is reachable only from inside the cluster networks (source {ip})")
            return
        if not self.body_complete:
            self.pending_manage = conn_id
            return
        c.loop.create_task(self._manage(conn_id))

    async def _manage(self, conn_id: str) -> None:
        c = self.client
        assert c.server.registry is not None
        status, body = await c.server.registry.manage(
            self.method, conn_id.strip("/"), self.whole_body(), c.server.session
        )
        if self.finished or self.response_done or c.closed:
            return
        head = STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, phrase(status))
        extra = b"content-type: application/json\r\n" if body else b""
        c.write(
            head
            + extra
            + b"content-length: %d\r\nx-meshgate-request-id: %s\r\n\r\n"
            % (len(body), self.request_id.encode())
            + body
        )
        self.head_sent = True
        self.complete_response()

    async def start_wsapi(self, t: Target) -> None:
        c = self.client
        registry = c.server.registry
        transport = c.transport
        api = t.wsapi
        if registry is None or c.server.session is None or api is None or transport is None:
            self.fail(500, "WebSocket APIs need the sidecar runtime (meshgate sidecar --advertise)")
            return
        key = next((v for n, v in self.headers if n.lower() == b"sec-websocket-key"), b"")
        if not key:
            self.fail(400, "WebSocket upgrade without Sec-WebSocket-Key", close=True)
            return
        conn = WsApiConnection(
            registry.new_id(),
            api,
            transport,
            c.peer_ip.decode(),
            t.stage,
            c.server.session,
            dict(self.auth_values),
            api_name=t.api,
            telemetry=c.server.telemetry,
            trace_ratio=t.trace_ratio,
            metrics=c.server.metrics,
        )
        connect = api.routes.get("$connect")
        if connect is not None:
            skip = {b"host", b"connection", b"upgrade", b"content-length", b"transfer-encoding"}
            client_headers = {
                n.decode("latin-1"): v.decode("latin-1")
                for n, v in self.headers
                if n.lower() not in skip and not n.lower().startswith(b"sec-websocket")
            }
            query = self.url.partition(b"?")[2].decode("latin-1")
            status, body = await conn.call(connect, "$connect", b"", client_headers, self.span, query)
            if status == 0:
                c.upgraded = False
                self.fail(502, body.decode(), close=True, gw_type="INTEGRATION_FAILURE")
                return
            if status >= 300:
                c.upgraded = False
                code = status if 400 <= status < 500 else 502
                self.fail(code, f"$connect rejected the connection (HTTP {status})", close=True)
                return
        if c.closed:
            return
        c.flush()
        if self.span is not None:
            conn.link = self.span.span.get_span_context()
        self.upgraded()
        transport.write(handshake_response(key, None, self.request_id, conn.conn_id))
        c.queue.clear()
        c._disarm()
        registry.add(conn)
        c.wsapi = conn
        for data in c.upgrade_buffer:
            if data:
                conn.data(data)
        c.upgrade_buffer.clear()

    async def start_websocket(self, t: Target) -> None:
        c = self.client
        integ = t.ws
        transport = c.transport
        if integ is None or transport is None:
            self.fail(500, "internal error")
            return
        key = next((v for n, v in self.headers if n.lower() == b"sec-websocket-key"), b"")
        if not key:
            self.fail(400, "WebSocket upgrade without Sec-WebSocket-Key", close=True)
            return
        relay = WsRelay(transport, integ, self.request_id)
        c.ws = relay
        relay.pending_client.extend(c.upgrade_buffer)
        c.upgrade_buffer.clear()
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers]
        headers += [
            (n.decode("latin-1"), v.decode("latin-1")) for n, v in (*t.set_headers, *self.phase_headers)
        ]
        span = self.span
        if span is not None:  # the handshake is the integration call; frames are not spanned
            up = urlsplit(integ.uri)
            span.start_child(
                "integration", **{"server.address": up.hostname or "", "server.port": up.port or 80}
            )
            headers = [(n, v) for n, v in headers if n.lower() not in TRACE_HEADERS]
            headers += span.carrier().items()
        where = integ.uri
        try:
            resp = await relay.connect(headers, t.connect_timeout_s + t.timeout_s)
        except ConnectionRefusedError:
            reason, status = f"upstream connect refused ({where})", 503
        except TimeoutError:
            reason, status = f"upstream WebSocket handshake timed out ({where})", 504
        except OSError as exc:
            reason, status = f"upstream connect failed ({where}): {exc.strerror or exc}", 503
        except Exception as exc:
            reason, status = f"upstream refused the WebSocket handshake: {str(exc)[:200]}", 502
        else:
            reason, status = "", 0
        if status:
            if span is not None:
                span.end_child(reason)
            c.ws = None
            if relay.upstream is not None and relay.upstream.transport is not None:
                relay.upstream.transport.close()
            c.upgraded = False
            self.fail(status, reason, close=True)
            return
        if c.closed:
            relay.client_lost()
            return
        c.flush()
        self.upgraded()
        transport.write(handshake_response(key, resp.headers.get("Sec-WebSocket-Protocol"), self.request_id))
        c.queue.clear()
        c._disarm()
        relay.live = True
        relay.start(b"")
        log.info("request %s: WebSocket relay to %s open", self.request_id, where)

    async def call_transcoded(self, t: Target) -> None:
        tc = t.transcoder
        assert tc is not None
        from urllib.parse import parse_qsl

        query = dict(parse_qsl(self.url.partition(b"?")[2].decode("latin-1"), keep_blank_values=True))
        try:
            payload = tc.request(self.whole_body(), t.params or {}, query)
        except TranscodeError as exc:
            self.fail(400, str(exc), gw_type="BAD_REQUEST_BODY")
            return
        metadata = [("x-meshgate-request-id", self.request_id)]
        for name, value in (*self.headers, *t.set_headers, *self.phase_headers):
            low = name.lower()
            if low == b"authorization" or low.startswith(b"x-"):
                metadata.append((low.decode("latin-1"), value.decode("latin-1")))
        call = transcode_channel(t.host, t.port).unary_unary(
            tc.method_path, request_serializer=None, response_deserializer=None
        )
        try:
            data = await call(payload, timeout=t.timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if not (self.finished or self.response_done):
                status = GRPC_TO_HTTP.get(exc.code(), 500)
                reason = f"gRPC {exc.code().name}: {exc.details() or ''}".strip()
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    reason = f"integration timeout after {t.timeout_s:g}s"
                elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                    reason = f"upstream gRPC service unavailable ({t.host}:{t.port}): {exc.details() or ''}"
                self.fail(status, reason)
            return
        except Exception:
            log.exception("transcoded call failed (request %s)", self.request_id)
            if not (self.finished or self.response_done):
                self.fail(500, "internal error")
            return
        if self.finished or self.response_done or self.client.closed:
            return
        try:
            body = tc.response(data)
        except Exception as exc:
            self.fail(
                502, f"invalid upstream response: cannot decode {tc.response_cls.DESCRIPTOR.full_name}: {exc}"
            )
            return
        self.respond_full(t, 200, ((b"content-type", b"application/json"),), body)

    async def call_function(self, t: Target) -> None:
        fn = t.function
        if fn is None or t.phase is None:
            self.fail(
                500, "function integrations need the sidecar runtime", gw_type="API_CONFIGURATION_ERROR"
            )
            return
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        query = self.url.partition(b"?")[2].decode("latin-1")
        req = FunctionRequest(
            self.method,
            t.path,
            path,
            query,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers],
            t.params or {},
            self.whole_body(),
            self.client.peer_ip.decode(),
            self.request_id,
            self.auth_values,
        )
        try:
            resp = await invoke(t.phase.runtime.session(), fn, req, t.timeout_s)
        except FunctionError as exc:
            if not (self.finished or self.response_done):
                kind = {504: "INTEGRATION_TIMEOUT"}.get(exc.status, "INTEGRATION_FAILURE")
                self.fail(exc.status, exc.reason, gw_type=kind)
            return
        except Exception:
            log.exception("function integration failed (request %s)", self.request_id)
            if not (self.finished or self.response_done):
                self.fail(500, "internal error")
            return
        if self.finished or self.response_done or self.client.closed:
            return
        self.respond_full(t, resp.status, resp.headers, resp.body)

    def transform_request(self, t: Target, tr: Transform) -> bool:
        """Apply the request mapping template; False when the exchange already failed."""
        ctype = self.content_type.decode("latin-1")
        if tr.binary_media_types and tr.is_binary(ctype):
            return True  # binary media type: the body goes through untouched
        chosen = select(tr.request_templates, ctype, tr.passthrough)
        if chosen is False:
            self.fail(
                415,
                f"no mapping template for content type {ctype or 'none'!r}",
                gw_type="UNSUPPORTED_MEDIA_TYPE",
            )
            return False
        if chosen is None or chosen is True:
            return True
        try:
            out = chosen.render(
                self.whole_body(),
                self.template_params,
                self.template_context,
                tr.stage_variables,
                self.body_doc,
            )
        except TemplateLimit as exc:
            self.fail(500, f"request mapping template: {exc}", gw_type="API_CONFIGURATION_ERROR")
            return False
        self.body_chunks = [out]
        self.content_length = len(out)
        self.chunked_in = False
        new_type = chosen.content_type_header
        if new_type != self.content_type:
            self.headers = [(n, v) for n, v in self.headers if n.lower() != b"content-type"]
            self.headers.append((b"content-type", new_type))
            self.content_type = new_type
        return True

    def template_params(self) -> dict[str, dict[str, str]]:
        from urllib.parse import parse_qsl

        t = self.target
        assert t is not None
        query = self.url.partition(b"?")[2].decode("latin-1")
        return {
            "path": dict(t.params or {}),
            "querystring": dict(parse_qsl(query, keep_blank_values=True)),
            "header": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.headers},
        }

    def template_context(self) -> dict[str, object]:
        t = self.target
        assert t is not None
        return {
            "requestId": self.request_id,
            "stage": t.stage,
            "httpMethod": self.method,
            "resourcePath": t.phase.resource if t.phase is not None else "",
            "path": self.url.split(b"?", 1)[0].decode("latin-1"),
            "sourceIp": self.client.peer_ip.decode(),
            "authorizer": dict(self.auth_values),
        }

    def finish_transformed(self, rbuf: ResponseBuffer) -> None:
        t = self.target
        assert t is not None and t.transform is not None
        ctype = next((v for n, v in rbuf.headers if n.lower() == b"content-type"), b"").decode("latin-1")
        chosen = (
            None
            if t.transform.is_binary(ctype)
            else select(t.transform.response_templates, ctype, "WHEN_NO_MATCH")
        )
        body = b"".join(rbuf.body)
        headers = rbuf.headers
        if isinstance(chosen, BodyTemplate):

            def params() -> dict[str, dict[str, str]]:
                return {"header": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}}

            try:
                body = chosen.render(body, params, self.template_context, t.transform.stage_variables)
            except TemplateLimit as exc:
                self.fail(500, f"response mapping template: {exc}", gw_type="API_CONFIGURATION_ERROR")
                return
            headers = [(n, v) for n, v in headers if n.lower() != b"content-type"]
            headers.append((b"content-type", chosen.content_type_header))
        self.respond_full(t, rbuf.status, headers, body, rbuf.reason)

    def respond_full(
        self, t: Target, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes, reason: bytes = b""
    ) -> None:
        """A complete response made here (mock, cache, function, transcoded, templated): one write."""
        self.status_code = status
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason)
            if reason
            else STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, phrase(status))
        ]
        for name, value in headers:
            if name.lower() not in RESPONSE_OWN:
                head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        self.end_head(head, t)
        self.client.write(b"".join(head) + (b"" if self.is_head else body))
        self.head_sent = True
        self.complete_response()

    def end_head(self, head: list[bytes], t: Target) -> None:
        """The gateway's own response headers and the blank line that ends the head."""
        head.append(
            b"x-meshgate-request-id: %s\r\nx-meshgate-deployment: %d\r\n"
            % (self.request_id.encode(), t.deployment_id)
        )
        if t.canary:
            head.append(b"x-meshgate-canary: 1\r\n")
        if self.cache_header:
            head.append(b"x-meshgate-cache: %s\r\n" % self.cache_header)
        if self.cors_headers:
            head.append(self.cors_headers)
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")

    def respond_cached(self, t: Target, cached: CachedResponse) -> None:
        self.cache_header = self.cache_header or b"hit"
        self.respond_full(t, cached.status, cached.headers, cached.body)

    def respond_mock(self, t: Target) -> None:
        self.respond_full(t, t.status, t.headers, t.body)

    def fail(
        self,
        status: int,
        reason: str,
        *,
        close: bool = False,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        gw_type: str = "",
        details: tuple[dict[str, str], ...] = (),
    ) -> None:
        """Answer with a gateway error (or abort the client if the response already started)."""
        if not self.head_sent:
            self.status_code = status
            if self.span is not None:
                self.span.span.set_attribute("meshgate.reason", reason)
        if self.finished or self.response_done:
            return
        self._cancel_timer()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.listener = None
            up.close()
        c = self.client
        if self.head_sent:
            log.warning(
                "request %s: %s after the response started; aborting the client", self.request_id, reason
            )
            c.abort()
            self.finished = True
            return
        close = close or not self.keep_alive or (not self.body_complete and status in (413, 400, 431, 408))
        if status >= 500:
            log.info(
                "request %s %s %s -> %d: %s", self.request_id, self.method, self.url[:200], status, reason
            )
        rendered = None
        if self.responses is not None:
            extra = b"".join(n + b": " + v + b"\r\n" for n, v in extra_headers) + self.cors_headers
            rendered = self.responses.render_error(
                status, reason, self.request_id, gw_type=gw_type, close=close, extra=extra, details=details
            )
        if rendered is None:
            if self.cors_headers:
                extra_headers = (*extra_headers, *_split_headers(self.cors_headers))
            rendered = render_http_error(
                status, reason, self.request_id, close=close, extra_headers=extra_headers, details=details
            )
        c.write(rendered)
        self.head_sent = True
        if close:
            self.keep_alive = False
        if not self.body_complete:
            self.discard_body = True
            self.body_chunks = None
        self.complete_response()

    def on_timeout(self) -> None:
        self.timer = None
        t = self.target
        self.retry_ok = False
        self.fail(504, f"integration timeout after {t.timeout_s if t else 0:g}s")

    def _cancel_timer(self) -> None:
        self.deadline = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # UpstreamListener
    def cork(self) -> None:
        self.client.batching += 1

    def uncork(self) -> None:
        c = self.client
        c.batching -= 1
        if not c.batching:
            c.flush_all()

    def on_upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.t_head = perf_counter()
        c = self.client
        t = self.target
        assert t is not None
        self.retry_ok = False
        tr = t.transform
        if tr is not None:
            headers = tr.map_response_headers(headers, self.request_id, t.stage)
            if tr.response_templates and not self.is_head:
                self.rbuf = ResponseBuffer(status, reason, headers)  # rendered at the end (on_upstream_end)
                return
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason or phrase(status))]
        length = -1
        tokens: list[bytes] = []
        for name, value in headers:
            low = name.lower()
            if low in RESPONSE_OWN:
                if low == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        self.fail(502, "invalid upstream response: bad content-length")
                        return
                elif low == b"connection":
                    tokens += [v.strip().lower() for v in value.split(b",")]
                continue
            head += (name, b": ", value, b"\r\n")
        named = [t for t in tokens if t not in (b"keep-alive", b"close")]
        if named:  # headers listed in Connection are hop-by-hop too
            head = [head[0]] + [
                b"".join(head[i : i + 4]) for i in range(1, len(head), 4) if head[i].lower() not in named
            ]
        no_body = self.is_head or status in (204, 304) or 100 <= status < 200
        if no_body:
            if length >= 0:
                head.append(b"content-length: %d\r\n" % length)
        elif length >= 0:
            head.append(b"content-length: %d\r\n" % length)
        elif self.version == "1.1":
            self.out_chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        else:
            self.keep_alive = False  # HTTP/1.0 client, unknown length: close-delimited
        self.end_head(head, t)
        c.write(b"".join(head))
        self.head_sent = True
        cap = self.capture
        if cap is not None:
            if (
                status != 200
                or self.is_head
                or any(
                    n.lower() == b"cache-control" and (b"no-store" in v or b"private" in v)
                    for n, v in headers
                )
            ):
                self.capture = None
            else:
                cap.status = status
                cap.headers = tuple(
                    (n, v) for n, v in headers if n.lower() not in RESPONSE_OWN and n.lower() not in named
                )
        if self.is_head:  # a HEAD response ends at its head (httptools would wait for the announced body)
            up = self.upstream
            self.upstream = None
            if up is not None:
                self._hand_back(up, up.parser.should_keep_alive())  # release: a new parser
            self._cancel_timer()
            self.complete_response()

    def on_upstream_body(self, chunk: bytes) -> None:
        rbuf = self.rbuf
        if rbuf is not None:
            rbuf.size += len(chunk)
            if rbuf.size > TEMPLATE_MAX_INPUT:
                self.rbuf = None
                self.fail(
                    502,
                    "integration response too large for its mapping template",
                    gw_type="INTEGRATION_FAILURE",
                )
                return
            rbuf.body.append(chunk)
            return
        cap = self.capture
        if cap is not None and not cap.add(chunk):
            self.capture = None
        if self.out_chunked:
            self.client.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self.client.write(chunk)

    def on_upstream_end(self, keep_alive: bool) -> None:
        self._cancel_timer()
        up = self.upstream
        self.upstream = None
        rbuf = self.rbuf
        if rbuf is not None:
            self.rbuf = None
            if up is not None:
                self._hand_back(up, keep_alive)
            self.finish_transformed(rbuf)
            return
        if self.out_chunked:
            self.client.write(b"0\r\n\r\n")
        cap = self.capture
        if cap is not None:
            self.capture = None
            cap.store()
        if up is not None:
            self._hand_back(up, keep_alive)
        self.complete_response()

    def _hand_back(self, up: UpstreamConn, keep_alive: bool) -> None:
        """The response is over: pool the upstream connection if both sides allow it, else close it."""
        if keep_alive and self.body_complete and not self.discard_body:
            up.release()
        else:
            up.listener = None
            up.close()

    def on_upstream_error(self, reason: str, before_head: bool) -> None:
        up = self.upstream
        self.upstream = None
        if before_head and self.retry_ok and up is not None and up.reused and not up.got_bytes:
            # A pooled connection the upstream had closed: retry once on a fresh one.
            self.retry_ok = False
            t = self.target
            if t is not None:
                self.client.loop.create_task(self.connect(t))
                return
        if up is not None:
            up.listener = None
        status = 502
        self.fail(status, reason)

    def on_upstream_writable(self, writable: bool) -> None:
        if writable:
            self.client.resume_reading_from("upstream")
        else:
            self.client.pause_reading_from("upstream")

    def metrics_key(self) -> Key:
        t = self.target
        return (t.api, t.stage, t.phase.resource if t.phase else t.path) if t is not None else ("-", "-", "-")

    def record(self) -> None:
        """Telemetry of the exchange just answered: metrics, the access log line, the span's end."""
        metrics = self.client.server.metrics
        if metrics is not None:
            t = self.target
            key = self.metrics_key()
            now = perf_counter()
            integ = (self.t_head or now) - self.t_integration if self.t_integration else 0.0
            metrics.observe(key, self.status_code, now - self.t0, integ, self.cache_header)
            if t is not None and t.access_log and self.client.server.access_log is not None:
                self.client.server.access_log.write(
                    t.access_log,
                    access_context(
                        request_id=self.request_id,
                        source_ip=self.client.peer_ip.decode(),
                        method=self.method,
                        path=self.url.split(b"?", 1)[0].decode("latin-1"),
                        stage=t.stage,
                        api=t.api,
                        route=key[2],
                        status=self.status_code,
                        latency_ms=(now - self.t0) * 1000,
                        integration_latency_ms=integ * 1000,
                        principal=str(self.auth_values.get("principalId", "")),
                        deployment=t.deployment_id,
                    ),
                )
        if self.span is not None:
            self.span.end(self.status_code)
            self.span = None

    def complete_response(self) -> None:
        if not self.response_done:
            self.record()
        self.response_done = True
        self._cancel_timer()
        if self.body_complete or self.discard_body:
            self.client.exchange_done(self)

    def upgraded(self) -> None:
        """The WebSocket handshake is answered (101): the exchange ends here and the connection
        counts as an open WebSocket until it is lost."""
        self.status_code = 101
        self.record()
        self.head_sent = True
        self.finished = True
        self.response_done = True
        metrics = self.client.server.metrics
        if metrics is not None:
            key = self.metrics_key()
            metrics.websockets[key] += 1
            self.client.ws_key = key


class ClientConn(asyncio.Protocol):
    """One client connection."""

    def __init__(self, holder: TableHolder, pool: UpstreamPool, limits: Limits, server: HttpServer) -> None:
        self.holder = holder
        self.pool = pool
        self.limits = limits
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the request being parsed
        self.peer_ip = b"unknown"
        self.closed = False
        self.header_bytes = 0
        self.deadline = 0.0  # loop time; checked by the server's sweep (no timer handle per request)
        self.deadline_cb: Callable[[], None] | None = None
        self.out: list[bytes] = []
        self.batching = 0
        self.flush_scheduled = False
        self.flush_pending = False  # in the server's batch of connections to flush
        self.paused: set[str] = set()
        self.draining = False
        self.drain_left = 0
        self.in_headers = False
        self.raw_head = 0
        self.upgraded = False  # the connection now carries WebSocket frames
        self.upgrade_buffer: list[bytes] = []
        self.ws: WsRelay | None = None
        self.wsapi: WsApiConnection | None = None
        self.ws_key: Key | None = None  # metrics key of the open WebSocket on this connection

    @property
    def paused_by_upstream(self) -> bool:
        return "upstream" in self.paused

    # ------------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
        self.transport.set_write_buffer_limits(high=256 * 1024)
        self.server.conns.add(self)
        self._arm(self.limits.keepalive_timeout_s, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        self._disarm()
        if self.ws is not None:
            self.ws.client_lost()
        if self.wsapi is not None:
            self.wsapi.lost()
        if self.ws_key is not None and self.server.metrics is not None:
            self.server.metrics.websockets[self.ws_key] -= 1
            self.ws_key = None
        for ex in self.queue:
            ex.finished = True
            ex._cancel_timer()
            up = ex.upstream
            if up is not None:
                ex.upstream = None
                up.listener = None
                up.close()
        self.queue.clear()

    def eof_received(self) -> bool | None:
        if self.ws is not None and self.ws.live:
            self.ws.client_eof()
            return True
        return None

    def pause_writing(self) -> None:
        if self.ws is not None:
            self.ws.upstream_pause(True)
        for ex in self.queue:
            if ex.upstream is not None:
                ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.ws is not None:
            self.ws.upstream_pause(False)
        for ex in self.queue:
            if ex.upstream is not None:
                ex.upstream.resume_reading()

    def write(self, data: bytes) -> None:
        """Corked write: joined with what else this callback writes, one syscall per batch."""
        if self.closed:
            return
        self.out.append(data)
        if not self.batching and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def flush_all(self) -> None:
        """At the end of a callback: send what it wrote, once this event-loop iteration's callbacks are done.

        Every connection that wrote in one iteration is flushed back to back
        (HttpServer.flush_batch), like Redis's writes before the loop sleeps:
        a peer that slept is woken once for the batch, not once per request.
        """
        if not self.flush_pending:
            self.flush_pending = True
            self.server.flush_later(self)

    def flush_now(self) -> None:
        """Flush the client side and the upstream of the exchange at the head of the pipeline."""
        self.flush_pending = False
        self.flush()
        if self.queue:
            up = self.queue[0].upstream
            if up is not None:
                up.flush()

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause_reading_from(self, why: str) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(why)

    def resume_reading_from(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # ------------------------------------------------------------------ timers
    def _arm(self, delay: float, cb: Callable[[], None]) -> None:
        self.deadline = self.loop.time() + delay
        self.deadline_cb = cb

    def _disarm(self) -> None:
        self.deadline = 0.0

    def check_deadline(self, now: float) -> None:
        if self.ws is not None:
            self.ws.check(now)
            return
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.deadline and now >= ex.deadline:
            ex.deadline = 0.0
            self.batching += 1
            try:
                ex.on_timeout()
            finally:
                self.batching -= 1
                self.flush_all()
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            cb = self.deadline_cb
            if cb is not None:
                self.batching += 1
                try:
                    cb()
                finally:
                    self.batching -= 1
                    self.flush_all()

    def _idle_timeout(self) -> None:
        if not self.queue:
            self.close()

    def _header_timeout(self) -> None:
        self._reject(408, f"client sent no complete request headers within {self.limits.header_timeout_s:g}s")

    def _body_timeout(self) -> None:
        ex = self.current
        if ex is not None and not ex.body_complete:
            if ex.head_sent:
                self.abort()
            else:
                ex.fail(408, f"client body stalled for {self.limits.body_idle_timeout_s:g}s", close=True)

    # ------------------------------------------------------------------ parsing
    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            if self.wsapi is not None:
                self.wsapi.data(data)
                return
            ws = self.ws
            if ws is not None and ws.live:
                ws.client_data(data)
            elif ws is not None:
                ws.pending_client.append(data)
            else:
                self.upgrade_buffer.append(data)
            return
        if self.draining:
            self.drain_left -= len(data)
            if self.drain_left <= 0:
                self.close()
            return
        self.batching += 1
        try:
            self._feed(data)
        finally:
            self.batching -= 1
            self.flush_all()

    def _feed(self, data: bytes) -> None:
        if self.in_headers or self.current is None:
            self.raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Abort):
                self._reject(cause.status, cause.reason, linger=cause.status == 413)
            else:
                log.error("parser callback failed: %r", cause)
                self._reject(500, "internal error")
        except httptools.HttpParserUpgrade as exc:
            # The request before `offset` was an Upgrade: from here on the bytes are WebSocket frames.
            offset = int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else len(data)
            self.upgraded = True
            self.upgrade_buffer.append(data[offset:])
            if self.ws is not None:
                self.ws.pending_client.append(data[offset:])
                self.upgrade_buffer.clear()
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")
        if self.in_headers and self.raw_head > self.limits.max_header_bytes:
            self._reject(431, f"request header block larger than {self.limits.max_header_bytes} bytes")

    def _reject(self, status: int, reason: str, linger: bool = False) -> None:
        """A request that cannot be parsed further: answer it in order, then close."""
        if self.draining or self.closed:
            return
        ex = self.current
        if ex is None or ex not in self.queue:
            ex = Exchange(self)
            self.queue.append(ex)
        self.current = None
        ex.error = (status, reason)
        ex.keep_alive = False
        ex.discard_body = True
        ex.body_complete = True
        self.draining = True
        self.drain_left = 1 << 62
        self.loop.call_later(self.limits.lingering_s if linger else 0.05, self._close_now)
        if self.queue[0] is ex and not ex.head_sent:
            ex.start()

    def _close_now(self) -> None:
        self.close()

    def on_message_begin(self) -> None:
        ex = Exchange(self)
        self.current = ex
        self.header_bytes = 0
        self.in_headers = True
        if not self.queue:
            self._arm(self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        ex = self.current
        assert ex is not None
        ex.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Abort(414 if len(ex.url) > self.limits.max_header_bytes else 431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.current
        assert ex is not None
        ex.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Abort(431, f"request header block larger than {self.limits.max_header_bytes} bytes")
        if len(ex.headers) > self.limits.max_headers:
            raise _Abort(431, f"more than {self.limits.max_headers} request headers")

    def on_headers_complete(self) -> None:
        ex = self.current
        assert ex is not None
        self.in_headers = False
        self.raw_head = 0
        p = self.parser
        ex.method = p.get_method().decode()
        ex.version = p.get_http_version()
        ex.keep_alive = p.should_keep_alive()
        ex.is_head = ex.method == "HEAD"
        for name, value in ex.headers:
            low = name.lower()
            if low == b"host":
                ex.host = value.decode("latin-1")
            elif low == b"content-length":
                try:
                    ex.content_length = int(value)
                except ValueError:
                    raise _Abort(400, "malformed HTTP request: invalid content-length") from None
            elif low == b"content-type" and not ex.content_type:
                ex.content_type = value
            elif low == b"upgrade" and value.lower() == b"websocket":
                ex.upgrade = True
            elif low == b"transfer-encoding" and b"chunked" in value.lower():
                ex.chunked_in = True
        if ex.chunked_in:
            ex.content_length = -1
        if ex.content_length > self.limits.max_body_bytes:
            ex.error = (
                413,
                f"request body of {ex.content_length} bytes exceeds the {self.limits.max_body_bytes}-byte limit",
            )
            ex.keep_alive = False
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._disarm()
            if ex.error is not None:
                self._start_rejected_body(ex)
                return
            ex.start()
        else:
            if ex.error is not None:
                raise _Abort(*ex.error)
            if len(self.queue) >= 2:
                self.pause_reading_from("pipeline")
        if self.current is ex and not ex.body_complete and (ex.content_length > 0 or ex.chunked_in):
            self._arm(self.limits.body_idle_timeout_s, self._body_timeout)

    def _start_rejected_body(self, ex: Exchange) -> None:
        """413 by Content-Length: answer now, then read and drop the body for a while (lingering close)."""
        self.draining = True
        self.drain_left = ex.content_length
        self.loop.call_later(self.limits.lingering_s, self._close_now)
        ex.start()

    def on_body(self, body: bytes) -> None:
        ex = self.current
        assert ex is not None
        ex.body_received += len(body)
        if ex.body_received > self.limits.max_body_bytes:
            raise _Abort(413, f"request body exceeds the {self.limits.max_body_bytes}-byte limit")
        if self.deadline:
            self.deadline = self.loop.time() + self.limits.body_idle_timeout_s
        ex.feed_body(body)

    def on_message_complete(self) -> None:
        ex = self.current
        assert ex is not None
        self.current = None
        self._disarm()
        ex.end_body()
        if not self.queue and not self.closed and not self.draining:
            self._arm(self.limits.keepalive_timeout_s, self._idle_timeout)

    # ------------------------------------------------------------------ pipeline
    def exchange_done(self, ex: Exchange) -> None:
        if ex.finished:
            return
        ex.finished = True
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if not ex.keep_alive:
            if not self.draining:
                self.close()
            return
        if self.queue:
            nxt = self.queue[0]
            if len(self.queue) < 2:
                self.resume_reading_from("pipeline")
            nxt.start()
        else:
            self.resume_reading_from("pipeline")
            if self.current is None:
                self._arm(self.limits.keepalive_timeout_s, self._idle_timeout)


class HttpServer:
    """The listener and its live connections."""

    def __init__(self, sweep_interval_s: float = 0.1) -> None:
        self.conns: set[ClientConn] = set()
        self.server: asyncio.Server | None = None
        self.sweep_interval_s = sweep_interval_s
        self.sweeper: asyncio.Task[None] | None = None
        self.registry: Registry | None = None  # WebSocket API connections held by this sidecar
        self.telemetry: Telemetry | None = None
        self.metrics: Metrics | None = None
        self.access_log: AccessLog | None = None
        self.session: Callable[[], Any] | None = None  # outbound HTTP for WebSocket API integrations
        self.batch: list[ClientConn] = []  # connections that wrote in this loop iteration

    def flush_later(self, conn: ClientConn) -> None:
        self.batch.append(conn)
        if len(self.batch) == 1:
            conn.loop.call_soon(self.flush_batch)

    def flush_batch(self) -> None:
        batch, self.batch = self.batch, []
        for conn in batch:
            try:
                conn.flush_now()
            except Exception:  # one broken connection must not leave the others' output unsent
                log.exception("flushing a connection failed; closing it")
                conn.abort()

    async def sweep(self) -> None:
        """Fire connection deadlines (header, body-idle, keep-alive timeouts)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            now = loop.time()
            for conn in list(self.conns):
                conn.check_deadline(now)

    async def drain(self, grace_s: float) -> None:
        """Stop accepting; wait up to timeout for in-flight exchanges; close idle connections."""
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while loop.time() < deadline:
            busy = False
            for conn in list(self.conns):
                if conn.queue:
                    busy = True
                else:
                    conn.close()
            if not busy:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.close()
        if self.sweeper is not None:
            self.sweeper.cancel()


async def serve_http(
    holder: TableHolder,
    host: str,
    port: int,
    *,
    limits: Limits = Limits(),
    sock: socket.socket | None = None,
    pool: UpstreamPool | None = None,
    http_server: HttpServer | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    pool = pool or UpstreamPool()
    hs = http_server or HttpServer()
    if sock is not None:
        server = await loop.create_server(
            lambda: ClientConn(holder, pool, limits, hs), sock=sock, backlog=1024
        )
    else:
        server = await loop.create_server(
            lambda: ClientConn(holder, pool, limits, hs), host, port, backlog=1024, reuse_address=True
        )
    hs.server = server
    hs.sweeper = loop.create_task(hs.sweep())
    return server
