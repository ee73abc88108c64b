"""The gRPC listener: HTTP/2 connections from clients, pooled HTTP/2 connections to upstreams.

Both ends are `H2Conn` (sans-I/O) driven by asyncio protocols; each connection's output is written
once per loop iteration. A slow reader holds the writer on the other side: a window is handed back
only when the bytes went on, and not while the other side's socket is paused. `GrpcServer.stop`
is the drain: GOAWAY at once, calls in flight finish within the window, then everything closes.
The calls themselves (routing, filters, relay, endings) are `grpc_relay.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshgate.sidecar import h2wire as w
from meshgate.sidecar.context import RequestContext
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.grpc_relay import Call, RequestHead, UpstreamHead
from meshgate.sidecar.h2bridge import BridgeStream
from meshgate.sidecar.h2conn import H2Conn, Headers
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import Route, TableHolder

if TYPE_CHECKING:
    from meshgate.sidecar.telemetry import Telemetry

log = logging.getLogger("meshgate.sidecar.grpc")


class _Side(asyncio.Protocol):
    """What both ends share: the transport, the flush once per loop iteration, pause bookkeeping."""

    conn: H2Conn

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.held: list[tuple[_Side, int, int]] = []  # window owed to the other side once we resume
        self._flushing = False
        self.closed = False

    def wake(self) -> None:
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self.transport is not None and self.conn.out and not self.closed:
            self.transport.write(self.conn.take())

    def credit(self, sid: int, n: int, other: _Side) -> None:
        """`n` bytes of our stream `sid` went to `other`: hand the window back, unless `other` is
        paused (a slow reader there): then when it resumes."""
        if other.paused:
            other.held.append((self, sid, n))
        else:
            self.conn.consume(sid, n)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        held, self.held = self.held, []
        for side, sid, n in held:
            side.conn.consume(sid, n)

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.feed(data)
        except w.H2Error as exc:
            log.info("HTTP/2 connection error from %s: %s", self.describe(), exc)
            self.conn.goaway(exc.code)
            self._flush()
            self.abort()

    def describe(self) -> str:
        return "peer"

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()


class DownstreamConn(_Side):
    """One client connection."""

    def __init__(self, relay: GrpcRelay) -> None:
        super().__init__(relay.loop)
        self.relay = relay
        self.conn = H2Conn(self, client=False, wake=self.wake)
        self.calls: dict[int, Call] = {}
        self.rest: dict[int, BridgeStream] = {}  # streams that are not gRPC calls (REST over h2c)
        self.peer_ip = "127.0.0.1"
        self.inbound_port = 0  # the app port it was redirected from (sidecar/inbound.py); 0: direct
        self.premature = 0  # streams the client reset before their answer began

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.relay.conns.add(self)
        if self.relay.draining:
            self.conn.goaway()
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.conns.discard(self)
        for call in list(self.calls.values()):
            call.client_reset()
        for stream in list(self.rest.values()):
            stream.client_reset()
        self.relay.closed.set()

    def describe(self) -> str:
        return self.peer_ip

    # -- H2Conn events --

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        call = self.calls.get(sid) or self.rest.get(sid)
        if call is not None:  # trailers from the client end its side
            call.client_data(b"", True)
            return
        if self.relay.http is not None and not _is_grpc(headers):
            self._rest(sid, headers, end_stream, self.relay.http)
            return
        call = self.calls[sid] = Call(self.relay, self, sid)
        try:
            call.start(headers, end_stream)
        except Exception:
            log.exception("gRPC call failed")
            if not call.finished:
                call.fail(GatewayError(500, "internal error"))

    def _rest(
        self, sid: int, headers: Headers, end_stream: bool, http: Callable[[], asyncio.Protocol]
    ) -> None:
        stream = self.rest[sid] = BridgeStream(self, sid, http)
        reason = stream.start(headers, end_stream)
        if reason is not None:
            log.info("malformed HTTP/2 request from %s: %s", self.peer_ip, reason)
            stream.refuse(reason)

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        call = self.calls.get(sid) or self.rest.get(sid)
        if call is None:
            self.conn.consume(sid, len(data))
        else:
            call.client_data(data, end_stream)

    PREMATURE_RESETS = 100  # streams a client may reset before their answer began ...
    PREMATURE_SHARE = 0.5  # ... while they are more than this share of the streams it opened

    def on_reset(self, sid: int, code: int) -> None:
        call = self.calls.get(sid) or self.rest.get(sid)
        if call is None:
            return
        if not call.responded:  # the "rapid reset" attack (CVE-2023-44487): work upstream, none used
            self.premature += 1
            opened = self.conn.last_peer_sid // 2 + 1
            if self.premature > self.PREMATURE_RESETS and self.premature > opened * self.PREMATURE_SHARE:
                log.warning(
                    "closing the HTTP/2 connection from %s: %d streams reset before their answer",
                    self.peer_ip,
                    self.premature,
                )
                self.conn.goaway(w.ENHANCE_YOUR_CALM)
                self._flush()
                self.abort()
        call.client_reset()

    def on_drained(self, sid: int, sent: int) -> None:
        call = self.calls.get(sid)
        if call is not None and call.up is not None:
            call.up.credit(call.up_sid, sent, self)
        elif (stream := self.rest.get(sid)) is not None:
            stream.drained()

    def on_goaway(self, last_sid: int, code: int) -> None:
        """Nothing to do: a client's GOAWAY means it opens no more streams; those in flight finish."""

    def call_finished(self) -> None:
        if self.relay.draining and not self.calls:
            self.wake()
            self.loop.call_soon(self.abort)  # after the last frames are written


