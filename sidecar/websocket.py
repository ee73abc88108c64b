"""WebSocket pass-through: handshake with the upstream, then relay frames both ways.

Both sides run python-websockets' sans-I/O protocols (bytes in, frames and
bytes out): the client side enforces the message size limit (close 1009) and
answers pings; close codes cross over in both directions. Backpressure pauses
reading on one side while the other side's write buffer is full; idle and
maximum-duration limits, and the sidecar's drain, end the connection with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

log = logging.getLogger("meshgate.sidecar.websocket")


@dataclass(frozen=True, slots=True)
class WebSocketIntegration:
    uri: str  # ws://host:port/path (stage variables substituted)
    idle_timeout_s: float = 600.0
    max_duration_s: float = 7200.0
    max_message_bytes: int = 128 * 1024


class _Upstream(asyncio.Protocol):
    def __init__(self, relay: WsRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=256 * 1024)

    def data_received(self, data: bytes) -> None:
        self.relay.upstream_data(data)

    def eof_received(self) -> bool | None:
        self.relay.upstream_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_lost()

    def pause_writing(self) -> None:
        self.relay.client_pause(True)

    def resume_writing(self) -> None:
        self.relay.client_pause(False)


class WsRelay:
    """One proxied WebSocket connection (client <-> sidecar <-> upstream)."""

    def __init__(
        self, client_transport: asyncio.Transport, integ: WebSocketIntegration, request_id: str
    ) -> None:
        self.client_transport = client_transport
        self.integ = integ
        self.request_id = request_id
        self.server = ServerProtocol(state=State.OPEN, max_size=integ.max_message_bytes)
        self.client: ClientProtocol | None = None
        self.upstream: _Upstream | None = None
        self.handshake: asyncio.Future[Response] | None = None
        self.started = time.monotonic()
        self.last_active = self.started
        self.closed = False
        self.live = False  # handshake done both ways: client bytes are frames now
        self.pending_client: list[bytes] = []

    # ------------------------------------------------------------------ handshake with the upstream
    async def connect(self, headers: list[tuple[str, str]], timeout_s: float) -> Response:
        """Open the upstream WebSocket; returns its handshake response (raises on failure)."""
        wsuri = parse_uri(self.integ.uri)
        loop = asyncio.get_running_loop()
        offered = [
            Subprotocol(p.strip())
            for name, value in headers
            if name.lower() == "sec-websocket-protocol"
            for p in value.split(",")
            if p.strip()
        ]
        self.client = ClientProtocol(wsuri, max_size=None, subprotocols=offered or None)
        self.handshake = loop.create_future()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Upstream(self), wsuri.host, wsuri.port), timeout_s
        )
        self.upstream = proto
        request = self.client.connect()
        for name, value in headers:
            if name.lower() in (
                "sec-websocket-protocol",
                "origin",
                "authorization",
                "cookie",
                "traceparent",
                "tracestate",
                "baggage",
            ) or name.lower().startswith(("x-", "user-agent")):
                request.headers[name] = value
        request.headers["X-Meshgate-Request-Id"] = self.request_id
        self.client.send_request(request)
        self._flush_upstream()
        return await asyncio.wait_for(self.handshake, timeout_s)

    def upstream_data(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        client.receive_data(data)
        events = client.events_received()
        if self.handshake is not None and not self.handshake.done():
            if client.handshake_exc is not None:
                self.handshake.set_exception(client.handshake_exc)
                return
            if events and isinstance(events[0], Response):
                self.handshake.set_result(events[0])
                events = events[1:]
        for ev in events:
            if isinstance(ev, Frame):
                self._to_client(ev)
        self._flush_upstream()
        self._flush_client()

    def upstream_eof(self) -> None:
        if self.client is not None:
            self.client.receive_eof()
            self._flush_upstream()

    def upstream_lost(self) -> None:
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(ConnectionError("upstream closed during the WebSocket handshake"))
            return
        if not self.closed and self.server.state is State.OPEN:
            self.server.send_close(1011, "upstream connection lost")
            self._flush_client()

    # ------------------------------------------------------------------ relay
    def start(self, leftover: bytes) -> None:
        for data in [*self.pending_client, leftover]:
            if data:
                self.client_data(data)
        self.pending_client.clear()

    def client_data(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        server = self.server
        server.receive_data(data)
        for ev in server.events_received():
            if isinstance(ev, Frame):
                self._to_upstream(ev)
        if server.close_code == 1009 and self.client is not None and self.client.state is State.OPEN:
            self.client.send_close(1001, "client message too big")
        self._flush_client()
        self._flush_upstream()

    def client_eof(self) -> None:
        self.server.receive_eof()
        if self.client is not None and self.client.state is State.OPEN:
            self.client.send_close(1001, "client went away")
        self._flush_client()
        self._flush_upstream()

    def _to_upstream(self, frame: Frame) -> None:
        if self.client is not None:
            _forward(frame, self.client)

    def _to_client(self, frame: Frame) -> None:
        self.last_active = time.monotonic()
        _forward(frame, self.server)

    def _flush_client(self) -> None:
        t = self.client_transport
        for chunk in self.server.data_to_send():
            if chunk == b"":
                self.closed = True
                if not t.is_closing():
                    t.close()
                return
            if not t.is_closing():
                t.write(chunk)

    def _flush_upstream(self) -> None:
        if self.client is None or self.upstream is None or self.upstream.transport is None:
            return
        t = self.upstream.transport
        for chunk in self.client.data_to_send():
            if chunk == b"":
                if not t.is_closing():
                    t.close()
                return
            if not t.is_closing():
                t.write(chunk)

    # ------------------------------------------------------------------ flow control and limits
    def client_pause(self, paused: bool) -> None:
        """The upstream's write buffer is full (or drained): stop (or resume) reading the client."""
        t = self.client_transport
        if t.is_closing():
            return
        if paused:
            t.pause_reading()
        else:
            t.resume_reading()

    def upstream_pause(self, paused: bool) -> None:
        if self.upstream is None or self.upstream.transport is None or self.upstream.transport.is_closing():
            return
        if paused:
            self.upstream.transport.pause_reading()
        else:
            self.upstream.transport.resume_reading()

    def check(self, now: float) -> None:
        if self.closed or self.server.state is not State.OPEN:
            return
        why = ""
        if now - self.last_active > self.integ.idle_timeout_s:
            why = f"idle for {self.integ.idle_timeout_s:g}s"
        elif now - self.started > self.integ.max_duration_s:
            why = f"connection older than {self.integ.max_duration_s:g}s"
        if why:
            self.going_away(why)

    def going_away(self, why: str) -> None:
        """Close both sides with 1001 (idle, too old, or the sidecar draining); again is a no-op."""
        if self.closed or self.server.state is not State.OPEN:
            return
        self.server.send_close(1001, why)
        if self.client is not None and self.client.state is State.OPEN:
            self.client.send_close(1001, why)
        self._flush_client()
        self._flush_upstream()

    # ------------------------------------------------------------------ Tunnel (the client connection's side)
    def data(self, data: bytes) -> None:
        self.client_data(data)

    def eof(self) -> bool | None:
        self.client_eof()
        return True  # half-closed: the upstream may still send its close

    def lost(self) -> None:
        self.client_lost()

    def pause(self, paused: bool) -> None:
        """The client's write buffer is full (or drained): stop (or resume) reading the upstream."""
        self.upstream_pause(paused)

    def client_lost(self) -> None:
        self.closed = True
        if self.upstream is not None and self.upstream.transport is not None:
            if self.client is not None and self.client.state is State.OPEN:
                self.client.send_close(1001, "client went away")
                self._flush_upstream()
            self.upstream.transport.close()


def _forward(frame: Frame, to: ServerProtocol | ClientProtocol) -> None:
    """Send a frame received on one side out of the other side's protocol (data, or the close code)."""
    if to.state is not State.OPEN:
        return
    op = frame.opcode
    if op is Opcode.TEXT:
        to.send_text(frame.data, fin=frame.fin)
    elif op is Opcode.BINARY:
        to.send_binary(frame.data, fin=frame.fin)
    elif op is Opcode.CONT:
        to.send_continuation(frame.data, fin=frame.fin)
    elif op is Opcode.CLOSE:
        close = Close.parse(frame.data) if frame.data else Close(1000, "")
        # 1005/1006/1015 are never sent on the wire: a close without a code becomes a normal close
        to.send_close(close.code if close.code not in (1005, 1006, 1015) else 1000, close.reason)
    # pings and pongs are answered by each side's protocol itself
