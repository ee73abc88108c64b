"""HTTP/2 on the sidecar's own port (prior knowledge, h2c), through a real sidecar process: REST
requests are served as HTTP/1.1 requests are (routes, filters, the head writer), gRPC calls by the
relay on the same port, and an HTTP/2 request cannot smuggle a second request or a header."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from .conftest import Backends, LoopThread, bundle, http_route, read_request, snapshot
from .test_main import get, serve_file


def h2_request(
    port: int, headers: list[tuple[bytes, bytes]], body: bytes = b"", *, validate: bool = True
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request over h2c with prior knowledge: (status, headers, body)."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=validate,
        normalize_outbound_headers=validate,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        conn.send_headers(1, headers, end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        s.sendall(conn.data_to_send())
        status, got, data = 0, {}, b""
        while True:
            chunk = s.recv(65536)
            assert chunk, "connection closed before the answer ended"
            for e in conn.receive_data(chunk):
                if isinstance(e, h2.events.ResponseReceived):
                    got = dict(e.headers)
                    status = int(got[b":status"])
                elif isinstance(e, h2.events.DataReceived):
                    data += e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, 1)
                elif isinstance(e, h2.events.StreamEnded):
                    return status, got, data
                elif isinstance(e, h2.events.StreamReset):
                    raise ConnectionResetError(f"stream reset {e.error_code}")
            s.sendall(conn.data_to_send())


def head(method: bytes, path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":path", path), (b":scheme", b"http"), (b":authority", b"pets"), *extra]


@pytest.fixture
def sidecar(tmp_path: Path, lt: LoopThread, backends: Backends) -> Iterator[tuple[int, list[Any]]]:
    """A sidecar process with an HTTP route to a backend that records each request it gets, and a
    gRPC route to a raw-bytes echo service: (port, requests seen by the backend)."""
    seen: list[Any] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            line, headers, body = await read_request(r)
            seen.append((line, headers, body))
            answer = b"got " + line.split(b" ")[1] + b" " + body
            w.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                % (len(answer), answer)
            )
            await w.drain()

    port = backends.start(backend)
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"echo:" + req)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", {"Call": echo}),))
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    routes = [
        http_route("ANY", "/items/{proxy+}", f"http://127.0.0.1:{port}/items/{{proxy}}"),
        {
            "method": "POST",
            "path": "/t.Echo/{m}",
            "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{gport}"},
        },
    ]
    proc, listen, _ = serve_file(tmp_path, snapshot(bundle(routes)))
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield listen, seen
    finally:
        proc.kill()
        proc.wait()
        server.stop(0)


def test_rest_over_h2c_is_served_like_http1(sidecar: tuple[int, list[Any]]) -> None:
    port, seen = sidecar
    status, headers, body = h2_request(port, head(b"GET", b"/prod/items/a/b"))
    assert (status, body) == (200, b"got /items/a/b ")
    assert headers[b"content-type"] == b"text/plain" and b"x-meshgate-request-id" in headers
    assert b"transfer-encoding" not in headers and b"connection" not in headers  # HTTP/2 frames it
    status, _, body = h2_request(port, head(b"POST", b"/prod/items/x"), b"hello" * 1000)
    assert (status, body) == (200, b"got /items/x " + b"hello" * 1000)
    assert h2_request(port, head(b"GET", b"/prod/nothing/here"))[0] == 404
    assert seen[0][1][b"host"] != b"" and len(seen) == 2


def test_a_lying_content_length_smuggles_nothing(sidecar: tuple[int, list[Any]]) -> None:
    """The body is framed by the bridge: a content-length shorter than the DATA cannot make the rest
    a second request to the backend."""
    port, seen = sidecar
    smuggled = b"GET /items/admin HTTP/1.1\r\nhost: x\r\n\r\n"
    status, _, body = h2_request(
        port, head(b"POST", b"/prod/items/x", (b"content-length", b"2")), b"ok" + smuggled, validate=False
    )
    assert status == 200 and body == b"got /items/x ok" + smuggled
    assert [s[0] for s in seen] == [b"POST /items/x HTTP/1.1"]


@pytest.mark.parametrize(
    "bad",
    [
        (b"x-evil", b"a\r\nx-injected: 1"),
        (b"X-Upper", b"v"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close"),
        (b"te", b"gzip"),
    ],
)
def test_malformed_http2_requests_get_400_and_reach_nothing(
    sidecar: tuple[int, list[Any]], bad: tuple[bytes, bytes]
) -> None:
    port, seen = sidecar
    status, _, body = h2_request(port, head(b"GET", b"/prod/items/x", bad), validate=False)
    assert status == 400 and b"Bad request" in body
    assert seen == []


def test_grpc_on_the_same_port(sidecar: tuple[int, list[Any]]) -> None:
    port, _ = sidecar
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert ch.unary_unary("/t.Echo/Call")(b"hi", timeout=10) == b"echo:hi"


def test_grpc_on_the_listen_port_drains(tmp_path: Path) -> None:
    """gRPC that came in on --listen (no --grpc-listen) is drained like the rest: on SIGTERM the call
    in flight finishes and the process exits 0."""
    import signal
    import threading
    import time
    from concurrent import futures

    started = threading.Event()

    def slow(req: bytes, ctx: Any) -> bytes:
        started.set()
        time.sleep(2.5)  # a slow backend: longer than the drain's 1 s grace for idle connections
        return b"done:" + req

    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(slow)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Slow", {"Call": handler}),))
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    route = {
        "method": "POST",
        "path": "/t.Slow/{m}",
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{gport}"},
    }
    proc, listen, admin = serve_file(tmp_path, snapshot(bundle([route])), "--drain-seconds", "5")
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{listen}") as ch:
            call = ch.unary_unary("/t.Slow/Call").future(b"x", timeout=20)
            assert started.wait(10)  # the call is at the upstream
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while get(admin, "/ready")[0] != 503:  # the drain has begun while the call is in flight
                assert time.monotonic() < deadline, "no drain"
            assert call.result(timeout=10) == b"done:x"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop(0)
