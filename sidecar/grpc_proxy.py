"""The gRPC listener: proxies every call type to upstream gRPC services as raw bytes (no protos).

On the wire every gRPC call is a stream of length-prefixed messages each way,
so one stream-stream handler with identity serializers carries unary,
client-, server- and bidi-streaming calls alike. Metadata crosses both ways,
deadlines are propagated (and capped by the integration timeout), status codes
and trailers pass through, cancellation crosses in both directions, and the
gateway's own refusals use the error table's gRPC codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from meshgate.sidecar.authorizers import AuthRequest
from meshgate.sidecar.errors import GRPC_CODE
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.phase import PhaseResult
from meshgate.sidecar.routing import Miss, TableHolder, Target
from meshgate.sidecar.telemetry import TRACE_HEADERS, RequestSpan, Telemetry
from meshgate.sidecar.transcode import HTTP_STATUS

log = logging.getLogger("meshgate.sidecar.grpc")

SKIP_METADATA = frozenset(
    {"user-agent", "te", "content-type", "grpc-timeout", "grpc-accept-encoding", "grpc-encoding"}
)


def _code(status: int) -> grpc.StatusCode:
    number = GRPC_CODE.get(status, 2)
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


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

    async def call(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self.counter += 1
        request_id = f"grpc-{id(self):x}-{self.counter:x}"
        md = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        stage = md.get("x-meshgate-stage", "")
        authority = md.get(":authority", "")
        t0 = time.monotonic()
        t_integration = 0.0
        code = grpc.StatusCode.OK
        details = ""
        t: Target | None = None
        span: RequestSpan | None = None
        try:
            result = self.holder.table.resolve(
                authority, "POST", f"/{stage}{method}" if stage else method, "", md, request_id
            )
            if isinstance(result, Miss) and not stage:
                result = self.holder.table.resolve_grpc(method, md, request_id)
            if isinstance(result, Miss):
                code, details = _code(result.status), result.reason
                await context.abort(code, details)
                return
            t = result
            if t.kind != "grpc":
                code, details = grpc.StatusCode.UNIMPLEMENTED, f"route for {method} is not a gRPC route"
                await context.abort(code, details)
                return
            tel = self.telemetry
            if tel is not None and (ctx := tel.sample(md, t.trace_ratio)) is not None:
                service, _, name = method.strip("/").rpartition("/")
                span = tel.begin(
                    ctx,
                    f"{service}/{name}",
                    {
                        "rpc.system": "grpc",
                        "rpc.service": service,
                        "rpc.method": name,
                        "meshgate.api": t.api,
                        "meshgate.stage": t.stage,
                        "meshgate.route": t.phase.resource if t.phase else t.path,
                        "meshgate.deployment": t.deployment_id,
                        "meshgate.request_id": request_id,
                    },
                )
            phase = t.phase
            if phase is not None:
                peer = context.peer() or ""
                ip = peer.split(":")[1] if peer.startswith("ipv4:") else "127.0.0.1"
                req = AuthRequest(
                    "POST",
                    method,
                    phase.resource,
                    t.stage,
                    t.api,
                    md,
                    "",
                    ip,
                    request_id,
                    t.params or {},
                    phase.stage_variables,
                )
                if span is not None:
                    span.start_child("request phase", **{"meshgate.authorizer": bool(phase.authorizer)})
                outcome = phase.run(req, span)
                if not isinstance(outcome, PhaseResult):
                    outcome = await outcome
                if span is not None:
                    span.end_child(outcome.reason if outcome.status else "")
                if outcome.authorizer_s and self.metrics is not None:
                    self.metrics.authorizer_latency[t.api, t.stage, phase.resource].observe(
                        outcome.authorizer_s
                    )
                if outcome.status:
                    code, details = _code(outcome.status), outcome.reason
                    await context.abort(code, details)
                    return
            timeout = t.timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, max(0.0, remaining))
            skip = SKIP_METADATA if span is None else SKIP_METADATA | TRACE_HEADERS
            metadata = [
                (k, v)
                for k, v in context.invocation_metadata()
                if k.lower() not in skip and not k.startswith(":")
            ]
            metadata.append(("x-meshgate-request-id", request_id))
            if span is not None:
                span.start_child("integration", **{"server.address": t.host, "server.port": t.port})
                metadata += span.carrier().items()
            t_integration = time.monotonic()
            channel = self.channels.get(t.host, t.port)
            upstream = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
            call = upstream(requests, timeout=timeout, metadata=metadata)
            try:
                initial = await call.initial_metadata()
                if initial:
                    await context.send_initial_metadata(
                        tuple((k, v) for k, v in initial if k.lower() not in SKIP_METADATA)
                    )
                async for message in call:
                    yield message
                code = await call.code()
                trailing = await call.trailing_metadata()
                if trailing:
                    context.set_trailing_metadata(
                        tuple((k, v) for k, v in trailing if k.lower() not in SKIP_METADATA)
                    )
                if code != grpc.StatusCode.OK:
                    details = await call.details() or ""
                    context.set_code(code)
                    context.set_details(details)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    details = f"integration timeout after {timeout:g}s"
                elif code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
                    details = f"upstream connect failed ({t.host}:{t.port}): {details}"
                trailing = exc.trailing_metadata()
                if trailing:
                    context.set_trailing_metadata(
                        tuple((k, v) for k, v in trailing if k.lower() not in SKIP_METADATA)
                    )
                context.set_code(code)
                context.set_details(details)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                call.cancel()  # the client went away: cancel the upstream call too
                raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._done(t, code, details, t0, t_integration, span)

    def _done(
        self,
        t: Target | None,
        code: grpc.StatusCode,
        details: str,
        t0: float,
        t_integration: float,
        span: RequestSpan | None,
    ) -> None:
        """Metrics (status class from the HTTP mapping of the gRPC code) and the span's end."""
        status = HTTP_STATUS.get(code, 500)
        if self.metrics is not None:
            now = time.monotonic()
            key = (
                (t.api, t.stage, t.phase.resource if t.phase else t.path)
                if t is not None
                else ("-", "-", "-")
            )
            self.metrics.observe(key, status, now - t0, now - t_integration if t_integration else 0.0, b"")
        if span is not None:
            if span.child is not None and code != grpc.StatusCode.OK:
                span.child.set_attribute("rpc.grpc.status_code", code.value[0])
            span.end(status, details, {"rpc.grpc.status_code": code.value[0]})


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
