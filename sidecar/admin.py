"""The sidecar's admin port (aiohttp): /ready once a snapshot is applied, /live, /config_dump."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from google.protobuf import json_format
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import TableHolder


@dataclass
class AdminState:
    client: ConfigClient
    holder: TableHolder
    node_id: str
    metrics: Metrics | None = None


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

    async def config_dump(request: web.Request) -> web.Response:
        snap = state.client.applied
        if snap is None:
            return web.json_response({"reason": "no configuration applied yet"}, status=404)
        return web.json_response(json_format.MessageToDict(snap))

    async def metrics(request: web.Request) -> web.Response:
        text = state.metrics.render() if state.metrics is not None else ""
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8", headers={"X-Prometheus": "0.0.4"}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ready", ready)
    app.router.add_get("/live", live)
    app.router.add_get("/config_dump", config_dump)
    return app


async def start_admin(state: AdminState, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
