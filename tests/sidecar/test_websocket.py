"""WebSocket pass-through through the real listener, with the `websockets` client and server on loopback:
frames both ways, ping/pong, close codes both ways, the 1009 size limit, idle timeout, handshake errors."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e.harness import wait_until
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .conftest import Gateway, LoopThread, bundle, mock_route, snapshot


class Upstream:
    """A websockets server: echoes, closes on request with a given code, records what it saw."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.closes: list[tuple[int, str]] = []
        self.headers: list[dict[str, str]] = []
        self.flooded = 0  # floods sent whole

        async def handler(ws: ServerConnection) -> None:
            self.headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
            try:
                async for msg in ws:
                    if msg == "close-4001":
                        await ws.close(4001, "bye from upstream")
                        return
                    if msg in ("flood", "bigflood"):
                        for i in range(200 if msg == "flood" else 2000):
                            await ws.send("x" * 10000 + str(i))
                        self.flooded += 1
                        continue
                    await ws.send(msg)
            except ConnectionClosed:
                pass
            finally:
                if ws.close_code is not None:
                    self.closes.append((ws.close_code, ws.close_reason or ""))

        async def go() -> Server:
            def select(conn: ServerConnection, offered: Any) -> Any:
                return next((p for p in ("chat.v2", "chat.v1") if p in offered), None)

            return await serve(handler, "127.0.0.1", 0, select_subprotocol=select)

        self.server = lt.run(go())
        self.port = int(next(iter(self.server.sockets)).getsockname()[1])

    def stop(self) -> None:
        async def go() -> None:
            self.server.close()

        self.lt.run(go())


@pytest.fixture
def upstream(lt: LoopThread) -> Iterator[Upstream]:
    u = Upstream(lt)
    yield u
    u.stop()


def start(gateway: Gateway, port: int, **integ: Any) -> str:
    route = {
        "method": "GET",
        "path": "/chat",
        "integration": {"type": "websocket", "uri": f"ws://127.0.0.1:{port}/ws", **integ},
    }
    gateway.start(snapshot(bundle([route, mock_route("GET", "/plain", '"x"')])))
    return f"ws://127.0.0.1:{gateway.port}/prod/chat"


def test_frames_both_ways_ping_and_subprotocol(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, upstream.port)
    with connect(url, subprotocols=["chat.v1"], additional_headers={"X-User": "ann"}) as ws:
        assert ws.subprotocol == "chat.v1"
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
        ws.send(["frag", "mented"])  # a fragmented message crosses as one
        assert ws.recv(timeout=5) == "fragmented"
        ws.ping(b"p").wait(5)  # the sidecar answers pings
        assert ws.response.headers["x-meshgate-request-id"]
    assert upstream.headers[0]["x-user"] == "ann" and upstream.headers[0]["x-meshgate-request-id"]
    deadline = time.monotonic() + 5
    while not upstream.closes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.closes[0][0] == 1000  # the client's normal close reached the upstream


def test_close_codes_cross_over(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, upstream.port)
    with connect(url) as ws:
        ws.send("close-4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4001,
        "bye from upstream",
    )
    with connect(url) as ws:
        ws.send("x")
        ws.recv(timeout=5)
        ws.close(4002, "bye from client")
    deadline = time.monotonic() + 5
    while (4002, "bye from client") not in upstream.closes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (4002, "bye from client") in upstream.closes


def test_message_size_limit_closes_1009(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, upstream.port, maxMessageBytes=1024)
    with connect(url, max_size=None) as ws:
        ws.send("a" * 1000)
        assert len(ws.recv(timeout=5)) == 1000
        ws.send("b" * 5000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_idle_timeout_closes_1001(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, upstream.port, idleTimeoutMs=300)
    with connect(url) as ws:
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert (
        closed.value.rcvd is not None
        and closed.value.rcvd.code == 1001
        and "idle" in closed.value.rcvd.reason
    )
    assert 0.25 < time.monotonic() - t0 < 3


def relay_paused(gateway: Gateway) -> bool:
    """Whether a WebSocket relay of the gateway has stopped reading its upstream (its client is slow)."""

    async def check() -> bool:
        for c in gateway.http.conns:
            up = getattr(getattr(c, "tunnel", None), "upstream", None)
            transport = getattr(up, "transport", None)
            if transport is not None and not transport.is_closing() and not transport.is_reading():
                return True
        return False

    return gateway.lt.run(check())


def test_large_upstream_burst_reaches_a_slow_client(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, upstream.port, maxMessageBytes=1_000_000)
    with connect(url, max_size=None) as ws:
        ws.send("flood")
        # the client is not reading: the burst is held on the way (sent whole into buffers, or the relay
        # paused its upstream), not dropped
        wait_until(lambda: upstream.flooded or relay_paused(gateway), what="the burst held back")
        got = [ws.recv(timeout=5) for _ in range(200)]
    assert [m[-3:].lstrip("x") for m in got[:3]] == ["0", "1", "2"] and got[-1].endswith("199")


def test_handshake_errors(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, 1)  # nothing listens on port 1
    with pytest.raises(InvalidStatus) as err:
        connect(url, open_timeout=5)
    assert err.value.response.status_code == 503
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    conn.request("GET", "/prod/chat")
    resp = conn.getresponse()
    assert resp.status == 426 and resp.getheader("upgrade") == "websocket"
    resp.read()
    with pytest.raises(InvalidStatus) as err:
        connect(f"ws://127.0.0.1:{gateway.port}/prod/plain", open_timeout=5)
    assert err.value.response.status_code == 400


def test_slow_reader_does_not_grow_sidecar_buffers(gateway: Gateway, upstream: Upstream) -> None:
    url = start(gateway, upstream.port, maxMessageBytes=1_000_000)
    with connect(url, max_size=None) as ws:
        ws.send("bigflood")  # 2000 x 10 KB = 20 MB while the client reads nothing
        wait_until(lambda: relay_paused(gateway), what="the relay pausing its upstream")

        async def buffered() -> int:
            return max(c.transport.get_write_buffer_size() for c in gateway.http.conns if c.transport)

        held = gateway.lt.run(buffered())
        assert held < 2 * 1024 * 1024, held  # paused upstream reading instead of queueing ~20 MB
        got = [ws.recv(timeout=10) for _ in range(2000)]
    assert got[-1].endswith("1999")
