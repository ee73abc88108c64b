"""WebSocket APIs through two real sidecars: $connect may reject, route selection on the message body,
$default, integration replies sent back, $disconnect, and @connections POST/GET/DELETE across sidecars."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.wsapi import Registry, owner_of
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .conftest import Gateway, LoopThread, bundle, snapshot


class Backend:
    def __init__(self, lt: LoopThread) -> None:
        self.disconnected: list[str] = []

        async def on_connect(request: web.Request) -> web.Response:
            # the client's token may come as a header or in the upgrade URL's query string
            token = request.headers.get("x-token") or request.query.get("token")
            return web.Response(status=200 if token == "ok" else 403)

        async def on_message(request: web.Request) -> web.Response:
            body = await request.read()
            return web.json_response(
                {
                    "routeKey": request.headers["x-meshgate-route-key"],
                    "conn": request.headers["x-meshgate-connection-id"],
                    "got": json.loads(body),
                }
            )

        async def on_default(request: web.Request) -> web.Response:
            return web.Response(body=b"default:" + await request.read())

        async def on_disconnect(request: web.Request) -> web.Response:
            self.disconnected.append(request.headers["x-meshgate-connection-id"])
            return web.Response()

        async def go() -> tuple[web.AppRunner, int]:
            app = web.Application()
            app.router.add_post("/connect", on_connect)
            app.router.add_post("/message", on_message)
            app.router.add_post("/default", on_default)
            app.router.add_post("/disconnect", on_disconnect)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.lt = lt
        self.runner, self.port = lt.run(go())

    def stop(self) -> None:
        self.lt.run(self.runner.cleanup())


def ws_snapshot(port: int, cidrs: list[str]) -> Any:
    base = f"http://127.0.0.1:{port}"
    route = {
        "method": "GET",
        "path": "/chat",
        "integration": {
            "type": "websocket_api",
            "routeSelectionExpression": "$request.body.action",
            "websocketRoutes": {
                "$connect": {"type": "http", "uri": f"{base}/connect"},
                "$disconnect": {"type": "http", "uri": f"{base}/disconnect"},
                "$default": {"type": "http", "uri": f"{base}/default"},
                "sendMessage": {"type": "http", "uri": f"{base}/message"},
            },
        },
    }
    snap = snapshot(bundle([route]))
    snap.cluster_cidrs.extend(cidrs)
    return snap


def sidecar(lt: LoopThread, backend: Backend, cidrs: list[str]) -> Gateway:
    gw = Gateway(lt)
    snap = ws_snapshot(backend.port, cidrs)
    gw.start(snap)
    runtime = Runtime()
    gw.on_stop.append(runtime.close)
    gw.holder.table = compile_snapshot(snap, runtime)
    gw.http.registry = Registry(f"127.0.0.1:{gw.port}")
    gw.http.session = runtime.session
    return gw


@pytest.fixture
def pair(lt: LoopThread) -> Iterator[tuple[Gateway, Gateway, Backend]]:
    backend = Backend(lt)
    a = sidecar(lt, backend, ["127.0.0.0/8"])
    b = sidecar(lt, backend, ["127.0.0.0/8"])
    yield a, b, backend
    a.stop()
    b.stop()
    backend.stop()


def manage(port: int, method: str, conn_id: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, f"/@connections/{conn_id}", body=body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_routes_replies_and_connect_rejection(pair: tuple[Gateway, Gateway, Backend]) -> None:
    a, _, _ = pair
    url = f"ws://127.0.0.1:{a.port}/prod/chat"
    with pytest.raises(InvalidStatus) as err:
        connect(url, open_timeout=5)
    assert err.value.response.status_code == 403  # $connect said no
    with connect(url + "?token=ok&room=1", open_timeout=5) as ws:  # the query string reaches $connect
        assert ws.response.status_code == 101
    with connect(url, additional_headers={"x-token": "ok"}) as ws:
        conn_id = ws.response.headers["x-meshgate-connection-id"]
        assert owner_of(conn_id) == f"127.0.0.1:{a.port}"
        ws.send(json.dumps({"action": "sendMessage", "text": "hi"}))
        reply = json.loads(ws.recv(timeout=5))
        assert reply == {
            "routeKey": "sendMessage",
            "conn": conn_id,
            "got": {"action": "sendMessage", "text": "hi"},
        }
        ws.send("not json at all")
        assert ws.recv(timeout=5) == "default:not json at all"
        ws.send(json.dumps({"action": "unknownAction"}))
        assert ws.recv(timeout=5).startswith("default:")


def test_connections_api_across_sidecars(pair: tuple[Gateway, Gateway, Backend]) -> None:
    a, b, backend = pair
    with connect(f"ws://127.0.0.1:{a.port}/prod/chat", additional_headers={"x-token": "ok"}) as ws:
        conn_id = ws.response.headers["x-meshgate-connection-id"]
        assert manage(b.port, "POST", conn_id, b"pushed through sidecar B") == (200, b"")
        assert ws.recv(timeout=5) == "pushed through sidecar B"
        status, body = manage(b.port, "GET", conn_id)
        info = json.loads(body)
        assert (
            status == 200 and info["connectionId"] == conn_id and info["identity"]["sourceIp"] == "127.0.0.1"
        )
        assert info["connectedAt"] <= info["lastActiveAt"]
        assert manage(b.port, "DELETE", conn_id)[0] == 204
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    deadline = time.monotonic() + 5
    while conn_id not in backend.disconnected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert conn_id in backend.disconnected  # $disconnect was told
    assert manage(b.port, "GET", conn_id)[0] == 410
    assert manage(a.port, "GET", "bm9ib2R5.00")[0] == 410  # owner unreachable


def test_connections_api_only_inside_the_cluster(lt: LoopThread) -> None:
    backend = Backend(lt)
    gw = sidecar(lt, backend, ["10.0.0.0/8"])
    try:
        status, body = manage(gw.port, "GET", "abc.def")
        assert status == 403 and b"inside the cluster networks" in body
    finally:
        gw.stop()
        backend.stop()