class UpstreamConn(_Side):
    """One pooled connection to an upstream gRPC server."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        super().__init__(pool.loop)
        self.pool = pool
        self.key = key
        self.conn = H2Conn(self, client=True, wake=self.wake)
        self.calls: dict[int, Call] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.remove(self)
        for call in list(self.calls.values()):
            call.upstream_lost()

    def describe(self) -> str:
        return f"upstream {self.key[0]}:{self.key[1]}"

    @property
    def usable(self) -> bool:
        return not self.closed and self.conn.can_open

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call.upstream_headers(headers, end_stream)

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        call = self.calls.get(sid)
        if call is None:
            self.conn.consume(sid, len(data))
        else:
            call.upstream_data(data, end_stream)

    def on_reset(self, sid: int, code: int) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call.upstream_reset(code)

    def on_drained(self, sid: int, sent: int) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call.down.credit(call.sid, sent, self)

    def on_goaway(self, last_sid: int, code: int) -> None:
        """The upstream goes away: no new streams here; those it never saw are refused (retryable)."""
        self.pool.remove(self)
        for sid, call in list(self.calls.items()):
            if sid > last_sid:
                call.upstream_reset(w.REFUSED_STREAM)
        if not self.calls:
            self.abort()


class UpstreamPool:
    """Connections per upstream (host, port): one carries many calls; another opens when it is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: dict[tuple[str, int], list[UpstreamConn]] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[UpstreamConn]] = {}

    def pick(self, host: str, port: int) -> UpstreamConn | None:
        for conn in self.conns.get((host, port), ()):
            if conn.usable:
                return conn
        return None

    async def connect(self, host: str, port: int, limit_s: float) -> UpstreamConn:
        key = (host, port)
        pending = self._connecting.get(key)
        if pending is None:
            pending = self._connecting[key] = self.loop.create_task(self._open(key, limit_s))
            pending.add_done_callback(lambda _f: self._connecting.pop(key, None))
        conn = await asyncio.shield(pending)
        return conn if conn.usable else await self.connect(host, port, limit_s)

    async def _open(self, key: tuple[str, int], limit_s: float) -> UpstreamConn:
        async with asyncio.timeout(limit_s):
            _, proto = await self.loop.create_connection(lambda: UpstreamConn(self, key), key[0], key[1])
        self.conns.setdefault(key, []).append(proto)
        return proto

    def remove(self, conn: UpstreamConn) -> None:
        conns = self.conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def __len__(self) -> int:
        return sum(len(c) for c in self.conns.values())

    async def close(self) -> None:
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.abort()
        self.conns.clear()


