"""Integration `websocket_api`: API Gateway's WebSocket APIs. `$connect` may refuse the upgrade;
after the 101 every message is routed by the selection expression to an HTTP integration
(`sidecar/wsapi.py`), and the connection is registered for `@connections`, whose management
requests are answered here too."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.filters.policy import in_networks
from meshgate.sidecar.integrations import CompileError, RouteSpec, client_key
from meshgate.sidecar.mapping import substitute_stage_vars
from meshgate.sidecar.respond import switching_protocols
from meshgate.sidecar.wsapi import WebSocketApi, WsApiConnection, WsRoute, compile_selection

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange

_NOT_FORWARDED = frozenset({b"host", b"connection", b"upgrade", b"content-length", b"transfer-encoding"})


@dataclass(frozen=True, slots=True)
class WebSocketApiIntegration:
    kind = "websocket_api"
    needs_body = False
    upgrade = True

    api: WebSocketApi

    def start(self, ex: Exchange) -> None:
        ex.conn.loop.create_task(self._open(ex))

    async def _open(self, ex: Exchange) -> None:
        server = ex.conn.server
        registry = server.registry
        transport = ex.conn.transport
        ctx = ex.ctx
        if registry is None or server.session is None or transport is None:
            ex.fail(
                GatewayError(500, "WebSocket APIs need the sidecar runtime (meshgate sidecar --advertise)")
            )
            return
        key = client_key(ex)
        if not key:
            ex.fail(GatewayError(400, "WebSocket upgrade without Sec-WebSocket-Key", close=True))
            return
        conn = WsApiConnection(
            registry.new_id(ex.conn.holder.table.connection_ids, ctx.api),
            self.api,
            transport,
            ctx.source_ip,
            ctx.stage,
            server.session,
            dict(ctx.auth_values),
            api_name=ctx.api,
            telemetry=server.telemetry,
            trace_ratio=ctx.route.trace_ratio if ctx.route is not None else 0.0,
            metrics=server.metrics,
        )
        connect = self.api.routes.get("$connect")
        if connect is not None:
            client_headers = {
                n.decode("latin-1"): v.decode("latin-1")
                for n, v in ctx.raw_headers
                if n.lower() not in _NOT_FORWARDED and not n.lower().startswith(b"sec-websocket")
            }
            status, body = await conn.call(connect, "$connect", b"", client_headers, ctx.trace, ctx.query)
            if status == 0:
                ex.fail(GatewayError(502, body.decode(), "INTEGRATION_FAILURE", close=True))
                return
            if status >= 300:
                code = status if 400 <= status < 500 else 502
                ex.fail(GatewayError(code, f"$connect rejected the connection (HTTP {status})", close=True))
                return
        if ex.conn.closed:
            return
        if ctx.trace is not None:
            conn.link = ctx.trace.span.get_span_context()
        registry.add(conn)
        ex.upgraded(switching_protocols(key, None, ctx.request_id, conn.conn_id), conn)


def compile_websocket_api(spec: RouteSpec) -> WebSocketApiIntegration:
    integ = spec.integ
    routes: dict[str, WsRoute] = {}
    for key, sub in sorted(integ.websocket_routes.items()):
        uri, missing = substitute_stage_vars(sub.uri, spec.variables)
        if missing is not None or not uri.startswith("http://"):
            raise CompileError(
                f"{spec.where}: websocket route {key!r} needs an http:// uri (got {sub.uri!r})"
            )
        routes[key] = WsRoute(uri, (sub.timeout_ms or 29000) / 1000)
    try:
        selection = compile_selection(integ.route_selection_expression)
    except ValueError as exc:
        raise CompileError(f"{spec.where}: {exc}") from None
    return WebSocketApiIntegration(WebSocketApi(selection, routes, integ.max_message_bytes or 128 * 1024))


def manage_connection(ex: Exchange, conn_id: str) -> None:
    """`/@connections/{id}`: POST a message to, GET, or DELETE a connection (held here, or by the
    sidecar control lists as its owner); reachable only from inside the cluster networks."""
    server = ex.conn.server
    if server.registry is None or server.session is None:
        ex.fail(GatewayError(404, "this sidecar serves no WebSocket APIs"))
        return
    ip = ex.ctx.source_ip
    if not in_networks(ip, ex.conn.holder.table.cluster_nets):
        ex.fail(
            GatewayError(
                403, f"@connections is reachable only from inside the cluster networks (source {ip})"
            )
        )
        return
    if not ex.ctx.body_complete:
        ex.wait_for_body(functools.partial(manage_connection, ex, conn_id))
        return
    ex.integrating()
    ex.conn.loop.create_task(_manage(ex, conn_id))


async def _manage(ex: Exchange, conn_id: str) -> None:
    server = ex.conn.server
    assert server.registry is not None
    ctx = ex.ctx
    status, body = await server.registry.manage(
        ctx.method,
        conn_id.strip("/"),
        ctx.whole_body(),
        server.session,
        ex.conn.holder.table.connection_ids,
        forwarded="x-meshgate-forwarded" in ctx.headers,
    )
    headers = ((b"content-type", b"application/json"),) if body else ()
    ex.respond_full(status, headers, body)
