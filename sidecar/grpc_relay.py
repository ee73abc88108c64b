"""The gRPC relay's calls: one `Call` per stream, from the request's headers to the trailers.

A call reads only the request's headers (its metadata): they pick the route and run the route's
filter chain (the HTTP listener's objects). Then the call opens a stream on a pooled upstream
connection and relays frames both ways as they come: messages are never decoded, trailers and
RST_STREAM pass through, the deadline (`grpc-timeout`) is propagated and capped by the integration
timeout, and a window is handed back to one side only when the other side took the bytes.
The connections and the listener are `grpc_server.py`'s.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

from meshgate.sidecar import h2wire as w
from meshgate.sidecar.context import TRACE_HEADERS, RequestContext
from meshgate.sidecar.errors import HTTP_FOR_GRPC, GatewayError
from meshgate.sidecar.filters import Answer, Pending
from meshgate.sidecar.integrations.grpc import GrpcIntegration
from meshgate.sidecar.pipeline import Suspend
from meshgate.sidecar.respond import h2_field_error
from meshgate.sidecar.routing import Miss, Route

if TYPE_CHECKING:
    from meshgate.sidecar.grpc_server import DownstreamConn, GrpcRelay, UpstreamConn
    from meshgate.sidecar.h2conn import Headers

OK, CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE = 0, 1, 4, 14
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host")
)
TRACE = frozenset(h.encode() for h in TRACE_HEADERS)
_GRPC_PATH = re.compile(rb"/[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*/[A-Za-z0-9_\-]+")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """A `grpc-timeout` value (1 to 8 digits and a unit) in seconds; None when malformed."""
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not 0 < len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


def timeout_value(seconds: float) -> bytes:
    ms = max(1, int(seconds * 1000))
    return b"%dm" % ms if ms < 100_000_000 else b"%dS" % min(int(seconds), 99_999_999)


def grpc_message(text: str) -> bytes:
    """Percent-encoding as the gRPC spec asks of `grpc-message`."""
    raw = text.encode("utf-8")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


class Call:
    """One gRPC call: a downstream stream and, once the request phase let it through, an upstream one."""

    __slots__ = (
        "asked",
        "capped",
        "code",
        "ctx",
        "details",
        "down",
        "ended_client",
        "finished",
        "head",
        "held",
        "pending",
        "relay",
        "responded",
        "route",
        "sid",
        "t0",
        "t_integration",
        "timeout",
        "timer",
        "up",
        "up_sid",
    )

    def __init__(self, relay: GrpcRelay, down: DownstreamConn, sid: int) -> None:
        self.relay = relay
        self.down = down
        self.sid = sid
        self.t0 = time.monotonic()
        self.ctx: RequestContext | None = None
        self.route: Route | None = None
        self.head: RequestHead | None = None
        self.asked: float | None = None  # the client's grpc-timeout
        self.up: UpstreamConn | None = None
        self.up_sid = 0
        self.pending: list[tuple[bytes, bool]] | None = []  # client data before the upstream stream
        self.held = 0  # bytes of it not yet handed back to the client
        self.ended_client = False
        self.responded = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.timeout = 0.0
        self.capped = False
        self.code = OK
        self.details = ""
        self.t_integration = 0.0

    # -- the request phase ------------------------------------------------------------------------

    def start(self, headers: Headers, end_stream: bool) -> None:
        self.ended_client = end_stream
        asked = None
        for k, v in headers:
            if k == b"grpc-timeout":  # the one value that changes per call: not part of the head
                asked = parse_timeout(v)
                headers = tuple(h for h in headers if h[0] != b"grpc-timeout")
                break
        head = self.relay.heads.get(headers) or self.relay.head(headers)
        self.head, self.asked = head, asked
        ctx = self.ctx = RequestContext(self.down.peer_ip, self.relay.next_id())
        ctx.raw_headers = list(head.raw)
        ctx.port = self.down.inbound_port
        ctx.method = "POST"
        ctx.host = head.host
        ctx.body_complete = True  # messages stream through; no filter waits for a body
        if head.error is not None:
            self.fail(GatewayError(400, f"malformed HTTP/2 request: {head.error}"))
            return
        if not head.valid:
            self.fail(GatewayError(400, "a gRPC call is a POST to /package.Service/Method"))
            return
        found = resolve(self.relay, ctx, head)
        if isinstance(found, GatewayError):
            self.fail(found)
            return
        self.route = found
        self.relay.begin_span(ctx, found, head.method)
        self._decide(found.chain.run(ctx), found)

    def _decide(self, decision: GatewayError | Answer | Suspend | None, route: Route) -> None:
        assert self.ctx is not None
        if isinstance(decision, Suspend):
            if decision.awaitable is not None:
                self.down.loop.create_task(self._await(decision, route))
                return
            decision = None  # a body wait: not on this path (messages are never held)
        route.chain.end_span(self.ctx, decision, self.relay.metrics, (route.api, route.stage, route.resource))
        if isinstance(decision, Answer):
            self.fail(GatewayError(500, "a response made by the gateway cannot answer a gRPC call"))
        elif decision is not None:
            self.fail(decision)
        elif not self.finished:
            self._forward(route)

    async def _await(self, suspend: Suspend, route: Route) -> None:
        assert suspend.awaitable is not None and self.ctx is not None
        decided = await suspend.awaitable
        if self.finished:
            return
        if isinstance(decided, Pending):  # an awaited decision is final; a second wait is a bug
            decided = GatewayError(500, "a filter's awaited decision was pending again")
        self._decide(route.chain.run(self.ctx, suspend.pos + 1) if decided is None else decided, route)

    # -- to the upstream --------------------------------------------------------------------------

    def _forward(self, route: Route) -> None:
        ctx, head = self.ctx, self.head
        assert ctx is not None and head is not None
        integ = route.integration
        assert isinstance(integ, GrpcIntegration)
        timeout, asked = integ.timeout_s, self.asked
        self.capped = asked is None or asked > timeout
        self.timeout = timeout if self.capped or asked is None else asked
        per_call = w.ENCODER.encode(((b"grpc-timeout", timeout_value(self.timeout)),))
        per_call += w.literal(b"x-meshgate-request-id", ctx.request_id.encode())
        span = ctx.trace
        if span is None:
            block = head.block + per_call
        else:  # the client's trace headers give way to ours
            span.start_child("integration", **{"server.address": integ.host, "server.port": integ.port})
            carrier = [(k.encode(), v.encode()) for k, v in span.carrier().items()]
            block = w.ENCODER.encode([*head.upstream(TRACE), *carrier]) + per_call
        self.t_integration = time.monotonic()
        self.timer = self.down.loop.call_later(self.timeout, self.deadline)
        conn = self.relay.pool.pick(integ.host, integ.port)
        if conn is not None:
            self._attach(conn, block)
        else:
            self.down.loop.create_task(self._connect(integ, block))

    async def _connect(self, integ: GrpcIntegration, block: bytes) -> None:
        try:
            conn = await self.relay.pool.connect(integ.host, integ.port, integ.connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            if not self.finished:
                why = getattr(exc, "strerror", None) or "connect timeout"
                self.fail(GatewayError(503, f"upstream connect failed ({integ.host}:{integ.port}): {why}"))
            return
        if not self.finished:
            self._attach(conn, block)

    def _attach(self, conn: UpstreamConn, block: bytes) -> None:
        self.up = conn
        self.up_sid = sid = conn.conn.open_stream()
        conn.calls[sid] = self
        pending, self.pending = self.pending, None
        conn.conn.send_block(sid, block, self.ended_client and not pending)
        for data, end in pending or ():
            self._to_upstream(data, end)
        if self.held:
            held, self.held = self.held, 0
            self.down.credit(self.sid, held, conn)

    def client_data(self, data: bytes, end: bool) -> None:
        self.ended_client = self.ended_client or end
        if self.finished:
            self.down.conn.consume(self.sid, len(data))
        elif self.pending is not None:
            self.pending.append((data, end))
            self.held += len(data)
        else:
            self._to_upstream(data, end)

    def _to_upstream(self, data: bytes, end: bool) -> None:
        up = self.up
        assert up is not None
        sent = up.conn.send_data(self.up_sid, data, end)
        if sent:
            self.down.credit(self.sid, sent, up)

    # -- from the upstream ------------------------------------------------------------------------

    def upstream_headers(self, headers: Headers, end: bool) -> None:
        if self.finished:
            return
        answer = self.relay.answers.get(headers) or self.relay.answer(headers)
        if answer.error is not None:  # nothing the upstream sent that a client must not get
            if self.up is not None:
                self.up.conn.reset(self.up_sid, w.PROTOCOL_ERROR)
            self.fail(GatewayError(502, f"invalid integration response: {answer.error}"))
            return
        self.responded = True
        if not end:
            self.down.conn.send_block(self.sid, answer.block, False)
            return
        self.code, self.details = answer.code, answer.details  # trailers, or a trailers-only answer
        if answer.code == DEADLINE_EXCEEDED and self.capped:  # the deadline was ours: say so
            self.details = f"integration timeout after {self.timeout:g}s"
            told = grpc_message(self._told(GatewayError(504, self.details)))
            kept = [(k, v) for k, v in answer.headers if k != b"grpc-message"]
            self.down.conn.send_headers(self.sid, [*kept, (b"grpc-message", told)], True)
        else:
            self.down.conn.send_block(self.sid, answer.block, True)
        self.finish()

    def upstream_data(self, data: bytes, end: bool) -> None:
        if self.finished:
            return
        assert self.up is not None
        sent = self.down.conn.send_data(self.sid, data, end)
        if sent:
            self.up.credit(self.up_sid, sent, self.down)
        if end:
            self.finish()

    def upstream_reset(self, code: int) -> None:
        if self.finished:
            return
        if code == w.REFUSED_STREAM or (not self.responded and code != w.CANCEL):
            self.fail(GatewayError(503, f"upstream refused the stream (HTTP/2 error {code})"))
            return
        self.code, self.details = (CANCELLED if code == w.CANCEL else UNAVAILABLE), f"upstream reset {code}"
        self.down.conn.reset(self.sid, code)
        self.finish()

    def upstream_lost(self) -> None:
        if self.finished:
            return
        if not self.responded:
            self.fail(GatewayError(503, "upstream connection lost"))
            return
        self.code, self.details = UNAVAILABLE, "upstream connection lost"
        self.down.conn.reset(self.sid, w.INTERNAL_ERROR)
        self.finish()

    # -- endings ----------------------------------------------------------------------------------

    def client_reset(self) -> None:
        """The client cancelled (RST_STREAM) or went away: the upstream call is cancelled too."""
        if self.finished:
            return
        if self.up is not None:
            self.up.conn.reset(self.up_sid, w.CANCEL)
        self.code, self.details = CANCELLED, "client cancelled"
        self.finish()

    def deadline(self) -> None:
        self.timer = None
        if self.finished:
            return
        if self.up is not None:
            self.up.conn.reset(self.up_sid, w.CANCEL)
        if self.capped:
            self.fail(GatewayError(504, f"integration timeout after {self.timeout:g}s"))
        else:  # the client's own deadline: it gave up already (or is about to)
            self.code, self.details = DEADLINE_EXCEEDED, "Deadline Exceeded"
            self._trailers(DEADLINE_EXCEEDED, b"Deadline Exceeded")

    def fail(self, err: GatewayError) -> None:
        """The gateway ends the call with the table's gRPC code; the reason only for insiders."""
        self.code, self.details = int(err.grpc_code), err.reason
        self._trailers(self.code, grpc_message(self._told(err)))

    def _told(self, err: GatewayError) -> str:
        assert self.ctx is not None
        return (
            err.reason
            if self.relay.holder.table.shows_reason(self.route, self.ctx.source_ip)
            else err.message
        )

    def _trailers(self, code: int, message: bytes) -> None:
        status = [(b"grpc-status", b"%d" % code), (b"grpc-message", message)]
        head = [] if self.responded else [(b":status", b"200"), (b"content-type", b"application/grpc")]
        self.down.conn.send_headers(self.sid, head + status, True)
        if not self.ended_client and not self.down.conn.blocked.get(self.sid):
            self.down.conn.reset(self.sid, w.NO_ERROR)  # the client need not send the rest
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.down.calls.pop(self.sid, None)
        if self.up is not None:
            self.up.calls.pop(self.up_sid, None)
        self.relay.done(self)
        self.down.call_finished()

    @property
    def http_status(self) -> int:
        return HTTP_FOR_GRPC.get(self.code, 500)


