"""The exchange: one request's lifecycle, from its parsed head to its recorded response.

An explicit state machine (`State`, transitions in `_NEXT`, as h11 does) over
one `RequestContext`: route match -> the route's filter chain -> its
integration -> the response, written only through `respond`. The listener
talks to it through `Connection`; integrations through `respond_full`, `send_head`,
`finish`, `fail` and `upgraded`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, cast

from meshgate.sidecar import respond
from meshgate.sidecar.context import RequestContext, normalize_path
from meshgate.sidecar.errors import GatewayError, internal
from meshgate.sidecar.filters import Answer, Decision
from meshgate.sidecar.filters.cache import Capture
from meshgate.sidecar.integrations import protocol_mismatch
from meshgate.sidecar.integrations.websocket_api import manage_connection
from meshgate.sidecar.observe import record
from meshgate.sidecar.pipeline import Suspend
from meshgate.sidecar.routing import Miss, Route

if TYPE_CHECKING:
    from meshgate.sidecar.filters.transform import TransformFilter
    from meshgate.sidecar.http1 import HttpServer
    from meshgate.sidecar.routing import TableHolder
    from meshgate.sidecar.upstream import UpstreamPool

log = logging.getLogger("meshgate.sidecar.http")


class State(enum.IntEnum):
    """An exchange's state; ordered, so "still awaiting its response" is a range check."""

    QUEUED = 0  # parsed, waiting for the requests before it on the connection
    FILTERING = 1  # route match and request filters (may wait for I/O or the body)
    INTEGRATING = 2  # the integration is called; no response head sent yet
    STREAMING = 3  # the response head is sent, its body flows
    RESPONDED = 4  # the response is complete (the request body may still arrive)
    UPGRADED = 5  # 101 sent: the connection carries WebSocket frames now
    DONE = 6  # out of the connection's pipeline


# The hot path holds and compares plain ints: looking up an Enum member costs ~70 ns in CPython 3.11,
# and an exchange checks its state a dozen times per request. State names them (and the messages).
QUEUED, FILTERING, INTEGRATING, STREAMING, RESPONDED, UPGRADED, DONE = (int(s) for s in State)

_NEXT: tuple[int, ...] = tuple(  # indexed by the current state: a bit per allowed next state
    sum(1 << int(n) for n in nexts)
    for nexts in (
        (State.FILTERING, State.DONE),
        (State.INTEGRATING, State.RESPONDED, State.DONE),
        (State.STREAMING, State.RESPONDED, State.UPGRADED, State.DONE),
        (State.RESPONDED, State.DONE),
        (State.DONE,),
        (State.DONE,),
        (),
    )
)


class InvalidTransition(RuntimeError):
    """A bug: the exchange was driven out of order."""


class Tunnel(Protocol):
    """What takes over a connection after a 101 (a WebSocket relay or a WebSocket API connection)."""

    def data(self, data: bytes) -> None: ...
    def eof(self) -> bool | None: ...
    def lost(self) -> None: ...
    def pause(self, paused: bool) -> None: ...
    def check(self, now: float) -> None: ...


