"""The drain window after SIGTERM: keep accepting, close each connection after its response, then exit.

Like Envoy's drain and Istio's `terminationDrainDuration`. `begin()` flips
`HttpServer.draining` (read once per request head: the response then carries
`Connection: close`), so /ready answers 503 and clients move to other pods
while this one keeps answering whoever still comes. `run()` ticks until the
window ends, or earlier once no connection is left and none came for a while:
idle keep-alive connections are closed after a short grace with no request
begun, WebSockets are told 1001 (going away), gRPC gets `server.stop(window)`
(GOAWAY at once, in-flight calls finish within the window). Then everything
left is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import TYPE_CHECKING

from meshgate.sidecar.exchange import INTEGRATING

if TYPE_CHECKING:
    from meshgate.sidecar.grpc_server import GrpcServer
    from meshgate.sidecar.http1 import HttpServer

log = logging.getLogger("meshgate.sidecar.drain")

GOING_AWAY = "server draining"


class Drain:
    """One drain window over the HTTP listener (and the gRPC server, when there is one)."""

    def __init__(
        self,
        http: HttpServer,
        window_s: float,
        grpc_server: GrpcServer | None = None,
        *,
        idle_grace_s: float = 1.0,
        quiet_s: float = 1.0,
        tick_s: float = 0.1,
    ) -> None:
        self.http = http
        self.window_s = max(0.0, window_s)
        self.grpc_server = grpc_server
        self.idle_grace_s = idle_grace_s
        self.quiet_s = quiet_s
        self.tick_s = tick_s
        self.cut = asyncio.Event()  # a second signal: end the window now
        self.grpc_stop: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """From now on /ready is 503 and every response head says `Connection: close`."""
        http = self.http
        http.draining = True
        for conn in list(http.conns):
            # A request already parsed but not yet answered: its response closes the connection too.
            # Only the last one of a pipeline, so the ones before it are still answered.
            if conn.tunnel is None and conn.queue and conn.queue[-1].state <= INTEGRATING:
                conn.queue[-1].keep_alive = False
        if self.grpc_server is not None:  # GOAWAY now; calls in flight have the window to finish
            self.grpc_stop = asyncio.get_running_loop().create_task(self.grpc_server.stop(self.window_s))
        self.tick()

    def tick(self) -> None:
        """Close idle keep-alive connections after the grace; tell WebSockets to go away."""
        http = self.http
        idle_by = asyncio.get_running_loop().time() + self.idle_grace_s
        module = sys.modules.get("meshgate.sidecar.websocket")  # not loaded: no WebSocket relay exists
        relay = module.WsRelay if module is not None else ()
        for conn in list(http.conns):
            tunnel = conn.tunnel
            if tunnel is None:
                conn.close_idle_by(idle_by)
            elif isinstance(tunnel, relay):
                tunnel.going_away(GOING_AWAY)
        if http.registry is not None:  # WebSocket API connections (a second close is a no-op)
            for ws in list(http.registry.conns.values()):
                ws.close(1001, GOING_AWAY)

    def busy(self) -> bool:
        registry = self.http.registry
        return bool(
            self.http.conns
            or (registry is not None and registry.conns)
            or (self.grpc_stop is not None and not self.grpc_stop.done())
        )

    async def run(self) -> None:
        """Tick until the window is over (or nothing is left for `quiet_s`), then close what remains."""
        loop = asyncio.get_running_loop()
        now = start = loop.time()
        quiet_since, accepted = start, self.http.accepted
        while now - start < self.window_s and not self.cut.is_set():
            self.tick()
            if self.busy() or self.http.accepted != accepted:
                quiet_since, accepted = now, self.http.accepted
            elif now - quiet_since >= self.quiet_s:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cut.wait(), min(self.tick_s, start + self.window_s - now))
            now = loop.time()
        left = len(self.http.conns)
        log.info("drain over after %.1fs; closing %d connection(s)", loop.time() - start, left)
        await self.http.drain(0)  # stop accepting, close what is left
        if self.grpc_stop is not None and self.grpc_server is not None:
            if not self.grpc_stop.done():
                await self.grpc_server.stop(0)
            await asyncio.gather(self.grpc_stop, return_exceptions=True)