def resolve(relay: GrpcRelay, ctx: RequestContext, head: RequestHead) -> Route | GatewayError:
    """The route for a call: `/{stage}/pkg.Service/Method` by the `x-meshgate-stage` header, else the
    only stage with gRPC routes."""
    table = relay.holder.table
    if head.stage:
        ctx.set_target(f"/{head.stage}{head.method}".encode("latin-1", "replace"))
        found = table.resolve(ctx)
    else:
        ctx.set_target(head.path)
        found = table.resolve_grpc(ctx)
    if isinstance(found, Miss):
        return GatewayError(found.status, found.reason)
    if found.integration is None or found.integration.kind != "grpc":
        return GatewayError(405, f"route for {head.method} is not a gRPC route")
    ctx.route = found
    return found


class RequestHead:
    """What one distinct request header block says, worked out once (clients send the same block
    for every call of a method): pseudo-headers, metadata, and the upstream block without the
    per-call values."""

    __slots__ = ("block", "error", "host", "method", "path", "raw", "stage", "valid")

    def __init__(self, headers: Headers) -> None:
        self.error = h2_field_error(headers)  # checked once per distinct block, never per call
        pseudo = {k: v for k, v in headers if k[:1] == b":"}
        self.path = pseudo.get(b":path", b"")
        # a gRPC path is /Service/Method exactly: no dot segments, escapes or extra segments, so the
        # route matched and the path the upstream gets are the same
        self.valid = pseudo.get(b":method") == b"POST" and _GRPC_PATH.fullmatch(self.path) is not None
        self.method = self.path.decode("latin-1")
        authority = pseudo.get(b":authority", b"")
        self.host = authority.decode("latin-1")
        self.raw = tuple((k, v) for k, v in headers if k[:1] != b":")
        self.stage = next((v.decode("latin-1") for k, v in self.raw if k == b"x-meshgate-stage"), "")
        self.block = w.ENCODER.encode(self.upstream(frozenset()))

    def upstream(self, drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
        """The upstream request's headers but the per-call ones, without `drop` too."""
        pseudo = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", self.path)]
        pseudo.append((b":authority", self.host.encode("latin-1")))
        return pseudo + [(k, v) for k, v in self.raw if k not in HOP_BY_HOP and k not in drop]


class UpstreamHead:
    """What one distinct response header block (or trailers) from an upstream says, worked out once:
    the block for the client, and the status a trailer carries."""

    __slots__ = ("block", "code", "details", "error", "headers")

    def __init__(self, headers: Headers) -> None:
        self.error = h2_field_error(headers)
        self.headers = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        self.block = w.ENCODER.encode(self.headers)
        self.code, self.details = OK, ""
        for k, v in self.headers:
            if k == b"grpc-status":
                self.code = int(v) if v.isdigit() else 2  # UNKNOWN
            elif k == b"grpc-message":
                self.details = v.decode("latin-1")
