"""The sidecar's admin port (aiohttp): /ready once a snapshot is applied, /live, /config_dump (the
applied snapshot with secrets redacted), /stats (Envoy-style `name: value` counters and gauges, or
?format=json) and /metrics (Prometheus text)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from google.protobuf import json_format
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.redact import redact
from meshgate.sidecar.routing import TableHolder

if TYPE_CHECKING:
    from meshgate.sidecar.grpc_proxy import GrpcProxy
    from meshgate.sidecar.http1 import HttpServer
    from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter
    from meshgate.sidecar.runtime import Runtime
    from meshgate.sidecar.upstream import UpstreamPool

Stat = tuple[str, int | float | str]


@dataclass
class AdminState:
    client: ConfigClient
    holder: TableHolder
    node_id: str
    metrics: Metrics | None = None
    http: HttpServer | None = None
    pool: UpstreamPool | None = None
    runtime: Runtime | None = None
    grpc: GrpcProxy | None = None
    otlp_metrics: OtlpMetricsExporter | None = None


def stats(state: AdminState) -> list[Stat]:
    """Counters and gauges of this sidecar, sorted by name."""
    c = state.client
    out: list[Stat] = [
        ("config.version", c.applied_version),
        ("config.source", c.applied_from),
        ("config.connected", int(c.connected)),
        ("config.acks", c.acks),
        ("config.nacks", c.nacks),
        ("config.stages", state.holder.table.stage_count),
        ("server.ready", int(c.applied is not None)),
    ]
    if state.http is not None:
        out.append(("server.connections_active", len(state.http.conns)))
        if state.http.registry is not None:
            out.append(("server.websocket_api_connections", len(state.http.registry.conns)))
    m = state.metrics
    if m is not None:
        out.append(("server.websockets_active", sum(m.websockets.values())))
        per_stage: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        for suffix, table in (
            ("requests", m.count),
            ("4xx_errors", m.errors_4xx),
            ("5xx_errors", m.errors_5xx),
            ("throttled", m.throttled),
            ("cache_hits", m.cache_hits),
            ("cache_misses", m.cache_misses),
            ("websocket_messages", m.ws_messages),
        ):
            for (api, stage, _), n in list(table.items()):
                per_stage[api, stage, suffix] += n
        for (api, stage, _), n in list(m.websockets.items()):
            per_stage[api, stage, "websockets_active"] += n
        out += [(f"stage.{api}.{stage}.{suffix}", n) for (api, stage, suffix), n in per_stage.items()]
    if state.pool is not None:
        idle = state.pool.idle_counts()
        out.append(("upstream.connects", state.pool.connects))
        out.append(("upstream.idle", sum(idle.values())))
        out += [(f"upstream.{host}:{port}.idle", n) for (host, port), n in idle.items()]
    if state.grpc is not None:
        out.append(("grpc.upstream_channels", len(state.grpc.channels)))
    if state.runtime is not None:
        for (api, stage), (_, cache) in list(state.runtime.caches.items()):
            prefix = f"cache.{api}.{stage}"
            out += [
                (f"{prefix}.entries", len(cache)),
                (f"{prefix}.bytes", cache.size),
                (f"{prefix}.capacity_bytes", cache.capacity),
                (f"{prefix}.hits", cache.hits),
                (f"{prefix}.misses", cache.misses),
                (f"{prefix}.evictions", cache.evictions),
            ]
    if state.otlp_metrics is not None:
        out.append(("otlp.metrics_exports", state.otlp_metrics.exports))
        out.append(("otlp.metrics_export_failures", state.otlp_metrics.failures))
    return sorted(out, key=lambda stat: stat[0])


def config_dump(state: AdminState) -> dict[str, object] | None:
    snap = state.client.applied
    if snap is None:
        return None
    copy = type(snap)()
    copy.CopyFrom(snap)
    redact(copy)
    return {
        **json_format.MessageToDict(copy),
        "version": snap.version,
        "node": state.node_id,
        "source": state.client.applied_from,
    }


def build_app(state: AdminState) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        c = state.client
        if c.applied is None:
            return web.json_response(
                {"ready": False, "reason": "no configuration applied yet", "lastError": c.last_error},
                status=503,
            )
        return web.json_response(
            {
                "ready": True,
                "version": c.applied_version,
                "source": c.applied_from,
                "connected": c.connected,
                "stages": state.holder.table.stage_count,
                "nacks": c.nacks,
                "lastError": c.last_error,
                "node": state.node_id,
            }
        )

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def dump(request: web.Request) -> web.Response:
        doc = config_dump(state)
        if doc is None:
            return web.json_response({"reason": "no configuration applied yet"}, status=404)
        return web.json_response(doc)

    async def stats_page(request: web.Request) -> web.Response:
        values = stats(state)
        if request.query.get("format") == "json":
            return web.json_response({"stats": [{"name": n, "value": v} for n, v in values]})
        return web.Response(text="".join(f"{n}: {v}\n" for n, v in values), content_type="text/plain")

    async def metrics(request: web.Request) -> web.Response:
        text = state.metrics.render() if state.metrics is not None else ""
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8", headers={"X-Prometheus": "0.0.4"}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ready", ready)
    app.router.add_get("/live", live)
    app.router.add_get("/config_dump", dump)
    app.router.add_get("/stats", stats_page)
    return app


async def start_admin(state: AdminState, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