class Connection(Protocol):
    """What an exchange needs from the client connection that carries it."""

    loop: asyncio.AbstractEventLoop
    server: HttpServer
    holder: TableHolder
    pool: UpstreamPool
    transport: asyncio.Transport | None
    closed: bool
    batching: int

    @property
    def paused_by_upstream(self) -> bool: ...

    def write(self, data: bytes) -> None: ...
    def flush_all(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading_from(self, why: str) -> None: ...
    def resume_reading_from(self, why: str) -> None: ...
    def exchange_done(self, ex: Exchange) -> None: ...
    def take_over(self, ex: Exchange, handshake: bytes, tunnel: Tunnel, lost: Callable[[], None]) -> None: ...


class Call(Protocol):
    """An integration call in flight, as the exchange may need to stop or pace it."""

    def cancel(self) -> None: ...
    def pause(self, paused: bool) -> None: ...
    def flush(self) -> None: ...


class BodySink(Protocol):
    """Where the rest of the request body goes once the integration request is written."""

    def body(self, chunk: bytes) -> None: ...
    def body_end(self) -> None: ...


# What a request body may pile up in the sidecar while its upstream connection is being made (then
# reading the client pauses until the connection takes the body): the transports' high-water mark.
HELD_BODY_BYTES = 256 * 1024


class _RequestBody:
    """The exchange's request-body side: what the listener feeds in, who waits for the whole body,
    and the 100 Continue a client that expects one is owed before it sends it."""

    __slots__ = ("discard_body", "expect_continue", "on_body", "sink")  # set up by Exchange.__init__
    discard_body: bool  # the rest of the request body is read and dropped
    expect_continue: bool  # the client waits for 100 Continue before sending its body
    on_body: Callable[[], None] | None  # what waits for the whole request body
    sink: BodySink | None  # where the body goes once the integration request is written
    conn: Connection
    ctx: RequestContext
    state: int

    # ------------------------------------------------------------------ request body (from the listener)
    def feed_body(self, chunk: bytes) -> None:
        if self.discard_body:
            return
        sink = self.sink
        if sink is not None:
            sink.body(chunk)
        elif self.ctx.body_chunks is not None:
            self.ctx.body_chunks.append(chunk)
            if (
                self.state == INTEGRATING
                and self.on_body is None
                and self.ctx.body_received > HELD_BODY_BYTES
            ):
                self.conn.pause_reading_from("upstream")  # its connection is not up yet: it resumes us

    def end_body(self) -> None:
        ctx = self.ctx
        ctx.body_complete = True
        sink = self.sink  # a sink set by what resumes below has the whole body already
        resume, self.on_body = self.on_body, None
        if resume is not None and self.state == FILTERING:
            resume()
        if sink is not None and ctx.chunked and not self.discard_body:
            sink.body_end()
        if self.state == RESPONDED:
            self.conn.exchange_done(cast("Exchange", self))

    def wait_for_body(self, resume: Callable[[], None]) -> None:
        """Resume once the whole request body is here (asking a client that expects it for it)."""
        self.on_body = resume
        if self.expect_continue:
            self.send_continue()

    def send_continue(self) -> None:
        """RFC 9110 §10.1.1: the request got past everything that could refuse it without its body."""
        self.expect_continue = False
        if not self.ctx.body_complete:
            self.conn.write(respond.CONTINUE)


class Exchange(_RequestBody):
    """One client request and its response."""

    __slots__ = (
        "call",
        "conn",
        "ctx",
        "deadline",
        "error",
        "http10",
        "is_head",
        "keep_alive",
        "route",
        "route_transform",
        "state",
        "status_code",
        "t0",
        "t_head",
        "t_integration",
        "timer",
        "upgrade",
    )

    def __init__(self, conn: Connection, ctx: RequestContext) -> None:
        self.conn = conn
        self.ctx = ctx
        self.t0 = perf_counter()  # latencies: uvloop's loop.time() only has millisecond resolution
        self.state = QUEUED  # a State, as a plain int
        self.is_head = False
        self.keep_alive = True
        self.http10 = False
        self.expect_continue = False  # the client waits for 100 Continue before sending its body
        self.upgrade = False
        self.discard_body = False  # the rest of the request body is read and dropped
        self.error: GatewayError | None = None  # set by the listener: a request it cannot parse
        self.route: Route | None = None
        self.route_transform: TransformFilter | None = None
        self.on_body: Callable[[], None] | None = None  # what waits for the whole request body
        self.call: Call | None = None
        self.sink: BodySink | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.status_code = 0
        self.t_head = 0.0
        self.t_integration = 0.0

    def _to(self, new: int) -> None:
        if not _NEXT[self.state] >> new & 1:
            was, now = State(self.state).name, State(new).name
            raise InvalidTransition(f"exchange {self.ctx.request_id}: {was} -> {now}")
        self.state = new

    @property
    def awaiting_response(self) -> bool:
        """Still waiting for its response head (filters or integration), on a live connection."""
        return FILTERING <= self.state <= INTEGRATING and not self.conn.closed

    # ------------------------------------------------------------------ request phase
    def start(self) -> None:
        if not _NEXT[self.state] >> FILTERING & 1:  # self._to(FILTERING), inlined: the hot path
            self._to(FILTERING)  # raises
        self.state = FILTERING
        if self.error is not None:
            self.fail(self.error)
            return
        ctx = self.ctx
        if not ctx.path.startswith("/"):
            self.fail(
                GatewayError(
                    400,
                    f"malformed HTTP request: request target {ctx.path[:100]!r} is not an origin-form path",
                )
            )
            return
        normal = normalize_path(ctx.path)  # the one path routes, authorizers, caches and backends see
        if normal is None:
            self.fail(
                GatewayError(
                    400, "malformed HTTP request: the path climbs above its root or holds a control character"
                )
            )
            return
        ctx.path = normal
        if ctx.path.startswith("/@connections/"):
            manage_connection(self, ctx.path[len("/@connections/") :])
            return
        try:
            found = self.conn.holder.table.resolve(ctx)
        except Exception:
            log.exception("route resolution failed (request %s)", ctx.request_id)
            self.fail(internal())
            return
        if isinstance(found, Miss):
            self._miss(found)
            return
        self.route = route = found
        ctx.route = route
        self.route_transform = route.chain.transform
        tel = self.conn.server.telemetry
        if tel is not None:
            tel.trace_request(ctx, route)
        self._run_chain(0)

    def _miss(self, miss: Miss) -> None:
        """No route: the Api's own steps still run (a private Api refuses outsiders, CORS answers
        preflights and decorates the error), then the miss is the answer."""
        if miss.chain.filters:
            decision = miss.chain.run(self.ctx)  # policy and CORS: never waits
            if isinstance(decision, (GatewayError, Answer)):
                self._decided(decision, miss.responses)
                return
        extra = ((b"allow", miss.allow.encode()),) if miss.allow else ()
        self.fail(GatewayError(miss.status, miss.reason, headers=extra), miss.responses)

    def _run_chain(self, start: int) -> None:
        route = self.route
        assert route is not None
        try:
            decision = route.chain.run(self.ctx, start)
        except Exception:
            log.exception("request phase failed (request %s)", self.ctx.request_id)
            decision = internal()
        if decision is None:
            if self.ctx.trace is not None or self.ctx.authorizer_s:
                self._phase_over(None)
            if route.needs_body and not self.ctx.body_complete:
                self.wait_for_body(functools.partial(self._integrate, route))  # it wants the whole body
                return
            self._integrate(route)
        elif isinstance(decision, Suspend):
            if decision.awaitable is None:
                self.wait_for_body(functools.partial(self._run_chain, decision.pos))
            else:
                self.conn.loop.create_task(self._await(decision.pos, decision.awaitable))
        else:
            self._phase_over(decision)
            self._decided(decision, route.responses)

    async def _await(self, pos: int, pending: Awaitable[Decision]) -> None:
        try:
            decision = await pending
        except Exception:
            log.exception("request phase failed (request %s)", self.ctx.request_id)
            decision = internal()
        if not self.awaiting_response:
            return
        if decision is None:
            self._run_chain(pos + 1)
            return
        assert isinstance(decision, (GatewayError, Answer))
        self._phase_over(decision)
        self._decided(decision, self.route.responses if self.route is not None else None)

    def _phase_over(self, decision: Decision) -> None:
        """The request phase ended: its span and the authorizer's latency."""
        ctx = self.ctx
        route = self.route
        if route is not None and (ctx.trace is not None or ctx.authorizer_s):
            route.chain.end_span(ctx, decision, self.conn.server.metrics, self.metrics_key())

    def _decided(self, decision: GatewayError | Answer, responses: Any) -> None:
        if isinstance(decision, GatewayError):
            self.fail(decision, responses)
            return
        self.respond_full(decision.status, decision.headers, decision.body, cors=decision.cors)

    def _integrate(self, route: Route) -> None:
        integ = route.integration
        assert integ is not None
        if integ.upgrade != self.upgrade:
            self.fail(protocol_mismatch(integ))
            return
        added = self.ctx.upstream_headers  # from claims or an authorizer's context: every integration
        if added and (refusal := respond.refuse_request_headers(added)) is not None:
            self.fail(refusal)
            return
        if not _NEXT[self.state] >> INTEGRATING & 1:  # self._to(INTEGRATING), inlined: the hot path
            self._to(INTEGRATING)  # raises
        self.state = INTEGRATING
        if self.expect_continue:
            self.send_continue()
        integ.start(self)

    def integrating(self) -> None:
        """The request phase is over: the backend is called now (the @connections API's way in)."""
        self._to(INTEGRATING)

    # ------------------------------------------------------------------ responses (from integrations)
    def tail(self) -> bytes:
        route, ctx = self.route, self.ctx
        return respond.tail(
            ctx.request_id,
            route.headers if route is not None else b"",
            ctx.cache_header,
            ctx.cors_headers,
            not self.keep_alive,
            self.http10,
        )

    def respond_full(
        self,
        status: int,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        reason: bytes = b"",
        cors: bool = True,
    ) -> None:
        """A complete response made here (mock, cache, function, transcoded, templated): one write."""
        if not self.awaiting_response:
            return
        self.status_code = status
        if not cors:
            self.ctx.cors_headers = b""
        if self.expect_continue and not self.ctx.body_complete:
            self.keep_alive = False  # answered before the body the client holds back: close after
        headers = headers if isinstance(headers, (list, tuple)) else tuple(headers)
        try:
            data = respond.full(status, headers, body, self.tail(), reason=reason, is_head=self.is_head)
        except respond.InvalidHeader as exc:  # from a function, a template, a mock: the message stays whole
            self.fail(GatewayError(502, f"invalid integration response: {exc}", "INTEGRATION_FAILURE"))
            return
        self.conn.write(data)
        self.finish()

    def send_head(
        self, status: int, head: bytes, kept: list[tuple[bytes, bytes]], close_delimited: bool
    ) -> None:
        """A proxied response's head (`respond.proxied`); its body follows through conn.write."""
        if close_delimited:
            self.keep_alive = False  # HTTP/1.0 client, unknown length: close-delimited
        self.conn.write(head + self.tail())
        if not _NEXT[self.state] >> STREAMING & 1:  # self._to(STREAMING), inlined: the hot path
            self._to(STREAMING)  # raises
        self.state = STREAMING
        ctx = self.ctx
        if ctx.cache is not None:
            ctx.capture = Capture.begin(ctx, status, kept, self.is_head)

    def fail(self, err: GatewayError, responses: Any = None) -> None:
        """Answer with a gateway error (or abort the client if the response already started)."""
        ctx = self.ctx
        state = self.state
        if state == QUEUED:  # not its turn yet: answered in order, when it starts
            self.error = self.error or err
            return
        if state <= INTEGRATING:
            self.status_code = err.status
            self.error = err  # the access log's error fields
            if ctx.trace is not None:
                ctx.trace.span.set_attribute("meshgate.reason", err.reason)
        if state > STREAMING:
            return
        self._cancel_timer()
        call, self.call = self.call, None
        if call is not None:
            call.cancel()
        if state == STREAMING:
            log.warning(
                "request %s: %s after the response started; aborting the client", ctx.request_id, err.reason
            )
            self.conn.abort()
            self._to(DONE)
            return
        close = (
            err.close
            or not self.keep_alive
            or (not ctx.body_complete and (err.status in (413, 400, 431, 408) or self.expect_continue))
        )  # a client told to wait for 100 Continue never sends the body we would have to read
        if err.status >= 500:
            log.info(
                "request %s %s %s -> %d: %s",
                ctx.request_id,
                ctx.method,
                ctx.target[:200].decode("ascii", "backslashreplace"),  # text, not b'...'
                err.status,
                err.reason,
            )
        route = self.route
        if responses is None and route is not None:
            responses = route.responses
        detail = self.conn.holder.table.shows_reason(route, ctx.source_ip)  # for the mesh, not outsiders
        self.conn.write(
            respond.error(
                err, ctx.request_id, responses=responses, cors=ctx.cors_headers, close=close, detail=detail
            )
        )
        if close:
            self.keep_alive = False
        if not ctx.body_complete:
            self.discard_body = True
            ctx.body_chunks = None
        self.finish()

    def upgraded(self, handshake: bytes, tunnel: Tunnel) -> None:
        """The WebSocket handshake is answered (101): the exchange ends here and the connection
        counts as an open WebSocket until it is lost."""
        self.status_code = 101
        record(self)
        self._to(UPGRADED)
        metrics = self.conn.server.metrics
        lost: Callable[[], None] = _nothing
        if metrics is not None:
            lost = metrics.open_websocket(self.metrics_key())
        self.conn.take_over(self, handshake, tunnel, lost)

    def finish(self) -> None:
        """The response is complete: record it, and leave the pipeline once the request body is read too."""
        if FILTERING <= self.state <= STREAMING:
            record(self)
            if not _NEXT[self.state] >> RESPONDED & 1:  # self._to(RESPONDED), inlined: the hot path
                self._to(RESPONDED)  # raises
            self.state = RESPONDED
        if self.timer is not None or self.deadline:
            self._cancel_timer()
        if self.conn.paused_by_upstream:  # the call that held the client back is over: read the rest
            self.conn.resume_reading_from("upstream")
        if self.ctx.body_complete or self.discard_body:
            self.conn.exchange_done(self)

    def done(self) -> None:
        """Out of the pipeline: answered and its body read, or its connection lost."""
        if self.state == DONE:
            return
        if not _NEXT[self.state] >> DONE & 1:  # self._to(DONE), inlined: the hot path
            self._to(DONE)  # raises
        self.state = DONE
        if self.timer is not None or self.deadline:
            self._cancel_timer()
        call, self.call = self.call, None
        if call is not None:
            call.cancel()
        self.sink = self.on_body = None  # the call and a waiting step point back here: no cycle left

    # ------------------------------------------------------------------ timeouts
    def arm_timeout(self, timeout_s: float) -> None:
        loop = self.conn.loop
        if timeout_s >= 1.0:  # coarse timeouts ride the connection sweep: no timer handle per request
            self.deadline = loop.time() + timeout_s
        else:
            self.timer = loop.call_later(timeout_s, self.on_timeout)

    def on_timeout(self) -> None:
        self.timer = None
        integ = self.route.integration if self.route is not None else None
        self.fail(GatewayError(504, f"integration timeout after {getattr(integ, 'timeout_s', 0):g}s"))

    def _cancel_timer(self) -> None:
        self.deadline = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # ------------------------------------------------------------------ telemetry (response side, last)
    def metrics_key(self) -> tuple[str, str, str]:
        r = self.route
        return (r.api, r.stage, r.resource) if r is not None else ("-", "-", "-")


def _nothing() -> None:
    return None
