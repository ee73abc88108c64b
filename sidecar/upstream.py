"""Upstream HTTP/1.1 connections: a keep-alive pool per (host, port) and the response-side protocol.

An `UpstreamConn` parses the upstream's response with httptools and hands
events to whichever exchange currently owns it (`UpstreamListener`); the
pool keeps idle connections LIFO and drops those the upstream closed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Protocol, cast

import httptools


class UpstreamListener(Protocol):
    """What an exchange implements to receive an upstream response."""

    def on_upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_upstream_body(self, chunk: bytes) -> None: ...
    def on_upstream_end(self, keep_alive: bool) -> None: ...
    def on_upstream_error(self, reason: str, before_head: bool) -> None: ...
    def on_upstream_writable(self, writable: bool) -> None: ...
    def cork(self) -> None: ...
    def uncork(self) -> None: ...


class UpstreamConn(asyncio.Protocol):
    """One connection to an upstream; owned by at most one exchange at a time."""

    __slots__ = (
        "_flush_scheduled",
        "_headers",
        "_out",
        "_reason",
        "alive",
        "got_bytes",
        "head_done",
        "idle_since",
        "key",
        "listener",
        "parser",
        "pool",
        "reused",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.listener: UpstreamListener | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self.head_done = False
        self.got_bytes = False
        self.alive = True
        self.reused = False
        self.idle_since = 0.0
        self._out: list[bytes] = []
        self._flush_scheduled = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.transport.set_write_buffer_limits(high=256 * 1024)

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:  # unsolicited bytes on an idle connection: unusable
            self.close()
            return
        self.got_bytes = True
        listener.cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("invalid upstream response: unexpected protocol upgrade")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid upstream response: {exc}")
        finally:
            listener.uncork()

    def eof_received(self) -> bool | None:
        if self.listener is not None and self.head_done:
            # close-delimited body: the end of the stream ends the message
            try:
                self.parser.feed_data(b"")
            except httptools.HttpParserError:
                pass
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.pool.forget(self)
        listener = self.listener
        if listener is not None:
            self.listener = None
            if not self.head_done:
                why = (
                    "upstream reset before response headers"
                    if self.got_bytes or exc
                    else ("upstream closed the connection before response headers")
                )
                listener.on_upstream_error(why, True)
            else:
                listener.on_upstream_error("upstream connection lost mid-response", False)

    def pause_writing(self) -> None:
        self.pool.write_pauses += 1  # the upstream reads slower than the client sends
        if self.listener is not None:
            self.listener.on_upstream_writable(False)

    def resume_writing(self) -> None:
        self.pool.write_resumes += 1
        if self.listener is not None:
            self.listener.on_upstream_writable(True)

    # -- httptools callbacks
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers = []
            self._reason = b""
            return  # interim response (100 Continue): wait for the final one
        self.head_done = True
        listener = self.listener
        if listener is not None:
            listener.on_upstream_head(status, self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        if self.listener is not None:
            self.listener.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if not self.head_done:
            return
        listener = self.listener
        keep = self.parser.should_keep_alive()
        if listener is not None:
            self.listener = None
            listener.on_upstream_end(keep)

    # -- exchange side
    def attach(self, listener: UpstreamListener) -> None:
        self.listener = listener
        self._headers = []
        self._reason = b""
        self.head_done = False
        self.got_bytes = False

    def write(self, data: bytes, corked: bool = False) -> None:
        """Write now, or (corked) when the caller's batch ends and it calls flush()."""
        self._out.append(data)
        if not corked and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def pause_reading(self) -> None:
        """The client reads slower than the upstream sends: stop reading the upstream."""
        if self.transport is not None and not self.transport.is_closing():
            self.pool.read_pauses += 1
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.pool.read_resumes += 1
            self.transport.resume_reading()

    def _fail(self, reason: str) -> None:
        listener = self.listener
        self.listener = None
        self.close()
        if listener is not None:
            listener.on_upstream_error(reason, not self.head_done)

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def discard(self) -> None:
        """Close the connection without telling its current owner (who is done with it)."""
        self.listener = None
        self.close()

    def release(self) -> None:
        """Give the connection back to the pool (response complete, keep-alive)."""
        self.listener = None
        self._out.clear()
        self.parser = httptools.HttpResponseParser(self)
        self.pool.put_idle(self)


class UpstreamPool:
    """Keep-alive connections per (host, port), reused LIFO."""

    def __init__(self, max_idle_per_key: int = 64, idle_timeout_s: float = 60.0) -> None:
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        self.max_idle = max_idle_per_key
        self.idle_timeout_s = idle_timeout_s
        self.connects = 0
        # flow control, for /stats: reading from upstreams paused for slow clients (and resumed),
        # upstreams' write buffers full so their clients' reading paused (and resumed)
        self.read_pauses = self.read_resumes = self.write_pauses = self.write_resumes = 0

    def take_idle(self, host: str, port: int) -> UpstreamConn | None:
        conns = self._idle.get((host, port))
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.alive and conn.transport is not None and not conn.transport.is_closing():
                if now - conn.idle_since < self.idle_timeout_s:
                    conn.reused = True
                    return conn
            conn.close()
        return None

    async def connect(self, host: str, port: int, connect_timeout_s: float) -> UpstreamConn:
        loop = asyncio.get_running_loop()
        key = (host, port)
        factory: Callable[[], UpstreamConn] = lambda: UpstreamConn(self, key)  # noqa: E731
        self.connects += 1
        _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), connect_timeout_s)
        return proto

    def idle_counts(self) -> dict[tuple[str, int], int]:
        """Idle keep-alive connections per upstream (host, port)."""
        return {key: len(conns) for key, conns in self._idle.items() if conns}

    def put_idle(self, conn: UpstreamConn) -> None:
        if not conn.alive:
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def forget(self, conn: UpstreamConn) -> None:
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
