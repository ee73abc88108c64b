"""The HTTP/2 codec's cost per gRPC call, without sockets: the `h2` library's connection object
against the relay's own (`sidecar/h2conn.py` with `h2wire`'s caching HPACK), on one server end.

A client (the `h2` library) records the bytes of N unary calls (HEADERS + DATA each, as grpc
clients send them); each codec under test parses them and answers every call with response
HEADERS, one DATA frame and trailers. Reported: microseconds per call, best of --rounds. A relay
pays about twice this (a client end and a server end) on top of its routing and filters.

Usage: python bench/h2codec.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
from meshgate.sidecar import h2wire as w
from meshgate.sidecar.h2conn import H2Conn, Headers

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/bench.Echo/Echo"),
    (b":authority", b"127.0.0.1:9090"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.85.3 grpc-c/53.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
]
MESSAGE = b"\0\0\0\0\x40" + b"x" * 64
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def client_bytes(calls: int) -> tuple[bytes, list[bytes]]:
    """The preface and SETTINGS, then each call's bytes (fed one call at a time)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.local_settings.max_concurrent_streams = 2**31 - 1
    conn.initiate_connection()
    first = conn.data_to_send()
    conn.receive_data(w.settings_frame(()))  # the server's preface, as a real one would send
    conn.data_to_send()  # (its ACK)
    out = []
    for i in range(calls):
        sid = 1 + 2 * i
        conn.send_headers(sid, REQUEST)
        conn.send_data(sid, MESSAGE, end_stream=True)
        conn.increment_flow_control_window(len(MESSAGE))  # the answer's DATA may come: its window
        out.append(conn.data_to_send())
        conn.receive_data(w.window_update(0, len(MESSAGE)))  # the server hands the window back
        conn.data_to_send()
    return first, out


def with_h2(first: bytes, calls: list[bytes]) -> float:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.local_settings.max_concurrent_streams = 2**31 - 1
    conn.initiate_connection()
    conn.receive_data(first)
    conn.data_to_send()
    t0 = time.perf_counter()
    for data in calls:
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.DataReceived):
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                sid = e.stream_id
                conn.send_headers(sid, RESPONSE)
                conn.send_data(sid, MESSAGE)
                conn.send_headers(sid, TRAILERS, end_stream=True)
        conn.data_to_send()
    return time.perf_counter() - t0


class _Answer:
    def __init__(self) -> None:
        self.conn: H2Conn | None = None

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        conn = self.conn
        assert conn is not None
        conn.consume(sid, len(data))
        if end_stream:
            conn.send_block(sid, _RESPONSE, False)
            conn.send_data(sid, MESSAGE, False)
            conn.send_block(sid, _TRAILERS, True)

    def on_reset(self, sid: int, code: int) -> None:
        pass

    def on_drained(self, sid: int, sent: int) -> None:
        pass

    def on_goaway(self, last_sid: int, code: int) -> None:
        pass


_RESPONSE = w.ENCODER.encode(RESPONSE)
_TRAILERS = w.ENCODER.encode(TRAILERS)


def with_relay_codec(first: bytes, calls: list[bytes]) -> float:
    handler = _Answer()
    conn = handler.conn = H2Conn(handler, client=False, wake=lambda: None)
    H2Conn.MAX_STREAMS = 2**31 - 1
    conn.feed(first)
    conn.take()
    t0 = time.perf_counter()
    for data in calls:
        conn.feed(data)
        conn.take()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    ns = p.parse_args()
    first, calls = client_bytes(ns.calls)
    best: dict[str, float] = {}
    runs: dict[str, Any] = {"h2 (H2Connection)": with_h2, "meshgate (h2conn + h2wire)": with_relay_codec}
    for _ in range(ns.rounds):
        for name, fn in runs.items():
            best[name] = min(best.get(name, 1e9), fn(first, calls))
    print("HTTP/2 codec, server end, one unary gRPC call (HEADERS+DATA in; HEADERS, DATA, trailers out)")
    for name, t in best.items():
        print(f"  {name:28s} {t / ns.calls * 1e6:7.1f} us per call")
    h2t, ours = best["h2 (H2Connection)"], best["meshgate (h2conn + h2wire)"]
    print(f"  h2 / meshgate = {h2t / ours:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
