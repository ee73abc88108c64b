"""The gRPC listener: proxies every call type to upstream gRPC services as raw bytes (no protos).

On the wire every gRPC call is a stream of length-prefixed messages each way,
so one stream-stream handler with identity serializers carries unary,
client-, server- and bidi-streaming calls alike. Metadata crosses both ways,
deadlines are propagated (and capped by the integration timeout), status codes
and trailers pass through, cancellation crosses in both directions, and the
gateway's own refusals use the error table's gRPC codes. The route's filter chain
(the HTTP listener's objects) runs before the upstream call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from meshgate.sidecar.context import RequestContext
from meshgate.sidecar.errors import HTTP_FOR_GRPC, GatewayError
from meshgate.sidecar.filters import Answer
from meshgate.sidecar.integrations.grpc import GrpcIntegration
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import Miss, Route, TableHolder
from meshgate.sidecar.telemetry import TRACE_HEADERS, RequestSpan, Telemetry

log = logging.getLogger("meshgate.sidecar.grpc")

SKIP_METADATA = frozenset(
    {"user-agent", "te", "content-type", "grpc-timeout", "grpc-accept-encoding", "grpc-encoding"}
)


class _Channels:
    """One channel per upstream (host, port), reused by every call."""

    def __init__(self) -> None:
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}

    def get(self, host: str, port: int) -> grpc.aio.Channel:
        ch = self._channels.get((host, port))
        if ch is None:
            ch = grpc.aio.insecure_channel(
                f"{host}:{port}",
                options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
            )
            self._channels[(host, port)] = ch
        return ch

    def __len__(self) -> int:
        return len(self._channels)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


class GrpcProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(
        self, holder: TableHolder, telemetry: Telemetry | None = None, metrics: Metrics | None = None
    ) -> None:
        self.holder = holder
        self.channels = _Channels()
        self.counter = 0
        self.telemetry = telemetry
        self.metrics = metrics

    def service(self, handler_call_details: Any) -> Any:
        method = handler_call_details.method

        async def handler(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            async for message in self.call(method, requests, context):
                yield message

        return grpc.stream_stream_rpc_method_handler(
            handler, request_deserializer=None, response_serializer=None
        )

    def _context(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> RequestContext:
        self.counter += 1
        peer = context.peer() or ""
        ip = peer.split(":")[1] if peer.startswith("ipv4:") else "127.0.0.1"
        ctx = RequestContext(ip, f"grpc-{id(self):x}-{self.counter:x}")
        md = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        ctx.headers = md
        ctx.method = "POST"
        ctx.host = md.get(":authority", "")
        ctx.body_complete = True  # messages stream through; no filter waits for a body
        stage = md.get("x-meshgate-stage", "")
        ctx.set_target((f"/{stage}{method}" if stage else method).encode("latin-1", "replace"))
        return ctx

    def _route(self, ctx: RequestContext, method: str) -> Route | GatewayError:
        found = self.holder.table.resolve(ctx)
        if isinstance(found, Miss) and "x-meshgate-stage" not in ctx.headers:
            ctx.set_target(method.encode("latin-1", "replace"))
            found = self.holder.table.resolve_grpc(ctx)
        if isinstance(found, Miss):
            return GatewayError(found.status, found.reason)
        if found.integration is None or found.integration.kind != "grpc":
            return GatewayError(405, f"route for {method} is not a gRPC route")
        ctx.route = found
        return found

    def _begin_span(self, ctx: RequestContext, route: Route, method: str) -> None:
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

    async def _request_phase(self, ctx: RequestContext, route: Route) -> GatewayError | None:
        """The route's filter chain, the same objects the HTTP listener runs."""
        decision = await route.chain.run_to_end(ctx)
        route.chain.end_span(ctx, decision, self.metrics, (route.api, route.stage, route.resource))
        if isinstance(decision, Answer):
            return GatewayError(500, "a response made by the gateway cannot answer a gRPC call")
        return decision

    async def call(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        ctx = self._context(method, context)
        t0 = time.monotonic()
        outcome = _Outcome()
        route: Route | None = None
        try:
            found = self._route(ctx, method)
            if isinstance(found, GatewayError):
                outcome.code, outcome.details = found.grpc_code, found.reason
                await context.abort(outcome.code, self._told(ctx, None, found))
                return
            route = found
            self._begin_span(ctx, route, method)
            refusal = await self._request_phase(ctx, route)
            if refusal is not None:
                outcome.code, outcome.details = refusal.grpc_code, refusal.reason
                await context.abort(outcome.code, self._told(ctx, route, refusal))
                return
            async for message in self._relay(ctx, route, method, requests, context, outcome):
                yield message
        except asyncio.CancelledError:
            outcome.code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._done(route, outcome, t0, ctx.trace)

    async def _relay(
        self,
        ctx: RequestContext,
        route: Route,
        method: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
        outcome: _Outcome,
    ) -> AsyncIterator[bytes]:
        """The call to the upstream: metadata, deadline, messages, status and trailers both ways."""
        integ = route.integration
        assert isinstance(integ, GrpcIntegration)
        timeout = integ.timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining))
        span = ctx.trace
        skip = SKIP_METADATA if span is None else SKIP_METADATA | TRACE_HEADERS
        metadata = [
            (k, v)
            for k, v in context.invocation_metadata()
            if k.lower() not in skip and not k.startswith(":")
        ]
        metadata.append(("x-meshgate-request-id", ctx.request_id))
        if span is not None:
            span.start_child("integration", **{"server.address": integ.host, "server.port": integ.port})
            metadata += span.carrier().items()
        outcome.t_integration = time.monotonic()
        upstream = self.channels.get(integ.host, integ.port).stream_stream(
            method, request_serializer=None, response_deserializer=None
        )
        call = upstream(requests, timeout=timeout, metadata=metadata)
        try:
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(_passed(initial))
            async for message in call:
                yield message
            outcome.code = await call.code()
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(_passed(trailing))
            if outcome.code != grpc.StatusCode.OK:
                outcome.details = await call.details() or ""
                context.set_code(outcome.code)
                context.set_details(outcome.details)
        except grpc.aio.AioRpcError as exc:
            code = outcome.code = exc.code()
            told = details = exc.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                details = f"integration timeout after {timeout:g}s"
            elif code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
                details = f"upstream connect failed ({integ.host}:{integ.port}): {details}"
            if code in _GATEWAY_FAILURES:  # the gateway's own failure, not a status the upstream sent
                told = self._told(ctx, route, GatewayError(HTTP_FOR_GRPC.get(code, 500), details))
            outcome.details = details
            trailing = exc.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(_passed(trailing))
            context.set_code(code)
            context.set_details(told)
        except asyncio.CancelledError:
            outcome.code = grpc.StatusCode.CANCELLED
            call.cancel()  # the client went away: cancel the upstream call too
            raise

    def _told(self, ctx: RequestContext, route: Route | None, err: GatewayError) -> str:
        """The status message a caller gets: the reason inside the mesh, the table's message outside."""
        return err.reason if self.holder.table.shows_reason(route, ctx.source_ip) else err.message

    def _done(self, route: Route | None, outcome: _Outcome, t0: float, span: RequestSpan | None) -> None:
        """Metrics (status class from the HTTP mapping of the gRPC code) and the span's end."""
        code = outcome.code
        status = HTTP_FOR_GRPC.get(code, 500)
        if self.metrics is not None:
            now = time.monotonic()
            key = (route.api, route.stage, route.resource) if route is not None else ("-", "-", "-")
            integ = now - outcome.t_integration if outcome.t_integration else 0.0
            self.metrics.observe(key, status, now - t0, integ, b"")
        if span is not None:
            if span.child is not None and code != grpc.StatusCode.OK:
                span.child.set_attribute("rpc.grpc.status_code", code.value[0])
            span.end(status, outcome.details, {"rpc.grpc.status_code": code.value[0]})


# What a failed upstream call raises when the gateway, not the upstream, ended it: its own deadline, or
# no connection (grpc core's text names the address).
_GATEWAY_FAILURES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})


class _Outcome:
    """How a call ended, filled in as it goes."""

    __slots__ = ("code", "details", "t_integration")

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.t_integration = 0.0


def _passed(metadata: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in metadata if k.lower() not in SKIP_METADATA)


async def serve_grpc(
    holder: TableHolder,
    host: str,
    port: int,
    telemetry: Telemetry | None = None,
    metrics: Metrics | None = None,
) -> tuple[grpc.aio.Server, GrpcProxy, int]:
    proxy = GrpcProxy(holder, telemetry, metrics)
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )
    server.add_generic_rpc_handlers((proxy,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, proxy, bound
