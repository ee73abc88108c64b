"""WebSocket APIs through two real sidecars: $connect may reject, route selection on the message body,
$default, integration replies sent back, $disconnect, and @connections POST/GET/DELETE across sidecars
(forwarded only to a sidecar the snapshot lists; crafted ids get 410 and make no connection)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.wsapi import Registry, encode_id, owner_tag, verify_id
from meshgate.v1 import control_pb2
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .conftest import Backends, Gateway, LoopThread, bundle, read_request, snapshot


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


KEY = b"k" * 32  # what control puts in every snapshot as connection_id_key
API = "default/pets"


def ws_snapshot(
    port: int, cidrs: list[str], node_id: str = "", peers: tuple[tuple[str, str], ...] = ()
) -> Any:
    """The snapshot control would send sidecar `node_id`, with `peers` (node id, address) serving the Api."""
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
    del snap.cluster_cidrs[:]
    snap.cluster_cidrs.extend(cidrs)
    snap.connection_id_key = KEY
    snap.node_id = node_id
    snap.connection_peers.add(api=API, peers=[control_pb2.Peer(node_id=n, advertise=a) for n, a in peers])
    return snap


def sidecar(lt: LoopThread, backend: Backend, cidrs: list[str], node_id: str = "node-a") -> Gateway:
    gw = Gateway(lt)
    snap = ws_snapshot(backend.port, cidrs, node_id)
    gw.start(snap)
    runtime = Runtime()
    gw.on_stop.append(runtime.close)
    gw.holder.table = compile_snapshot(snap, runtime)
    gw.http.registry = Registry(f"127.0.0.1:{gw.port}")
    gw.http.session = runtime.session
    return gw


def listed(backend: Backend, cidrs: list[str], peers: dict[str, Gateway], extra: dict[str, int]) -> None:
    """Give every sidecar in `peers` the snapshot listing all of them (and `extra` node -> port)."""
    listing = tuple(sorted((n, f"127.0.0.1:{gw.port}") for n, gw in peers.items())) + tuple(
        (n, f"127.0.0.1:{port}") for n, port in extra.items()
    )
    for node_id, gw in peers.items():
        gw.holder.table = compile_snapshot(ws_snapshot(backend.port, cidrs, node_id, listing))


@pytest.fixture
def pair(lt: LoopThread) -> Iterator[tuple[Gateway, Gateway, Backend]]:
    backend = Backend(lt)
    a = sidecar(lt, backend, ["127.0.0.0/8"], "node-a")
    b = sidecar(lt, backend, ["127.0.0.0/8"], "node-b")
    listed(backend, ["127.0.0.0/8"], {"node-a": a, "node-b": b}, {})
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
    a, _, backend = pair
    url = f"ws://127.0.0.1:{a.port}/prod/chat"
    with pytest.raises(InvalidStatus) as err:
        connect(url, open_timeout=5)
    assert err.value.response.status_code == 403  # $connect said no
    with connect(url + "?token=ok&room=1", open_timeout=5) as ws:  # the query string reaches $connect
        assert ws.response.status_code == 101
    with connect(url, additional_headers={"x-token": "ok"}) as ws:
        conn_id = ws.response.headers["x-meshgate-connection-id"]
        assert verify_id(KEY, conn_id) == owner_tag(API, "node-a")  # names its owner, not an address
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
        for forged in ("$connect", "$disconnect"):  # a message cannot fake a connect or a disconnect
            ws.send(json.dumps({"action": forged}))
            assert ws.recv(timeout=5) == "default:" + json.dumps({"action": forged})
        assert conn_id not in backend.disconnected


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
        assert status == 403 and b"Forbidden" in body
    finally:
        gw.stop()
        backend.stop()


def recorder(lt: LoopThread) -> tuple[Backends, int]:
    """A listening socket that answers 200 to anything: it must never see a connection."""

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nsecret inside")
        await w.drain()

    rec = Backends(lt)
    return rec, rec.start(answer)


def test_crafted_ids_get_410_and_no_outbound_connection(
    lt: LoopThread, pair: tuple[Gateway, Gateway, Backend]
) -> None:
    a, b, _ = pair
    rec, port = recorder(lt)
    try:
        address = base64.urlsafe_b64encode(f"127.0.0.1:{port}".encode()).decode().rstrip("=")
        with connect(f"ws://127.0.0.1:{a.port}/prod/chat", additional_headers={"x-token": "ok"}) as ws:
            genuine = ws.response.headers["x-meshgate-connection-id"]
            head, _, mac = genuine.rpartition(".")
            forged_mac = f"{head}.{'A' * len(mac)}"
            rand = head.partition(".")[2]
            for crafted in (f"{address}.{'00' * 9}", address, f"{address}.{rand}.{mac}", forged_mac):
                for method in ("POST", "GET", "DELETE"):
                    status, body = manage(b.port, method, crafted, b"hello")
                    assert status == 410, (crafted, method, status, body)
                    assert b"secret inside" not in body
            assert manage(b.port, "POST", genuine, b"still here") == (200, b"")  # the real one still works
            assert ws.recv(timeout=5) == "still here"
        assert rec.accepted == 0
    finally:
        rec.stop()


def test_forwarding_goes_only_to_the_listed_owner(
    lt: LoopThread, pair: tuple[Gateway, Gateway, Backend]
) -> None:
    a, b, backend = pair
    rec, port = recorder(lt)
    try:
        listed(backend, ["127.0.0.0/8"], {"node-a": a, "node-b": b}, {"node-r": port})
        for_r = encode_id(KEY, owner_tag(API, "node-r"))
        wrong_mac = encode_id(b"not the key" * 3, owner_tag(API, "node-r"))
        unlisted = encode_id(KEY, owner_tag(API, "ghost"))  # genuine MAC, owner not listed
        other_api = encode_id(KEY, owner_tag("default/other", "node-r"))  # listed, but not for that Api
        for conn_id in (wrong_mac, unlisted, other_api):
            assert manage(b.port, "POST", conn_id, b"x")[0] == 410
        conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
        conn.request("POST", f"/@connections/{for_r}", body=b"x", headers={"x-meshgate-forwarded": "1"})
        assert conn.getresponse().status == 410  # a forwarded call is never forwarded again
        conn.close()
        assert rec.accepted == 0
        assert manage(b.port, "POST", for_r, b"x") == (200, b"secret inside")  # the listing is what is dialed
        assert rec.accepted == 1
    finally:
        rec.stop()
