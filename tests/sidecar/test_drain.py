"""Graceful drain on SIGTERM through a real sidecar process: /ready 503, still accepting, `Connection: close`."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from e2e.harness import wait_until
from meshgate.control.etcd_local import free_port
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .conftest import Backends, LoopThread, bundle, http_route, mock_route, read_request, snapshot
from .test_main import get, serve_file

DRAIN_S = 2.0
HELLO = b"GET /prod/hello HTTP/1.1\r\nHost: t\r\n\r\n"


class Load:
    """Clients that keep sending until stopped: keep-alive ones (reconnecting when told to close) and
    one that opens a new connection per request. Records (sent at, status, Connection header) and failures."""

    def __init__(self, port: int, keep_alive: int = 3) -> None:
        self.port = port
        self.stop = threading.Event()
        self.results: list[tuple[float, int, str]] = []
        self.failures: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self.client, args=(False,)) for _ in range(keep_alive)]
        self.threads.append(threading.Thread(target=self.client, args=(True,)))
        for t in self.threads:
            t.start()

    def client(self, fresh: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/prod/hello")
                resp = conn.getresponse()
                resp.read()
                self.results.append((sent, resp.status, (resp.getheader("connection") or "").lower()))
                if resp.status != 200:
                    self.failures.append((sent, f"HTTP {resp.status}"))
                if resp.will_close or fresh:
                    conn.close()
                    conn = None
            except Exception as exc:  # refused, reset, timed out: all count
                self.failures.append((sent, repr(exc)))
                conn = None
            time.sleep(0.005)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def echo_upstream(lt: LoopThread) -> int:
    async def handler(ws: ServerConnection) -> None:
        try:
            async for msg in ws:
                await ws.send(msg)
        except ConnectionClosed:
            pass

    async def go() -> Server:
        return await serve(handler, "127.0.0.1", 0)

    return int(next(iter(lt.run(go()).sockets)).getsockname()[1])


def slow_backend(backends: Backends, delay_s: float, arrived: list[bytes] | None = None) -> int:
    """A backend that answers each request after `delay_s`; `arrived` gets each request line at once."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(r)
            if arrived is not None:
                arrived.append(line)
            await asyncio.sleep(delay_s)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
            await w.drain()

    return backends.start(handler)


def raw_get(port: int) -> socket.socket:
    """A keep-alive connection that has had one answer (read whole): idle from here on."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(HELLO)
    got = b""
    while not got.endswith(b'{"hi": 1}'):
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert b"connection: close" not in got.lower()
    return sock


def closed_within(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the peer closed `sock` (it sends nothing more), or inf."""
    t0 = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return float("inf")
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def ws_close_code(ws: ClientConnection) -> int | None:
    try:
        while True:
            ws.recv(timeout=3)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    except TimeoutError:
        return None


def test_sigterm_drains_without_losing_a_request(tmp_path: Path, lt: LoopThread, backends: Backends) -> None:
    arrived: list[bytes] = []
    slow = slow_backend(backends, 0.6, arrived)
    ws_port = echo_upstream(lt)
    ws_route = {
        "method": "GET",
        "path": "/chat",
        "integration": {"type": "websocket", "uri": f"ws://127.0.0.1:{ws_port}/"},
    }
    api_route = {
        "method": "GET",
        "path": "/api",
        "integration": {
            "type": "websocket_api",
            "routeSelectionExpression": "$request.body.action",
            "websocketRoutes": {"$default": {"type": "http", "uri": f"http://127.0.0.1:{slow}/default"}},
        },
    }
    routes = [
        mock_route("GET", "/hello", '{"hi": 1}'),
        http_route("GET", "/slow", f"http://127.0.0.1:{slow}/slow"),
        ws_route,
        api_route,
    ]
    proc, port, admin = serve_file(tmp_path, snapshot(bundle(routes)), "--drain-seconds", str(DRAIN_S))
    with contextlib.ExitStack() as open_sockets:
        _drain_under_load(proc, port, admin, open_sockets, arrived)


