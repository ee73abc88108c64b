"""Tracing (OpenTelemetry, in place of CloudWatch): one server span per HTTP request, gRPC call and
WebSocket API message, with child spans for the request phase (and, under it, the authorizer and
the cache lookup) and the integration; W3C traceparent/baggage honoured and propagated; parent-based
sampling with the stage's ratio; OTLP/gRPC export through a batch processor (Jaeger takes it natively).

Nothing loads OpenTelemetry until a sidecar traces: the listeners hold a `Telemetry` only when an
OTLP endpoint is set (`main.py` imports this module then).

The sampling decision comes first (`sample`): an unsampled request costs one header lookup and a
random draw, and nothing is allocated for it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # the SDK and the exporter load with the first Telemetry (a sidecar that traces)
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.routing import Route
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

_TRACECONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()
_ROOT = Context()  # "sampled, no parent": shared, so the decision allocates nothing


class _Getter:
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        v = carrier.get(key)
        return [v] if v is not None else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _Getter()


class RequestSpan:
    """The server span of one request (or call, or message) and its children.

    `child` is the current direct child (request phase, then integration); `start_sub` opens a
    span under it (authorizer, cache lookup) that the caller ends with `end_sub`.
    """

    __slots__ = ("child", "span", "tracer")

    def __init__(self, tracer: Any, span: Any) -> None:
        self.tracer = tracer
        self.span = span
        self.child: Any = None

    def start_child(self, name: str, **attrs: Any) -> Any:
        ctx = trace.set_span_in_context(self.span)
        self.child = self.tracer.start_span(
            name,
            context=ctx,
            kind=SpanKind.CLIENT if name == "integration" else SpanKind.INTERNAL,
            attributes=attrs,
        )
        return self.child

    def end_child(self, error: str = "") -> None:
        child = self.child
        if child is not None:
            if error:
                child.set_status(Status(StatusCode.ERROR, error))
            child.end()
            self.child = None

    def start_sub(self, name: str, attrs: Mapping[str, Any], client: bool = False) -> Any:
        ctx = trace.set_span_in_context(self.child or self.span)
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        return self.tracer.start_span(name, context=ctx, kind=kind, attributes=attrs)

    @staticmethod
    def end_sub(span: Any, error: str = "", attrs: Mapping[str, Any] | None = None) -> None:
        if attrs:
            span.set_attributes(attrs)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def carrier(self, span: Any = None) -> dict[str, str]:
        """traceparent (+ baggage) for an outgoing call whose parent is `span` (default: the
        current child, else the server span)."""
        carrier: dict[str, str] = {}
        ctx = trace.set_span_in_context(span or self.child or self.span)
        _TRACECONTEXT.inject(carrier, context=ctx)
        _BAGGAGE.inject(carrier, context=ctx)
        return carrier

    def inject(self) -> list[tuple[bytes, bytes]]:
        """The carrier as raw header pairs for the HTTP/1.1 integration request."""
        return [(k.encode(), v.encode()) for k, v in self.carrier().items()]

    def end(self, status: int, reason: str = "", attrs: Mapping[str, Any] | None = None) -> None:
        self.end_child()
        span = self.span
        if attrs:
            span.set_attributes(attrs)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, reason))
        elif reason:
            span.set_attribute("meshgate.reason", reason)
        span.end()


class Telemetry:
    def __init__(self, endpoint: str | None, node_id: str, exporter: SpanExporter | None = None) -> None:
        self.enabled = bool(endpoint) or exporter is not None
        self.provider: TracerProvider | None = None
        self.tracer: Any = None
        if self.enabled:
            from meshgate.sidecar.otlp_metrics import otlp_target
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON

            # Sampling is decided here (parent-based, per stage ratio); the SDK records what we start.
            self.provider = TracerProvider(
                resource=Resource.create(
                    {"service.name": "meshgate-sidecar", "service.instance.id": node_id}
                ),
                sampler=ALWAYS_ON,
            )
            target, tls = otlp_target(endpoint or "")  # https:// -> TLS, like the metrics export
            exp = exporter or OTLPSpanExporter(endpoint=target, insecure=not tls)
            self.provider.add_span_processor(BatchSpanProcessor(exp, schedule_delay_millis=500))
            self.tracer = self.provider.get_tracer("meshgate.sidecar")

    def sample(self, headers: Mapping[str, str], ratio: float) -> Context | None:
        """The parent context to trace under, or None: not traced. A sampled `traceparent` is
        followed and an unsampled one is not; without one the stage ratio decides."""
        if not self.enabled:
            return None
        parent = headers.get("traceparent")
        if parent:
            ctx: Context = _TRACECONTEXT.extract(headers, getter=_GETTER)  # type: ignore[arg-type]
            ctx = _BAGGAGE.extract(headers, context=ctx, getter=_GETTER)  # type: ignore[arg-type]
            sc = trace.get_current_span(ctx).get_span_context()
            if not (sc.is_valid and sc.trace_flags.sampled):
                return None  # parent-based: an unsampled parent stays unsampled
            return ctx
        if ratio <= 0 or random.random() >= ratio:
            return None
        return _ROOT

    def trace_request(self, req: RequestContext, route: Route) -> None:
        """Sample an HTTP request; a sampled one gets its server span (and request-phase span) now."""
        parent = self.sample(req.headers, route.trace_ratio)
        if parent is None:
            return
        req.trace = self.begin(
            parent,
            f"{req.method} {route.resource}",
            {
                "http.request.method": req.method,
                "url.path": req.path,
                "meshgate.api": route.api,
                "meshgate.stage": route.stage,
                "meshgate.deployment": route.deployment_id,
                "meshgate.request_id": req.request_id,
                "client.address": req.source_ip,
            },
        )
        route.chain.begin_span(req)

    def begin(
        self, ctx: Context, name: str, attrs: Mapping[str, Any], link: SpanContext | None = None
    ) -> RequestSpan:
        """The server span; `link` is a span it follows from (a WebSocket message's upgrade)."""
        links = (Link(link),) if link is not None else ()
        span = self.tracer.start_span(
            name, context=ctx, kind=SpanKind.SERVER, attributes=dict(attrs), links=links
        )
        return RequestSpan(self.tracer, span)

    def flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
