"""The sidecar's admin port (asyncio + httptools, no framework: aiohttp stays unloaded): /ready once a snapshot is applied, /live, /config_dump (the
applied snapshot with secrets redacted), /stats (Envoy-style `name: value` counters and gauges, or
?format=json) and /metrics (Prometheus text).

The same server, with a restricted route table, is the health port (only /ready and /live, for the
kubelet's probes: Istio's 15021) and the read-only metrics port (only /metrics, for Prometheus:
Istio's 15090); injected pods keep the full admin port on 127.0.0.1. A restricted port answers every
other path 404, whatever the method, and its /ready says ready or not (and why not), nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl

import httptools
from meshgate.sidecar import respond
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.metrics import CONFIG_FAMILIES, Family, Labels, Metrics, Value, prometheus_text
from meshgate.sidecar.redact import redact
from meshgate.sidecar.routing import TableHolder

if TYPE_CHECKING:
    from meshgate.sidecar.grpc_server import GrpcRelay
    from meshgate.sidecar.http1 import HttpServer
    from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter
    from meshgate.sidecar.runtime import Runtime
    from meshgate.sidecar.upstream import UpstreamPool

Stat = tuple[str, int | float | str]
Answer = tuple[int, tuple[tuple[bytes, bytes], ...], bytes]  # status, headers, body
Handlers = dict[str, Callable[[dict[str, str]], Answer]]  # path -> handler(query)
HEALTH_PATHS = frozenset({"/ready", "/live"})  # the health port (kubelet probes)
METRICS_PATHS = frozenset({"/metrics"})  # the read-only metrics port (Prometheus scrapes)


@dataclass
class AdminState:
    client: ConfigClient
    holder: TableHolder
    node_id: str
    metrics: Metrics | None = None
    http: HttpServer | None = None
    pool: UpstreamPool | None = None
    runtime: Runtime | None = None
    grpc: GrpcRelay | None = None
    inbound: dict[str, int] | None = None  # the entrance's counts (sidecar/inbound.py)
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
        ("config.certificate_renewals", c.identity.renewals),
        ("config.certificate_expires_unix", int(c.identity.expires_at)),
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
        pool = state.pool
        out += [
            ("upstream.read_pauses", pool.read_pauses),
            ("upstream.read_resumes", pool.read_resumes),
            ("upstream.write_pauses", pool.write_pauses),
            ("upstream.write_resumes", pool.write_resumes),
        ]
        out += [(f"upstream.{host}:{port}.idle", n) for (host, port), n in idle.items()]
    if state.grpc is not None:
        out.append(("grpc.upstream_channels", len(state.grpc.channels)))
    if state.inbound is not None:  # connections by the protocol their first bytes showed
        out += [(f"inbound.{kind}", n) for kind, n in sorted(state.inbound.items())]
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


def config_families(c: ConfigClient) -> list[tuple[Family, list[tuple[Labels, Value]]]]:
    """The config stream as this sidecar sees it (per sidecar once scraped: the pod's labels)."""
    connected, acks, nacks, info, latency = CONFIG_FAMILIES
    applied: list[tuple[Labels, Value]] = []
    if c.applied is not None:
        applied.append(((("version", c.applied_version), ("source", c.applied_from)), 1))
    return [
        (connected, [((), int(c.connected))]),
        (acks, [((), c.acks)]),
        (nacks, [((), c.nacks)]),
        (info, applied),
        (latency, [((), c.apply_latency)]),
    ]


def config_dump(state: AdminState) -> dict[str, object] | None:
    from google.protobuf import json_format  # with the first /config_dump

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


def _json(status: int, doc: object) -> Answer:
    return status, ((b"content-type", b"application/json; charset=utf-8"),), json.dumps(doc).encode()


def routes(state: AdminState, detail: bool = True) -> Handlers:
    """Path -> handler(query) -> (status, content type, body); without `detail`, /ready tells only
    whether the sidecar is ready and why not (what a port outside the pod may say)."""

    def ready(query: dict[str, str]) -> Answer:
        c = state.client
        if state.http is not None and state.http.draining:  # SIGTERM: endpoints move away from this pod
            if not detail:
                return _json(503, {"ready": False, "reason": "draining"})
            return _json(503, {"ready": False, "reason": "draining", "draining": True, "node": state.node_id})
        if state.http is not None and state.http.server is None:  # a saved snapshot applies first
            return _json(503, {"ready": False, "reason": "the listener is not open yet"})
        if c.applied is None:
            if not detail:
                return _json(503, {"ready": False, "reason": "no configuration applied yet"})
            return _json(
                503, {"ready": False, "reason": "no configuration applied yet", "lastError": c.last_error}
            )
        if not detail:
            return _json(200, {"ready": True})
        return _json(
            200,
            {
                "ready": True,
                "version": c.applied_version,
                "source": c.applied_from,
                "connected": c.connected,
                "stages": state.holder.table.stage_count,
                "nacks": c.nacks,
                "lastError": c.last_error,
                "node": state.node_id,
            },
        )

    def dump(query: dict[str, str]) -> Answer:
        doc = config_dump(state)
        if doc is None:
            return _json(404, {"reason": "no configuration applied yet"})
        return _json(200, doc)

    def stats_page(query: dict[str, str]) -> Answer:
        values = stats(state)
        recent = list(state.metrics.recent_errors) if state.metrics is not None else []
        if query.get("format") == "json":
            errors = [{"requestId": r, "status": s, "route": w, "reason": why} for r, s, w, why in recent]
            return _json(200, {"stats": [{"name": n, "value": v} for n, v in values], "recentErrors": errors})
        lines = [f"{n}: {v}\n" for n, v in values]
        # the reason can quote client input: JSON-quoted, so it can never start a line of its own
        lines += [f"errors.recent.{r}: {s} {w} {json.dumps(why)}\n" for r, s, w, why in recent]
        return 200, _TEXT, "".join(sorted(lines)).encode()  # by name; request ids count up

    def metrics(query: dict[str, str]) -> Answer:
        text = state.metrics.render() if state.metrics is not None else ""
        text += prometheus_text(config_families(state.client))
        return 200, (*_TEXT, (b"x-prometheus", b"0.0.4")), text.encode()

    return {
        "/metrics": metrics,
        "/ready": ready,
        "/live": lambda query: _json(200, {"live": True}),
        "/config_dump": dump,
        "/stats": stats_page,
    }


_TEXT = ((b"content-type", b"text/plain; charset=utf-8"),)


class _AdminConn(asyncio.Protocol):
    """One admin connection: GET requests, keep-alive, answered in order (httptools, like the listener)."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, _TEXT, b"malformed request\n", close=True)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > 8192:
            raise ValueError("request line too long")

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path, _, query = self.url.decode("latin-1").partition("?")
        handler = self.handlers.get(path)
        if handler is None:  # first: a restricted port tells nothing of the paths it does not serve
            answer: Answer = 404, _TEXT, b"not found\n"
        elif method not in (b"GET", b"HEAD"):
            answer = 405, _TEXT, b"method not allowed\n"
        else:
            answer = handler(dict(parse_qsl(query)))
        self._send(*answer, close=not self.parser.should_keep_alive(), head=method == b"HEAD")

    def _send(
        self,
        status: int,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes,
        close: bool = False,
        head: bool = False,
    ) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(
            respond.full(
                status, headers, body, b"connection: close\r\n\r\n" if close else b"\r\n", is_head=head
            )
        )
        if close:
            t.close()


class AdminServer:
    """An admin listener (the full admin port, the health port or the metrics port); `cleanup()` stops it."""

    def __init__(self, server: asyncio.Server, paths: frozenset[str]) -> None:
        self.server = server
        self.paths = paths  # what it answers; every other path is a 404

    async def cleanup(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_admin(
    state: AdminState, host: str, port: int, only: frozenset[str] | None = None
) -> AdminServer:
    """The full admin port; with `only` (HEALTH_PATHS, METRICS_PATHS) a restricted one serving just
    those paths, with no detail in /ready."""
    handlers = routes(state, detail=only is None)
    if only is not None:
        unknown = only - handlers.keys()
        if unknown:
            raise ValueError(f"no such admin path: {', '.join(sorted(unknown))}")
        handlers = {path: handler for path, handler in handlers.items() if path in only}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _AdminConn(handlers), host, port, reuse_address=True)
    return AdminServer(server, frozenset(handlers))
