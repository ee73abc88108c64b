"""Telemetry of one answered exchange, the response side's last step: request metrics, the
stage's access log line and the end of the request's span."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from meshgate.sidecar.accesslog import context as access_context
from meshgate.sidecar.accesslog import error_fields

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange


def record(ex: Exchange) -> None:
    server = ex.conn.server
    metrics = server.metrics
    ctx = ex.ctx
    if metrics is not None:
        route = ex.route
        key = ex.metrics_key()
        now = perf_counter()
        integ = (ex.t_head or now) - ex.t_integration if ex.t_integration else 0.0
        metrics.observe(key, ex.status_code, now - ex.t0, integ, ctx.cache_header)
        if ex.error is not None:
            metrics.error(ctx.request_id, ex.status_code, f"{key[0]}/{key[1]} {key[2]}", ex.error.reason)
        if route is not None and route.access_log and server.access_log is not None:
            line = access_context(
                request_id=ctx.request_id,
                source_ip=ctx.source_ip,
                method=ctx.method,
                path=ctx.path,
                stage=route.stage,
                api=route.api,
                route=key[2],
                status=ex.status_code,
                latency_ms=(now - ex.t0) * 1000,
                integration_latency_ms=integ * 1000,
                principal=str(ctx.auth_values.get("principalId", "")),
                deployment=route.deployment_id,
            )
            if ex.error is not None:  # what the client was not told goes here (and to the span)
                line.update(error_fields(ex.error))
            server.access_log.write(route.access_log, line)
    if ctx.trace is not None:
        ctx.trace.end(ex.status_code, ex.error.reason if ex.error is not None else "")
        ctx.trace = None