class GrpcRelay:
    """What every call shares: the route table, telemetry, metrics, the pool, the open connections."""

    def __init__(
        self,
        holder: TableHolder,
        loop: asyncio.AbstractEventLoop,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.holder = holder
        self.loop = loop
        self.telemetry = telemetry
        self.metrics = metrics
        self.channels = self.pool = UpstreamPool(loop)  # `channels`: the admin port's name for it
        self.conns: set[DownstreamConn] = set()
        self.http: Callable[[], asyncio.Protocol] | None = None  # REST over h2c: the HTTP/1.1 listener's
        self.draining = False
        self.closed = asyncio.Event()
        self.counter = 0
        self.heads: dict[Headers, RequestHead] = {}  # by the decoded block (the decoder caches those)
        self.answers: dict[Headers, UpstreamHead] = {}

    HEADS = 1024  # distinct blocks remembered each way

    def head(self, headers: Headers) -> RequestHead:
        if len(self.heads) >= self.HEADS:
            self.heads.clear()
        head = self.heads[headers] = RequestHead(headers)
        return head

    def answer(self, headers: Headers) -> UpstreamHead:
        if len(self.answers) >= self.HEADS:
            self.answers.clear()
        answer = self.answers[headers] = UpstreamHead(headers)
        return answer

    def next_id(self) -> str:
        self.counter += 1
        return f"grpc-{id(self):x}-{self.counter:x}"

    def begin_span(self, ctx: RequestContext, route: Route, method: str) -> None:
        tel = self.telemetry
        if tel is not None and (parent := tel.sample(ctx.headers, route.trace_ratio)) is not None:
            service, _, name = method.strip("/").rpartition("/")
            ctx.trace = tel.begin(
                parent,
                f"{service}/{name}",
                {
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": name,
                    "meshgate.api": route.api,
                    "meshgate.stage": route.stage,
                    "meshgate.route": route.resource,
                    "meshgate.deployment": route.deployment_id,
                    "meshgate.request_id": ctx.request_id,
                },
            )
            route.chain.begin_span(ctx)

    def done(self, call: Call) -> None:
        """Metrics (status class from the HTTP mapping of the gRPC code) and the span's end."""
        status = call.http_status
        route = call.route
        if self.metrics is not None:
            now = time.monotonic()
            key = (route.api, route.stage, route.resource) if route is not None else ("-", "-", "-")
            integ = now - call.t_integration if call.t_integration else 0.0
            self.metrics.observe(key, status, now - call.t0, integ, b"")
        span = call.ctx.trace if call.ctx is not None else None
        if span is not None:
            if span.child is not None and call.code:
                span.child.set_attribute("rpc.grpc.status_code", call.code)
            span.end(status, call.details, {"rpc.grpc.status_code": call.code})


def _is_grpc(headers: Headers) -> bool:
    return any(k == b"content-type" and v.startswith(b"application/grpc") for k, v in headers)


class GrpcServer:
    """The listening socket and the drain."""

    def __init__(self, relay: GrpcRelay, server: asyncio.base_events.Server | None) -> None:
        self.relay = relay
        self.server = server  # None: the relay's connections came in on the HTTP listener

    async def stop(self, grace: float | None) -> None:
        """GOAWAY to every client at once, no new streams; calls in flight have `grace` to finish."""
        relay = self.relay
        relay.draining = True
        if self.server is not None:
            self.server.close()
        for conn in list(relay.conns):
            conn.conn.goaway()
            conn.wake()
            if not conn.calls:
                conn.loop.call_soon(conn.abort)
        deadline = relay.loop.time() + (grace or 0.0)
        while relay.conns and relay.loop.time() < deadline:
            relay.closed.clear()
            try:
                await asyncio.wait_for(relay.closed.wait(), deadline - relay.loop.time())
            except TimeoutError:
                break
        for conn in list(relay.conns):
            conn.abort()


async def serve_grpc(
    holder: TableHolder,
    host: str,
    port: int,
    telemetry: Telemetry | None = None,
    metrics: Metrics | None = None,
    relay: GrpcRelay | None = None,
) -> tuple[GrpcServer, GrpcRelay, int]:
    loop = asyncio.get_running_loop()
    relay = relay or GrpcRelay(holder, loop, telemetry, metrics)
    try:
        server = await loop.create_server(lambda: DownstreamConn(relay), host, port, backlog=1024)
    except OSError:
        return GrpcServer(relay, None), relay, 0
    bound = server.sockets[0].getsockname()[1]
    return GrpcServer(relay, server), relay, bound
