"""A gRPC client on the sidecar's own HTTP/2 connection (`h2conn`), without grpcio: unary and streaming
calls over TLS (ALPN h2) or cleartext, deadlines (`grpc-timeout`), keepalive pings, GOAWAY.

It is how the sidecar talks to control (certificates, the config stream): grpcio would add 10 MiB
to every sidecar (docs/benchmarks.md), and the relay already carries an HTTP/2 connection. Messages
are bytes here; the caller (de)serializes them with protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from meshgate.sidecar import h2wire as w
from meshgate.sidecar.errors import GrpcCode
from meshgate.sidecar.h2conn import H2Conn, Headers

MAX_MESSAGE = 64 * 1024 * 1024  # what a call may receive (a snapshot with many descriptor sets)
Metadata = Sequence[tuple[str, str]]

# The status of a call whose answer was not gRPC, by HTTP status (gRPC's own mapping).
_HTTP_CODES = {
    400: GrpcCode.INTERNAL,
    401: GrpcCode.UNAUTHENTICATED,
    403: GrpcCode.PERMISSION_DENIED,
    404: GrpcCode.UNIMPLEMENTED,
    429: GrpcCode.UNAVAILABLE,
    502: GrpcCode.UNAVAILABLE,
    503: GrpcCode.UNAVAILABLE,
    504: GrpcCode.UNAVAILABLE,
}


class RpcError(Exception):
    """A call that ended with a status other than OK (or could not be made: UNAVAILABLE)."""

    def __init__(self, code: GrpcCode, details: str = "") -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details


class Call:
    """One call: `send` messages, `done_writing`, `recv` until None (OK) or an RpcError."""

    def __init__(self, conn: _Conn, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.responded = False  # the answer's headers came
        self.error: RpcError | None = None
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None
        self._buf = bytearray()
        self._messages: deque[bytes] = deque()
        self._wake = asyncio.Event()

    def send(self, message: bytes) -> None:
        if not self.ended:
            self.conn.h2.send_data(self.sid, b"\0" + len(message).to_bytes(4, "big") + message, False)

    def done_writing(self) -> None:
        if not self.ended:
            self.conn.h2.send_data(self.sid, b"", True)

    async def recv(self) -> bytes | None:
        """The next message; None once the call ended with OK; raises RpcError otherwise (after the
        messages that came before the status, as grpcio delivers them)."""
        while not self._messages:
            if self.ended:
                if self.error is not None:
                    raise self.error
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._messages.popleft()

    def cancel(self) -> None:
        if not self.ended:
            self.conn.h2.reset(self.sid, w.CANCEL)
            self.end(GrpcCode.CANCELLED, "cancelled by the client")

    def end(self, code: GrpcCode, details: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        if code != GrpcCode.OK:
            self.error = RpcError(code, details)  # raised once the messages that came are taken
        if self.timer is not None:
            self.timer.cancel()
        self.conn.call_ended(self.sid)
        self._wake.set()

    def deadline(self) -> None:
        self.timer = None
        if not self.ended:
            self.conn.h2.reset(self.sid, w.CANCEL)
            self.end(GrpcCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # -- from the connection --------------------------------------------------------------------

    def headers(self, headers: Headers, end_stream: bool) -> None:
        fields = dict(headers)
        if not self.responded:
            self.responded = True
            status = fields.get(b":status", b"")
            if status != b"200":
                code = _HTTP_CODES.get(int(status) if status.isdigit() else 0, GrpcCode.UNKNOWN)
                self._reset(code, f"HTTP status {status.decode('latin-1')} instead of a gRPC answer")
                return
            if not fields.get(b"content-type", b"").startswith(b"application/grpc"):
                self._reset(GrpcCode.UNKNOWN, "the answer is not application/grpc")
                return
            if not end_stream:
                return
        if not end_stream:
            self._reset(GrpcCode.INTERNAL, "headers after the answer's headers")
            return
        raw = fields.get(b"grpc-status", b"")
        if not raw.isdigit() or int(raw) > max(GrpcCode):
            self.end(GrpcCode.UNKNOWN if raw else GrpcCode.INTERNAL, "no valid grpc-status in the trailers")
            return
        details = unquote_to_bytes(fields.get(b"grpc-message", b"")).decode("utf-8", "replace")
        if self._buf and raw == b"0":
            self.end(GrpcCode.INTERNAL, "the answer ended inside a message")
            return
        self.end(GrpcCode(int(raw)), details)

    def data(self, data: bytes, end_stream: bool) -> None:
        self.conn.h2.consume(self.sid, len(data))  # bounded below by MAX_MESSAGE
        if self.ended:
            return
        buf = self._buf
        buf += data
        while len(buf) >= 5:
            if buf[0] != 0:
                self._reset(GrpcCode.INTERNAL, "a compressed message (this client asks for none)")
                return
            size = int.from_bytes(buf[1:5], "big")
            if size > MAX_MESSAGE:
                self._reset(GrpcCode.RESOURCE_EXHAUSTED, f"a message of {size} bytes (at most {MAX_MESSAGE})")
                return
            if len(buf) < 5 + size:
                break
            self._messages.append(bytes(buf[5 : 5 + size]))
            del buf[: 5 + size]
        if self._messages:
            self._wake.set()
        if end_stream:
            self.end(GrpcCode.INTERNAL, "the answer ended without a status")

    def _reset(self, code: GrpcCode, details: str) -> None:
        self.conn.h2.reset(self.sid, w.CANCEL)
        self.end(code, details)


class _Conn(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC server, carrying the calls of one `Channel`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, live: set[_Conn]) -> None:
        self.loop = loop
        self.live = live  # the channel's open connections: this one from connected to closed
        self.retiring = False
        self.h2 = H2Conn(self, client=True, wake=self._wake)
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, Call] = {}
        self.closed = False
        self.why = "connection closed"
        self.read_at = loop.time()
        self._flushing = False

    @property
    def usable(self) -> bool:
        return not self.closed and not self.retiring and self.h2.can_open

    def retire(self) -> None:
        """No new calls here; close once the last one ended."""
        self.retiring = True
        if not self.calls:
            self.close("replaced")

    def call_ended(self, sid: int) -> None:
        self.calls.pop(sid, None)
        if self.retiring and not self.calls:
            self.close("replaced")

    def _wake(self) -> None:
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self.transport is not None and not self.closed and self.h2.out:
            self.transport.write(self.h2.take())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.live.add(self)  # (a TLS handshake that fails never gets here, nor to connection_lost)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.read_at = self.loop.time()
        try:
            self.h2.feed(data)
        except w.H2Error as exc:
            self.h2.goaway(exc.code)
            self._flush()
            self.close(f"HTTP/2 error from the server: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.live.discard(self)
        for call in list(self.calls.values()):
            call.end(GrpcCode.UNAVAILABLE, self.why if exc is None else f"{self.why}: {exc}")

    def close(self, why: str) -> None:
        """Close after writing what is pending (the resets of cancelled calls) and a GOAWAY, so the
        server ends those calls now rather than when it notices the connection is gone."""
        self.why = why
        if self.transport is not None and not self.closed:
            self.h2.goaway()
            self._flush()
            self.transport.close()

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call.headers(headers, end_stream)

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        call = self.calls.get(sid)
        if call is None:
            self.h2.consume(sid, len(data))
        else:
            call.data(data, end_stream)

    def on_reset(self, sid: int, code: int) -> None:
        call = self.calls.get(sid)
        if call is not None:
            refused = code == w.REFUSED_STREAM
            call.end(
                GrpcCode.UNAVAILABLE if refused else GrpcCode.INTERNAL, f"stream reset by the server ({code})"
            )

    def on_drained(self, sid: int, sent: int) -> None:
        """Nothing to do: `Call.send` queues in the connection, and nothing here waits for window."""

    def on_goaway(self, last_sid: int, code: int) -> None:
        for sid, call in list(self.calls.items()):
            if sid > last_sid:
                call.end(GrpcCode.UNAVAILABLE, f"the server went away (GOAWAY {code})")
        if not self.calls:
            self.close("the server went away")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError for anything else."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {address!r}")
    return host.strip("[]"), int(port)


class Channel:
    """Calls to one server over one connection at a time: opened on first use (once, however many
    calls wait for it), and again when it closed or can take no more streams; a connection replaced
    that way closes when its last call ends."""

    def __init__(
        self,
        address: str,
        tls: ssl.SSLContext | None,
        *,
        keepalive_s: float | None = 10.0,  # None: no PINGs (grpcio servers refuse them by default)
        keepalive_timeout_s: float = 5.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port = split_address(address)
        self.authority = address.encode("idna")
        self.tls = tls
        self.keepalive_s = keepalive_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: _Conn | None = None
        self._conns: set[_Conn] = set()  # the current one and those replaced, until they close
        self._connecting: asyncio.Future[_Conn] | None = None
        self._pingers: set[asyncio.Task[None]] = set()
        self.closed = False

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        for task in self._pingers:
            task.cancel()
        for conn in list(self._conns):
            conn.close("channel closed")
        self._conn = None

    async def _connection(self) -> _Conn:
        if self.closed:
            raise RpcError(GrpcCode.CANCELLED, "the channel is closed")
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None:
            pending = self._connecting = asyncio.ensure_future(self._connect())
            pending.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, pending: asyncio.Future[_Conn]) -> None:
        self._connecting = None
        if not pending.cancelled() and pending.exception() is None:
            old, self._conn = self._conn, pending.result()
            if old is not None:
                old.retire()
            if self.closed:  # closed while connecting
                self.close()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                transport, conn = await loop.create_connection(
                    lambda: _Conn(loop, self._conns),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise RpcError(
                GrpcCode.UNAVAILABLE, f"cannot connect to {self.host}:{self.port}: {exc}"
            ) from None
        if self.tls is not None:
            tls_object = transport.get_extra_info("ssl_object")
            if tls_object is None or tls_object.selected_alpn_protocol() != "h2":
                transport.close()
                raise RpcError(
                    GrpcCode.UNAVAILABLE, f"{self.host}:{self.port} did not agree to HTTP/2 (ALPN)"
                )
        if self.keepalive_s is not None:
            task = loop.create_task(self._keepalive(conn, self.keepalive_s))
            self._pingers.add(task)
            task.add_done_callback(self._pingers.discard)
        return conn

    async def _keepalive(self, conn: _Conn, every_s: float) -> None:
        """A PING every `every_s`; a connection that answers nothing within the timeout is closed."""
        while not conn.closed:
            await asyncio.sleep(every_s)
            sent = conn.loop.time()
            conn.h2.ping()
            await asyncio.sleep(self.keepalive_timeout_s)
            if conn.read_at < sent and not conn.closed:
                conn.close("keepalive timeout: the server answered no PING")

    async def start(self, path: str, metadata: Metadata = (), deadline_s: float | None = None) -> Call:
        """Open a call of method `path` (/package.Service/Method)."""
        conn = await self._connection()
        sid = conn.h2.open_stream()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https" if self.tls is not None else b"http"),
            (b":path", path.encode()),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"meshgate-sidecar"),
        ]
        if deadline_s is not None:
            headers.append((b"grpc-timeout", b"%dm" % max(1, int(deadline_s * 1000))))
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in metadata]
        call = conn.calls[sid] = Call(conn, sid)
        conn.h2.send_headers(sid, headers, False)
        if deadline_s is not None:
            call.timer = conn.loop.call_later(deadline_s, call.deadline)
        return call

    async def unary(
        self, path: str, request: bytes, metadata: Metadata = (), deadline_s: float | None = None
    ) -> bytes:
        call = await self.start(path, metadata, deadline_s)
        try:
            call.send(request)
            call.done_writing()
            answer = await call.recv()
            if answer is None:
                raise RpcError(GrpcCode.INTERNAL, "the server answered no message")
            if await call.recv() is not None:
                raise RpcError(GrpcCode.INTERNAL, "the server answered more than one message")
            return answer
        finally:
            with contextlib.suppress(Exception):
                call.cancel()
