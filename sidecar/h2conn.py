"""One HTTP/2 connection without I/O, either end: bytes in, events to a handler, bytes out.

What it owns: the preface, SETTINGS (and their ACK), PING, GOAWAY, header blocks across
CONTINUATION frames, padding, stream ids and the concurrent-stream limit, and flow control both ways:
a DATA frame is never sent beyond the peer's window (what does not fit waits, in order with the
trailers behind it), and the window given to the peer is handed back only when the handler says
the bytes went on (`consume`), so a slow reader on one side holds the writer on the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from meshgate.sidecar import h2wire as w

Headers = Sequence[tuple[bytes, bytes]]


class Handler(Protocol):
    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None: ...
    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None: ...
    def on_reset(self, sid: int, code: int) -> None: ...
    def on_drained(self, sid: int, sent: int) -> None: ...
    def on_goaway(self, last_sid: int, code: int) -> None: ...


class _Stream:
    __slots__ = ("ended_local", "ended_remote", "queue", "queued", "recv_window", "send_window", "unacked")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0  # bytes consumed but not yet handed back with a WINDOW_UPDATE
        self.queue: deque[tuple[bytes | None, bool, bytes]] = deque()  # (data | None=headers, end, block)
        self.queued = 0
        self.ended_local = False
        self.ended_remote = False


class H2Conn:
    """`feed()` what the socket read; write what `take()` returns (the owner is told by `wake`)."""

    RECV_WINDOW = 1 << 20  # per stream
    CONN_WINDOW = 1 << 22  # the whole connection
    MAX_STREAMS = 256
    MAX_HEADER_LIST = 64 * 1024

    def __init__(self, handler: Handler, *, client: bool, wake: Callable[[], None]) -> None:
        self.handler = handler
        self.client = client
        self.wake = wake
        self.out = bytearray()
        self.streams: dict[int, _Stream] = {}
        self.decoder = w.HeaderDecoder(self.MAX_HEADER_LIST)
        self.send_window = w.DEFAULT_WINDOW  # the connection's, given by the peer
        self.peer_initial = w.DEFAULT_WINDOW
        self.peer_frame = w.DEFAULT_FRAME
        self.peer_max_streams = 100  # until the peer's SETTINGS say otherwise (a common server default)
        self.recv_window = self.CONN_WINDOW
        self.conn_unacked = 0
        self.next_sid = 1
        self.last_peer_sid = 0
        self.goaway_received = False
        self.goaway_sent = False
        self.blocked: dict[int, _Stream] = {}  # streams with queued data, in the order they blocked
        self._buf = b""
        self._preface = not client  # a server first reads the client's preface
        self._block: list[bytes] | None = None  # a header block waiting for CONTINUATION
        self._block_head = (0, 0)  # (stream id, END_STREAM) of that block
        if client:
            self.out += w.PREFACE
        self.out += w.settings_frame(
            (
                (w.ENABLE_PUSH, 0),
                (w.MAX_CONCURRENT_STREAMS, self.MAX_STREAMS),
                (w.INITIAL_WINDOW_SIZE, self.RECV_WINDOW),
                (w.MAX_HEADER_LIST_SIZE, self.MAX_HEADER_LIST),
            )
        )
        self.out += w.window_update(0, self.CONN_WINDOW - w.DEFAULT_WINDOW)

    # -- output ---------------------------------------------------------------------------------

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def _emit(self, data: bytes) -> None:
        if not self.out:
            self.wake()
        self.out += data

    # -- streams --------------------------------------------------------------------------------

    @property
    def can_open(self) -> bool:
        return not self.goaway_received and not self.goaway_sent and len(self.streams) < self.peer_max_streams

    def open_stream(self) -> int:
        """A new stream id for a request (client end)."""
        sid = self.next_sid
        self.next_sid += 2
        self.streams[sid] = _Stream(self.peer_initial, self.RECV_WINDOW)
        return sid

    def send_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        self.send_block(sid, w.ENCODER.encode(headers), end_stream)

    def send_block(self, sid: int, block: bytes, end_stream: bool) -> None:
        """Send a header block made by `h2wire.ENCODER` (it needs no state of this connection)."""
        st = self.streams.get(sid)
        if st is None or st.ended_local:
            return
        if st.queue:  # trailers go behind the data still waiting for window
            st.queue.append((None, end_stream, block))
            if end_stream:
                st.ended_local = True
            return
        self._write_headers(sid, block, end_stream)
        if end_stream:
            self._end_local(sid, st)

    def _write_headers(self, sid: int, block: bytes, end_stream: bool) -> None:
        size = self.peer_frame
        flags = w.END_STREAM if end_stream else 0
        if len(block) <= size:
            self._emit(w.frame(w.HEADERS, flags | w.END_HEADERS, sid, block))
            return
        parts = [block[i : i + size] for i in range(0, len(block), size)]
        out = [w.frame(w.HEADERS, flags, sid, parts[0])]
        out += [w.frame(w.CONTINUATION, 0, sid, p) for p in parts[1:-1]]
        out.append(w.frame(w.CONTINUATION, w.END_HEADERS, sid, parts[-1]))
        self._emit(b"".join(out))

    def send_data(self, sid: int, data: bytes, end_stream: bool) -> int:
        """Send what the windows allow; the rest waits. Returns the bytes sent at once when nothing was
        queued; bytes that go through the queue are reported to the handler's `on_drained`."""
        st = self.streams.get(sid)
        if st is None or st.ended_local:
            return 0
        n = len(data)
        if not st.queue and n <= st.send_window and n <= self.send_window and n <= self.peer_frame:
            st.send_window -= n
            self.send_window -= n
            self._emit(w.frame(w.DATA, w.END_STREAM if end_stream else 0, sid, data))
            if end_stream:
                self._end_local(sid, st)
            return n
        st.queue.append((data, end_stream, b""))
        st.queued += n
        if end_stream:
            st.ended_local = True
        self.blocked[sid] = st
        self._flush_stream(sid, st)  # what leaves the queue is reported by on_drained
        return 0

    def _flush_stream(self, sid: int, st: _Stream) -> int:
        """Send queued items while the windows allow; returns the data bytes still queued."""
        sent = 0
        while st.queue:
            data, end, block = st.queue[0]
            if data is None:
                st.queue.popleft()
                self._write_headers(sid, block, end)
                continue
            room = min(st.send_window, self.send_window, self.peer_frame)
            if room <= 0 and data:
                break
            chunk, rest = data[:room], data[room:]
            last = end and not rest
            self._emit(w.frame(w.DATA, w.END_STREAM if last else 0, sid, chunk))
            st.send_window -= len(chunk)
            self.send_window -= len(chunk)
            sent += len(chunk)
            if rest:
                st.queue[0] = (rest, end, b"")
            else:
                st.queue.popleft()
        st.queued -= sent
        if sent:
            self.handler.on_drained(sid, sent)
        if not st.queue:
            self.blocked.pop(sid, None)
            if st.ended_local:
                self._end_local(sid, st)
        return st.queued

    def _flush_blocked(self) -> None:
        for sid, st in list(self.blocked.items()):
            if self.send_window <= 0:
                break
            self._flush_stream(sid, st)

    def _end_local(self, sid: int, st: _Stream) -> None:
        st.ended_local = True
        if st.ended_remote and not st.queue:
            self.streams.pop(sid, None)

    def reset(self, sid: int, code: int) -> None:
        if self.streams.pop(sid, None) is not None:
            self.blocked.pop(sid, None)
            self._emit(w.rst_stream(sid, code))

    def consume(self, sid: int, n: int) -> None:
        """`n` bytes of stream `sid` went on: hand their window back (in batches)."""
        self.conn_unacked += n
        if self.conn_unacked >= self.CONN_WINDOW // 4:
            self.recv_window += self.conn_unacked
            self._emit(w.window_update(0, self.conn_unacked))
            self.conn_unacked = 0
        st = self.streams.get(sid)
        if st is not None and not st.ended_remote:
            st.unacked += n
            if st.unacked >= self.RECV_WINDOW // 4:
                st.recv_window += st.unacked
                self._emit(w.window_update(sid, st.unacked))
                st.unacked = 0

    def goaway(self, code: int = w.NO_ERROR, debug: bytes = b"") -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self._emit(w.goaway(self.last_peer_sid, code, debug))

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        self._emit(w.frame(w.PING, 0, 0, opaque))

    # -- input ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Everything the socket read; raises H2Error on a connection error (send `error_frame`)."""
        buf = self._buf + data if self._buf else data
        at = 0
        if self._preface:
            if len(buf) < len(w.PREFACE):
                if not w.PREFACE.startswith(bytes(buf)):
                    raise w.H2Error(w.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._buf = buf
                return
            if not buf.startswith(w.PREFACE):
                raise w.H2Error(w.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = False
            at = len(w.PREFACE)
        end = len(buf)
        while end - at >= 9:
            length, kind, flags, sid = w.parse_head(buf, at)
            if length > w.DEFAULT_FRAME:  # we do not raise SETTINGS_MAX_FRAME_SIZE
                raise w.H2Error(w.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
            if end - at - 9 < length:
                break
            payload = buf[at + 9 : at + 9 + length]
            at += 9 + length
            self._frame(kind, flags, sid, payload)
        self._buf = buf[at:] if at < end else b""

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self._block is not None and kind != w.CONTINUATION:
            raise w.H2Error(w.PROTOCOL_ERROR, "header block interrupted")
        if kind == w.DATA:
            self._data(flags, sid, payload)
        elif kind == w.HEADERS:
            self._headers(flags, sid, payload)
        elif kind == w.CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == w.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == w.SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == w.PING:
            if sid or len(payload) != 8:
                raise w.H2Error(w.PROTOCOL_ERROR, "bad PING")
            if not flags & w.ACK:
                self._emit(w.frame(w.PING, w.ACK, 0, payload))
        elif kind == w.RST_STREAM:
            if self.streams.pop(sid, None) is not None:
                self.blocked.pop(sid, None)
                self.handler.on_reset(sid, w.u32(payload))
        elif kind == w.GOAWAY:
            last, code = w.parse_goaway(payload)
            self.goaway_received = True
            self.handler.on_goaway(last, code)
        elif kind == w.PUSH_PROMISE:
            raise w.H2Error(w.PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        n = len(payload)
        self.recv_window -= n
        if self.recv_window < 0:
            raise w.H2Error(w.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        st = self.streams.get(sid)
        if st is None or st.ended_remote:
            self.consume(0, n)  # closed or reset stream: its bytes still count on the connection
            idle = sid >= self.next_sid if self.client else sid > self.last_peer_sid
            if sid == 0 or idle:
                raise w.H2Error(w.PROTOCOL_ERROR, "DATA on an idle stream")
            if st is not None:
                self.reset(sid, w.STREAM_CLOSED)
            return  # a stream reset here: ignored
        st.recv_window -= n
        if st.recv_window < 0:
            raise w.H2Error(w.FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        data = w.unpad(flags, payload)
        if len(data) < n:
            self.consume(sid, n - len(data))  # padding goes on at once
        end = bool(flags & w.END_STREAM)
        if end:
            self._end_remote(sid, st)
        self.handler.on_data(sid, data, end)

    def _end_remote(self, sid: int, st: _Stream) -> None:
        st.ended_remote = True
        if st.ended_local and not st.queue:
            self.streams.pop(sid, None)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise w.H2Error(w.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = w.unpad(flags, payload)
        if flags & w.PRIORITY_FLAG:
            block = block[5:]
        if flags & w.END_HEADERS:
            self._header_block(sid, block, bool(flags & w.END_STREAM))
        else:
            self._block, self._block_head = [block], (sid, flags & w.END_STREAM)

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self._block is None or sid != self._block_head[0]:
            raise w.H2Error(w.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._block.append(payload)
        if sum(map(len, self._block)) > self.MAX_HEADER_LIST * 2:
            raise w.H2Error(w.ENHANCE_YOUR_CALM, "header block too large")
        if flags & w.END_HEADERS:
            block, self._block = b"".join(self._block), None
            self._header_block(sid, block, bool(self._block_head[1]))

    def _header_block(self, sid: int, block: bytes, end: bool) -> None:
        headers = self.decoder.decode(block)
        st = self.streams.get(sid)
        if st is None:
            if self.client or sid <= self.last_peer_sid:
                return  # a late frame on a stream closed or reset here: ignored
            if sid % 2 == 0:
                raise w.H2Error(w.PROTOCOL_ERROR, "a client opened an even stream id")
            self.last_peer_sid = sid
            if self.goaway_sent or len(self.streams) >= self.MAX_STREAMS:
                self._emit(w.rst_stream(sid, w.REFUSED_STREAM))
                return
            st = self.streams[sid] = _Stream(self.peer_initial, self.RECV_WINDOW)
        elif st.ended_remote:
            self.reset(sid, w.STREAM_CLOSED)
            return
        if end:
            self._end_remote(sid, st)
        self.handler.on_headers(sid, headers, end)

    def _window_update(self, sid: int, payload: bytes) -> None:
        inc = w.u32(payload)
        if sid == 0:
            if inc == 0:
                raise w.H2Error(w.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += inc
            if self.send_window > w.MAX_WINDOW:
                raise w.H2Error(w.FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        st = self.streams.get(sid)
        if st is None:
            return
        st.send_window += inc
        if inc == 0 or st.send_window > w.MAX_WINDOW:
            self.reset(sid, w.FLOW_CONTROL_ERROR)
            return
        if st.queue:
            self._flush_stream(sid, st)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise w.H2Error(w.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & w.ACK:
            return
        for key, value in w.parse_settings(payload):
            if key == w.INITIAL_WINDOW_SIZE:
                if value > w.MAX_WINDOW:
                    raise w.H2Error(w.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta, self.peer_initial = value - self.peer_initial, value
                for st in self.streams.values():
                    st.send_window += delta
            elif key == w.MAX_FRAME_SIZE:
                if not w.DEFAULT_FRAME <= value <= 16_777_215:
                    raise w.H2Error(w.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_frame = value
            elif key == w.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            # HEADER_TABLE_SIZE needs nothing: our encoder never uses the dynamic table
        self._emit(w.frame(w.SETTINGS, w.ACK, 0))
        self._flush_blocked()