def _drain_under_load(
    proc: subprocess.Popen[str],
    port: int,
    admin: int,
    open_sockets: contextlib.ExitStack,
    arrived: list[bytes],
) -> None:
    load: Load | None = None
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        assert get(admin, "/ready")[0] == 200
        ws = open_sockets.enter_context(connect(f"ws://127.0.0.1:{port}/prod/chat"))
        ws.send("hi")
        assert ws.recv(timeout=3) == "hi"
        wsapi = open_sockets.enter_context(connect(f"ws://127.0.0.1:{port}/prod/api"))
        idle = open_sockets.enter_context(raw_get(port))  # stays idle: closed by the sidecar after a grace
        late = open_sockets.enter_context(raw_get(port))  # idle, then sends again in the window: answered
        in_flight: list[tuple[int, str]] = []

        def slow_call() -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/prod/slow")
            r = c.getresponse()
            in_flight.append((r.status, r.read().decode()))

        slow_thread = threading.Thread(target=slow_call)
        load = Load(port)
        wait_until(lambda: len(load.results) >= 20, what="the load flowing before SIGTERM")
        slow_thread.start()
        wait_until(lambda: any(b"/slow" in line for line in arrived), what="the slow request at its backend")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        status, body = get(admin, "/ready")
        while status == 200 and time.monotonic() - t0 < 0.5:
            status, body = get(admin, "/ready")
        assert status == 503 and json.loads(body)["reason"] == "draining"
        assert ws_close_code(ws) == 1001  # going away
        assert ws_close_code(wsapi) == 1001
        time.sleep(max(0.0, t0 + 0.4 - time.monotonic()))
        late.sendall(HELLO)
        answer = late.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()
        assert closed_within(idle, DRAIN_S) < DRAIN_S - 0.3  # idle keep-alive: closed well inside the window
        time.sleep(max(0.0, t0 + DRAIN_S - 0.4 - time.monotonic()))
        load.join()
        slow_thread.join(5)

        assert load.failures == []  # no refused connection, no reset, no error status
        window = [r for r in load.results if r[0] > t0 + 0.2]
        assert len(window) > 20
        assert all(conn == "close" for _, _, conn in window), [r for r in window if r[2] != "close"][:5]
        assert in_flight == [(200, "slow")]
        assert proc.wait(DRAIN_S + 5) == 0
        elapsed = time.monotonic() - t0
        assert DRAIN_S - 0.3 < elapsed < DRAIN_S + 2.0, elapsed
    finally:
        if load is not None:
            load.join()
        if proc.poll() is None:
            proc.kill()


def test_new_connections_are_answered_and_the_sidecar_exits_once_none_remain(tmp_path: Path) -> None:
    proc, port, admin = serve_file(tmp_path, snapshot(bundle([mock_route("GET", "/hello", '{"hi": 1}')])))
    try:  # the default window (5 s)
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: get(admin, "/ready")[0] == 503, what="the drain window")  # it has begun
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/prod/hello")
        resp = c.getresponse()
        assert (resp.status, resp.read(), resp.getheader("connection")) == (200, b'{"hi": 1}', "close")
        c.close()
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 3.5  # no connection left for a while: no need to wait out 5 s
    finally:
        if proc.poll() is None:
            proc.kill()


def test_grpc_goes_away_at_once_and_calls_in_flight_finish(tmp_path: Path, backends: Backends) -> None:
    from concurrent import futures

    import grpc

    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        time.sleep(0.8 if req == b"slow" else 0)
        return b"pong:" + req

    upstream = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.method_handlers_generic_handler(
        "demo.Ping", {"Ping": grpc.unary_unary_rpc_method_handler(unary)}
    )
    upstream.add_generic_rpc_handlers((handler,))
    up_port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    slow = slow_backend(backends, 1.0)
    routes = [
        {
            "method": "POST",
            "path": "/demo.Ping/Ping",
            "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up_port}"},
        },
        http_route("GET", "/slow", f"http://127.0.0.1:{slow}/slow"),
    ]
    gport = free_port()
    proc, port, _ = serve_file(
        tmp_path,
        snapshot(bundle(routes)),
        "--grpc-listen",
        f"127.0.0.1:{gport}",
        "--drain-seconds",
        str(DRAIN_S),
    )
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
            ping = ch.unary_unary("/demo.Ping/Ping")
            assert ping(b"x", timeout=5) == b"pong:x"
            http_slow = threading.Thread(target=lambda: get(port, "/prod/slow"))  # an HTTP request in flight
            http_slow.start()
            in_flight = ping.future(b"slow", timeout=5)
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            try:  # no new calls here: the channel was told to go away (and would reconnect elsewhere)
                ping(b"late", timeout=1, wait_for_ready=False)
                refused = None
            except grpc.RpcError as exc:
                refused = exc.code()
            assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), refused
            assert in_flight.result(timeout=5) == b"pong:slow"
            http_slow.join(5)
        assert proc.wait(DRAIN_S + 5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        upstream.stop(0)
