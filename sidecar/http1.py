"""The HTTP/1.1 listener: the wire only (asyncio.Protocol + httptools, callbacks, no framework).

Owns client connections: parsing with limits (header bytes and count, body
size, slow clients), keep-alive, pipelining (one exchange at a time, in
order), backpressure, and writes corked per callback and flushed once per
event-loop iteration. Each parsed request becomes a `RequestContext` and an
`Exchange`; after a 101 the connection's bytes go to the exchange's `Tunnel`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httptools
from meshgate.sidecar.accesslog import AccessLog
from meshgate.sidecar.context import RequestContext
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.exchange import DONE, QUEUED, STREAMING, Exchange, Tunnel
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import TableHolder
from meshgate.sidecar.upstream import UpstreamPool
from meshgate.sidecar.wsapi import Registry

if TYPE_CHECKING:
    from meshgate.sidecar.telemetry import Telemetry

log = logging.getLogger("meshgate.sidecar.http")


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0
    min_body_rate_bps: float = 1024.0  # after the grace period a body must average this (0: no minimum)
    body_rate_grace_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    lingering_s: float = 2.0


class _Abort(Exception):
    """Raised inside parser callbacks to stop parsing with a status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Wire(asyncio.Protocol):
    """A connection's output side: writes corked per callback and flushed once per loop iteration,
    reading paused for named reasons, and one deadline checked by the server's sweep."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.out: list[bytes] = []
        self.batching = 0
        self.flush_scheduled = False
        self.flush_pending = False  # in the server's batch of connections to flush
        self.paused: set[str] = set()
        self.deadline = 0.0  # loop time; checked by the server's sweep (no timer handle per request)
        self.deadline_cb: Callable[[], None] | None = None

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
        self.flush_pending = False
        self.flush()

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

    def _arm(self, delay: float, cb: Callable[[], None]) -> None:
        self.deadline = self.loop.time() + delay
        self.deadline_cb = cb

    def _disarm(self) -> None:
        self.deadline = 0.0


class ClientConn(_Wire):
    """One client connection."""

    def __init__(self, holder: TableHolder, pool: UpstreamPool, limits: Limits, server: HttpServer) -> None:
        super().__init__(server)
        self.holder = holder
        self.pool = pool
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the request being parsed
        self.peer_ip = "unknown"
        self.inbound_port = 0  # the app port it was redirected from (sidecar/inbound.py); 0: direct
        self.header_bytes = 0
        self.body_since = 0.0  # when the body now being read started
        self.body_last = 0.0  # when its last bytes came
        self.draining = False
        self.drain_left = 0
        self.in_headers = False
        self.raw_head = 0
        self.upgraded = False  # the parser stopped at an Upgrade: the bytes after it are not HTTP
        self.upgrade_buffer: list[bytes] = []  # those bytes, until a tunnel takes the connection
        self.tunnel: Tunnel | None = None
        self.tunnel_lost: Callable[[], None] | None = None
        self.upstream_paused_at = 0.0  # when the upstream's full write buffer paused our reading

    @property
    def paused_by_upstream(self) -> bool:
        return "upstream" in self.paused

    def pause_reading_from(self, why: str) -> None:
        if why == "upstream" and why not in self.paused:
            self.upstream_paused_at = self.loop.time()
        super().pause_reading_from(why)

    def resume_reading_from(self, why: str) -> None:
        if why == "upstream" and why in self.paused:  # the time we did not read is not the client's
            held = self.loop.time() - self.upstream_paused_at
            self.body_since += held
            self.body_last += held
            ex = self.current
            if ex is not None and self.deadline and self.deadline_cb == self._body_timeout:
                self.deadline = self._body_deadline(ex.ctx.body_received)
        super().resume_reading_from(why)

    # ------------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0])
        self.transport.set_write_buffer_limits(high=256 * 1024)
        self.server.conns.add(self)
        self.server.accepted += 1
        self._arm(self.limits.keepalive_timeout_s, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        self._disarm()
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.lost()
            if self.tunnel_lost is not None:
                self.tunnel_lost()
        for ex in self.queue:
            ex.done()
        self.queue.clear()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.eof()
        return None

    def pause_writing(self) -> None:
        self._pace(True)

    def resume_writing(self) -> None:
        self._pace(False)

    def _pace(self, paused: bool) -> None:
        """The client's write buffer is full (or drained): pause (or resume) what feeds it."""
        if self.tunnel is not None:
            self.tunnel.pause(paused)
        for ex in self.queue:
            if ex.call is not None:
                ex.call.pause(paused)

    def flush_now(self) -> None:
        """Flush the client side and the integration call of the exchange at the head of the pipeline."""
        self.flush_pending = False
        self.flush()
        if self.queue:
            call = self.queue[0].call
            if call is not None:
                call.flush()

    def take_over(self, ex: Exchange, handshake: bytes, tunnel: Tunnel, lost: Callable[[], None]) -> None:
        """After a 101: the connection's bytes, those already read included, now belong to `tunnel`."""
        self.flush()
        if self.transport is not None:
            self.transport.write(handshake)
        self.queue.clear()
        self._disarm()
        self.tunnel = tunnel
        self.tunnel_lost = lost
        buffered, self.upgrade_buffer = self.upgrade_buffer, []
        for data in buffered:
            if data:
                tunnel.data(data)

    # ------------------------------------------------------------------ timers
    def check_deadline(self, now: float) -> None:
        if self.tunnel is not None:
            self.tunnel.check(now)
            return
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.deadline and now >= ex.deadline:
            ex.deadline = 0.0
            self._in_batch(ex.on_timeout)
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            cb = self.deadline_cb
            if cb is not None:
                self._in_batch(cb)

    def _in_batch(self, cb: Callable[[], None]) -> None:
        self.batching += 1
        try:
            cb()
        finally:
            self.batching -= 1
            self.flush_all()

    def _idle_timeout(self) -> None:
        if not self.queue:
            self.close()

    def close_idle_by(self, when: float) -> None:
        """Draining: an idle keep-alive connection closes at `when` (loop time) unless a request begins first."""
        if self.deadline > when and self.deadline_cb == self._idle_timeout and not self.queue:
            self.deadline = when

    def _header_timeout(self) -> None:
        self._reject(408, f"client sent no complete request headers within {self.limits.header_timeout_s:g}s")

    def _body_timeout(self) -> None:
        ex = self.current
        if self.paused_by_upstream:  # we stopped reading, not the client: its clock starts again on resume
            self._arm(self.limits.body_idle_timeout_s, self._body_timeout)
            return
        if ex is not None and not ex.ctx.body_complete:
            if ex.state == STREAMING:
                self.abort()
            elif self.loop.time() - self.body_last < self.limits.body_idle_timeout_s:
                rate = self.limits.min_body_rate_bps
                ex.fail(GatewayError(408, f"client body slower than {rate:g} bytes/s", close=True))
            else:
                idle = self.limits.body_idle_timeout_s
                ex.fail(GatewayError(408, f"client body stalled for {idle:g}s", close=True))

    # ------------------------------------------------------------------ parsing
    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            if self.tunnel is not None:
                self.tunnel.data(data)
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
            ex = Exchange(self, self._context())
            self.queue.append(ex)
        self.current = None
        ex.error = GatewayError(status, reason, close=True)
        ex.keep_alive = False
        ex.discard_body = True
        ex.ctx.body_complete = True
        self.draining = True
        self.drain_left = 1 << 62
        self.loop.call_later(self.limits.lingering_s if linger else 0.05, self._close_now)
        if self.queue[0] is ex:
            if ex.state == QUEUED:
                ex.start()
            elif ex.awaiting_response:  # already started (e.g. its body outgrew the limit): answer now
                ex.fail(ex.error)

    def _close_now(self) -> None:
        self.close()

    def _context(self) -> RequestContext:
        ctx = RequestContext(self.peer_ip)
        ctx.port = self.inbound_port
        return ctx

    def on_message_begin(self) -> None:
        self.current = Exchange(self, self._context())
        self.header_bytes = 0
        self.in_headers = True
        if not self.queue:
            self._arm(self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        ex = self.current
        assert ex is not None
        ctx = ex.ctx
        ctx.target += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Abort(
                414 if len(ctx.target) > self.limits.max_header_bytes else 431, "request line too long"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.current
        assert ex is not None
        raw = ex.ctx.raw_headers
        raw.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Abort(431, f"request header block larger than {self.limits.max_header_bytes} bytes")
        if len(raw) > self.limits.max_headers:
            raise _Abort(431, f"more than {self.limits.max_headers} request headers")

    def on_headers_complete(self) -> None:
        ex = self.current
        assert ex is not None
        self.in_headers = False
        self.raw_head = 0
        p = self.parser
        ctx = ex.ctx
        ctx.method = p.get_method().decode()
        ctx.set_target(ctx.target)
        ex.http10 = p.get_http_version() != "1.1"
        ex.keep_alive = p.should_keep_alive() and not self.server.draining  # draining: answer, then close
        ex.is_head = ctx.method == "HEAD"
        hosts = 0
        for name, value in ctx.raw_headers:  # what the headers say about routing and framing
            low = name.lower()
            if low == b"host":
                ctx.host = value.decode("latin-1")
                hosts += 1
            elif low == b"content-length":
                try:
                    ctx.content_length = int(value)
                except ValueError:
                    raise _Abort(400, "malformed HTTP request: invalid content-length") from None
            elif low == b"content-type" and not ctx.content_type:
                ctx.content_type = value
            elif low == b"upgrade" and value.lower() == b"websocket":
                ex.upgrade = True
            elif low == b"transfer-encoding" and b"chunked" in value.lower():
                ctx.chunked = True
            elif low == b"expect" and value.lower() == b"100-continue":
                ex.expect_continue = True
        if hosts != 1 and (hosts or not ex.http10):  # RFC 9112 §3.2: exactly one (HTTP/1.0: at most one)
            why = "more than one Host header" if hosts else "no Host header"
            ex.error = GatewayError(400, f"malformed HTTP request: {why}", close=True)
        if ctx.chunked:
            ctx.content_length = -1
        if ctx.content_length > self.limits.max_body_bytes:
            limit = self.limits.max_body_bytes
            ex.error = GatewayError(
                413, f"request body of {ctx.content_length} bytes exceeds the {limit}-byte limit"
            )
            ex.keep_alive = False
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._disarm()
            if ex.error is not None and ex.error.status == 413:
                self._start_rejected_body(ex)  # answer, then read and drop the body a while
                return
            ex.start()  # (a request refused by its head alone is answered and closed by start)
        else:
            if ex.error is not None:
                raise _Abort(ex.error.status, ex.error.reason)
            self.pause_reading_from("pipeline")
        if self.current is ex and not ctx.body_complete and (ctx.content_length > 0 or ctx.chunked):
            self.body_since = self.body_last = self.loop.time()
            lim = self.limits
            first = min(lim.body_idle_timeout_s, lim.body_rate_grace_s) if lim.min_body_rate_bps > 0 else None
            self._arm(first or lim.body_idle_timeout_s, self._body_timeout)

    def _start_rejected_body(self, ex: Exchange) -> None:
        """413 by Content-Length: answer now, then read and drop the body for a while (lingering close)."""
        self.draining = True
        self.drain_left = ex.ctx.content_length
        self.loop.call_later(self.limits.lingering_s, self._close_now)
        ex.start()

    def on_body(self, body: bytes) -> None:
        ex = self.current
        assert ex is not None
        ctx = ex.ctx
        ctx.body_received += len(body)
        if ctx.body_received > self.limits.max_body_bytes:
            raise _Abort(413, f"request body exceeds the {self.limits.max_body_bytes}-byte limit")
        if self.deadline:  # the body's deadline moves on
            self.body_last = self.loop.time()
            self.deadline = self._body_deadline(ctx.body_received)
        ex.feed_body(body)

    def _body_deadline(self, received: int) -> float:
        """The idle timeout from the body's last bytes, capped by the minimum rate."""
        lim = self.limits
        deadline = self.body_last + lim.body_idle_timeout_s
        if lim.min_body_rate_bps > 0:
            deadline = min(
                deadline, self.body_since + lim.body_rate_grace_s + received / lim.min_body_rate_bps
            )
        return deadline

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
        if ex.state == DONE:
            return
        ex.done()
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
        self.batch: list[_Wire] = []  # connections that wrote in this loop iteration
        self.draining = False  # after SIGTERM (sidecar/drain.py): every response closes its connection
        self.accepted = 0  # connections accepted so far

    def flush_later(self, conn: _Wire) -> None:
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
    entrance: Callable[[Callable[[], asyncio.Protocol]], Callable[[], asyncio.Protocol]] | None = None,
) -> asyncio.Server:
    """The HTTP/1.1 listener; `entrance` (sidecar/inbound.py) may put a protocol sniffer first."""
    loop = asyncio.get_running_loop()
    pool = pool or UpstreamPool()
    hs = http_server or HttpServer()

    def conn() -> ClientConn:
        return ClientConn(holder, pool, limits, hs)

    factory: Callable[[], asyncio.Protocol] = conn if entrance is None else entrance(conn)

    if sock is not None:
        server = await loop.create_server(factory, sock=sock, backlog=1024)
    else:
        server = await loop.create_server(factory, host, port, backlog=1024, reuse_address=True)
    hs.server = server
    hs.sweeper = loop.create_task(hs.sweep())
    return server
