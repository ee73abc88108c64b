"""Integration `websocket`: a WebSocket pass-through. The upgrade request's handshake is repeated
to the upstream; once it accepts, the client gets the 101 and the connection becomes a `WsRelay`
(`sidecar/websocket.py`) that relays frames both ways."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from meshgate.sidecar.context import TRACE_HEADERS
from meshgate.sidecar.errors import GatewayError, internal
from meshgate.sidecar.integrations import CompileError, RouteSpec, client_key
from meshgate.sidecar.respond import switching_protocols
from meshgate.sidecar.websocket import WebSocketIntegration, WsRelay

if TYPE_CHECKING:
    from meshgate.sidecar.exchange import Exchange

log = logging.getLogger("meshgate.sidecar.websocket")


@dataclass(frozen=True, slots=True)
class WebSocketPassThrough:
    kind = "websocket"
    needs_body = False
    upgrade = True

    ws: WebSocketIntegration
    timeout_s: float
    connect_timeout_s: float

    def start(self, ex: Exchange) -> None:
        ex.conn.loop.create_task(self._open(ex))

    async def _open(self, ex: Exchange) -> None:
        transport = ex.conn.transport
        if transport is None:
            ex.fail(internal())
            return
        key = client_key(ex)
        if not key:
            ex.fail(GatewayError(400, "WebSocket upgrade without Sec-WebSocket-Key", close=True))
            return
        ctx = ex.ctx
        relay = WsRelay(transport, self.ws, ctx.request_id)
        headers = ctx.header_pairs()
        headers += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ctx.upstream_headers]
        span = ctx.trace
        if span is not None:  # the handshake is the integration call; frames are not spanned
            up = urlsplit(self.ws.uri)
            span.start_child(
                "integration", **{"server.address": up.hostname or "", "server.port": up.port or 80}
            )
            headers = [(n, v) for n, v in headers if n.lower() not in TRACE_HEADERS]
            headers += span.carrier().items()
        where = self.ws.uri
        try:
            resp = await relay.connect(headers, self.connect_timeout_s + self.timeout_s)
        except ConnectionRefusedError:
            refusal = GatewayError(503, f"upstream connect refused ({where})", close=True)
        except TimeoutError:
            refusal = GatewayError(504, f"upstream WebSocket handshake timed out ({where})", close=True)
        except OSError as exc:
            refusal = GatewayError(
                503, f"upstream connect failed ({where}): {exc.strerror or exc}", close=True
            )
        except Exception as exc:
            refusal = GatewayError(
                502, f"upstream refused the WebSocket handshake: {str(exc)[:200]}", close=True
            )
        else:
            if ex.conn.closed:
                relay.client_lost()
                return
            relay.live = True
            ex.upgraded(
                switching_protocols(key, resp.headers.get("Sec-WebSocket-Protocol"), ctx.request_id), relay
            )
            log.info("request %s: WebSocket relay to %s open", ctx.request_id, where)
            return
        if span is not None:
            span.end_child(refusal.reason)
        if relay.upstream is not None and relay.upstream.transport is not None:
            relay.upstream.transport.close()
        ex.fail(refusal)


def compile_websocket(spec: RouteSpec) -> WebSocketPassThrough:
    uri = spec.uri()
    integ = spec.integ
    if not uri.startswith("ws://"):
        raise CompileError(f"{spec.where}: websocket integrations take a ws:// URL, got {integ.uri!r}")
    ws = WebSocketIntegration(
        uri,
        (integ.idle_timeout_ms or 600_000) / 1000,
        (integ.max_duration_ms or 7_200_000) / 1000,
        integ.max_message_bytes or 128 * 1024,
    )
    return WebSocketPassThrough(ws, spec.timeout_s(), spec.connect_timeout_s())
