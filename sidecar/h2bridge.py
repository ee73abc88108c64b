"""REST over HTTP/2 (h2c): each stream that is not a gRPC call is served by the HTTP/1.1 listener.

A stream becomes one request on a connection of its own to the HTTP/1.1 code (`ClientConn` on a
`StreamTransport`), so it meets every choke point a plain request meets (path normalisation,
routes, filters, the head writer's checks). The request is rebuilt from checked parts only: pseudo-
headers and field names must be tokens, values hold no CR, LF or NUL, connection-specific fields
(RFC 9113 §8.2.2) are refused, and the body always goes in chunks the bridge frames itself (the
client's content-length is dropped), so no byte of DATA can start a second request. The answer is
parsed back (httptools) into HEADERS and DATA; flow control holds both ways: the window goes back
to the client as the HTTP/1.1 side takes the body, and a client that reads slowly pauses the
HTTP/1.1 side's writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools
from meshgate.sidecar.respond import h2_field_error

if TYPE_CHECKING:
    import asyncio

    from meshgate.sidecar.grpc_server import DownstreamConn
    from meshgate.sidecar.h2conn import Headers

_METHOD = re.compile(rb"[A-Z]+")
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_DROPPED_ANSWER = _CONNECTION_SPECIFIC | {b"content-length"}  # HTTP/2 frames the body itself


def request_head(headers: Headers) -> bytes | str:
    """The HTTP/1.1 request head for an h2 request, or why it is malformed."""
    error = h2_field_error(headers)
    if error is not None:
        return error
    pseudo: dict[bytes, bytes] = {}
    lines: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            if lines or name in pseudo or name not in (b":method", b":path", b":scheme", b":authority"):
                return f"pseudo-header {name.decode('latin-1')!r} misplaced, repeated or unknown"
            pseudo[name] = value
            continue
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            return f"connection-specific field {name.decode('latin-1')!r} in an HTTP/2 request"
        if name in (b"content-length", b"host"):
            continue  # the bridge frames the body itself; :authority is the host
        lines.append(name + b": " + value)
    method, path = pseudo.get(b":method", b""), pseudo.get(b":path", b"")
    if not _METHOD.fullmatch(method) or not path.startswith(b"/") or b" " in path:
        return "an HTTP/2 request needs :method and an origin-form :path (CONNECT is not served)"
    host = pseudo.get(b":authority") or next((v for k, v in headers if k == b"host"), b"")
    head = [method + b" " + path + b" HTTP/1.1", b"host: " + host, *lines, b"transfer-encoding: chunked"]
    return b"\r\n".join(head) + b"\r\n\r\n"


class BridgeStream:
    """One REST stream: the HTTP/1.1 connection that serves it, and its answer parsed back."""

    def __init__(self, down: DownstreamConn, sid: int, make_http: Callable[[], asyncio.Protocol]) -> None:
        self.down = down
        self.sid = sid
        self.head_request = False
        self.transport = StreamTransport(self)
        self.http = make_http()
        self.http.inbound_port = down.inbound_port  # type: ignore[attr-defined]
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.answered = False
        self.finished = False
        self.paused = False  # the HTTP/1.1 side stopped reading: the client's window waits
        self.owed = 0

    @property
    def responded(self) -> bool:
        return self.answered

    def start(self, headers: Headers, end_stream: bool) -> str | None:
        head = request_head(headers)
        if isinstance(head, str):
            return head
        self.head_request = head.startswith(b"HEAD ")
        self.http.connection_made(self.transport)  # type: ignore[arg-type]
        self.http.data_received(head)  # type: ignore[attr-defined]
        if end_stream:
            self.http.data_received(b"0\r\n\r\n")  # type: ignore[attr-defined]
        return None

    # -- the client's side --

    def client_data(self, data: bytes, end: bool) -> None:
        if self.finished:
            self.down.conn.consume(self.sid, len(data))
            return
        if data:
            self.http.data_received(b"%x\r\n%b\r\n" % (len(data), data))  # type: ignore[attr-defined]
            if self.paused:
                self.owed += len(data)
            else:
                self.down.conn.consume(self.sid, len(data))
        if end:
            self.http.data_received(b"0\r\n\r\n")  # type: ignore[attr-defined]

    def client_reset(self) -> None:
        self._close()

    def refuse(self, reason: str) -> None:
        """A malformed request: 400, as the HTTP/1.1 listener answers one (the reason stays here)."""
        body = b'{"message": "Bad request"}'
        head = [
            (b":status", b"400"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]
        self.down.conn.send_headers(self.sid, head, False)
        self.down.conn.send_data(self.sid, body, True)
        self.finished = True
        self.down.rest.pop(self.sid, None)

    def drained(self) -> None:
        """Queued answer bytes went to the client: the HTTP/1.1 side may write again."""
        if not self.finished and self.down.conn.streams.get(self.sid) is not None:
            if not self.down.conn.blocked.get(self.sid):
                self.http.resume_writing()

    # -- the HTTP/1.1 side's answer --

    def write(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.down.conn.reset(self.sid, 0x2)  # INTERNAL_ERROR: our own answer did not parse
            self._close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = b"%d" % self.parser.get_status_code()
        out = [(b":status", status), *((k, v) for k, v in self.headers if k not in _DROPPED_ANSWER)]
        self.answered = True
        self.down.conn.send_headers(self.sid, out, self.head_request)
        if self.head_request:
            self._done()

    def on_body(self, body: bytes) -> None:
        if self.finished:
            return
        self.down.conn.send_data(self.sid, bytes(body), False)
        if self.down.conn.blocked.get(self.sid) is not None:
            self.http.pause_writing()  # the client reads slowly

    def on_message_complete(self) -> None:
        if not self.finished:
            self.down.conn.send_data(self.sid, b"", True)
            self._done()

    def _done(self) -> None:
        self.finished = True
        self.down.rest.pop(self.sid, None)
        self._close()

    def _close(self) -> None:
        self.finished = True
        self.down.rest.pop(self.sid, None)
        if not self.transport.closed:
            self.transport.closed = True  # told after the call that got here returns (it may be a write)
            self.down.loop.call_soon(self.http.connection_lost, None)


class StreamTransport:
    """What the HTTP/1.1 code sees as its socket: writes go to the stream's answer parser."""

    def __init__(self, stream: BridgeStream) -> None:
        self.stream = stream
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.stream.write(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (
            self.stream.down.transport.get_extra_info(name, default)
            if self.stream.down.transport
            else default
        )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.stream.paused = True

    def resume_reading(self) -> None:
        stream = self.stream
        stream.paused = False
        owed, stream.owed = stream.owed, 0
        if owed:
            stream.down.conn.consume(stream.sid, owed)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        stream = self.stream
        if not stream.finished:  # closed before the answer was complete
            if stream.answered:
                stream.down.conn.reset(stream.sid, 0x2)
            stream.finished = True
            stream.down.rest.pop(stream.sid, None)
        if not self.closed:
            self.closed = True
            stream.down.loop.call_soon(stream.http.connection_lost, None)

    abort = close
