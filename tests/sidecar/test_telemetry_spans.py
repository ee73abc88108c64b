"""Spans into a real OTLP/gRPC receiver for what test_telemetry.py does not cover: a gRPC call through
the gRPC listener, a WebSocket API message, a WebSocket pass-through upgrade, and a request through a
request authorizer and the stage cache (authorizer and cache spans, trace context at the authorizer
service and at the integration)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from meshgate.sidecar.grpc_server import serve_grpc
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import TableHolder, compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.telemetry import Telemetry
from meshgate.sidecar.wsapi import Registry
from websockets.sync.client import connect

from .conftest import Backends, Gateway, LoopThread, bundle, call, http_route, read_request, snapshot
from .test_grpc import Upstream
from .test_request_phase import Aux
from .test_websocket import Upstream as WsUpstream
from .test_websocket import start as start_ws

PARENT_ID = "00f067aa0ba902b7"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP SpanKind


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{PARENT_ID}-01"


def tree(spans: list[Any], trace_id: str) -> dict[str, Any]:
    """The spans of one trace by name (names are unique within the traces these tests make)."""
    return {s.name: s for s in spans if s.trace_id.hex() == trace_id}


@pytest.fixture
def aux(lt: LoopThread) -> Iterator[Aux]:
    a = Aux(lt)
    yield a
    a.stop()


def test_grpc_call_server_span_children_and_propagation(lt: LoopThread, otlp: Any) -> None:
    up = Upstream(lt)
    route = {
        "method": "POST",
        "path": "/test.Echo/{method}",
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up.port}", "timeoutMs": 2000},
    }
    b = bundle([route])
    b["deployment"]["spec"]["apiSpec"]["resourcePolicy"] = {"allowCidrs": ["127.0.0.0/8"]}  # a phase
    runtime, holder, metrics = Runtime(), TableHolder(), Metrics()
    holder.table = compile_snapshot(snapshot(b), runtime)
    tel = Telemetry(f"127.0.0.1:{otlp.port}", "sc-grpc")
    server, proxy, port = lt.run(serve_grpc(holder, "127.0.0.1", 0, tel, metrics))
    ok_trace, failed_trace = "4bf92f3577b34da6a3ce929d0e0e4736", "2" * 32
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            unary = ch.unary_unary("/test.Echo/Unary")
            assert unary(b"hi", metadata=(("traceparent", traceparent(ok_trace)),), timeout=5) == b"echo:hi"
            with pytest.raises(grpc.RpcError) as err:
                unary(b"fail", metadata=(("traceparent", traceparent(failed_trace)),), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert unary(b"untraced", timeout=5) == b"echo:untraced"  # no parent, ratio 0
        tel.flush()
        otlp.wait(lambda: len(otlp.spans) >= 6)
    finally:
        tel.shutdown()
        lt.run(server.stop(0))
        lt.run(proxy.channels.close())
        lt.run(runtime.close())
        up.stop()
    ok = tree(otlp.spans, ok_trace)
    assert set(ok) == {"test.Echo/Unary", "request phase", "integration"}
    call_span, phase, integ = ok["test.Echo/Unary"], ok["request phase"], ok["integration"]
    assert call_span.kind == SERVER and call_span.parent_span_id.hex() == PARENT_ID
    a = otlp.attrs(call_span)
    assert a["rpc.system"] == "grpc" and a["rpc.service"] == "test.Echo" and a["rpc.method"] == "Unary"
    assert a["rpc.grpc.status_code"] == 0 and a["http.response.status_code"] == 200
    assert a["meshgate.api"] == "default/pets" and a["meshgate.stage"] == "prod"
    assert a["meshgate.route"] == "/test.Echo/{method}"
    assert phase.parent_span_id == call_span.span_id and integ.parent_span_id == call_span.span_id
    assert integ.kind == CLIENT and otlp.attrs(integ)["server.port"] == up.port
    # the upstream saw our integration span as its parent, not the client's span
    _, seen_trace, seen_parent, flags = up.metadata[0]["traceparent"].split("-")
    assert (seen_trace, seen_parent, flags) == (ok_trace, integ.span_id.hex(), "01")
    assert "traceparent" not in up.metadata[-1]  # the untraced call carries no trace context
    failed = tree(otlp.spans, failed_trace)["test.Echo/Unary"]
    fa = otlp.attrs(failed)
    assert fa["rpc.grpc.status_code"] == 5 and fa["http.response.status_code"] == 404
    assert len({s.trace_id.hex() for s in otlp.spans}) == 2
    # gRPC calls count under the request metrics, the status class from the code's HTTP mapping
    key = ("default/pets", "prod", "/test.Echo/{method}")
    assert metrics.count[key] == 3 and metrics.errors_4xx[key] == 1 and metrics.errors_5xx[key] == 0
    assert metrics.latency[key].counts and sum(metrics.integration_latency[key].counts) == 3


def test_websocket_api_message_spans_and_gauge(lt: LoopThread, otlp: Any, aux: Aux) -> None:
    seen: dict[str, list[dict[str, str]]] = {"connect": [], "message": [], "disconnect": []}

    def recorder(name: str, reply: bytes = b"") -> Any:
        async def handler(request: web.Request) -> web.Response:
            seen[name].append(dict(request.headers))
            await request.read()
            return web.Response(body=reply)

        return handler

    port = aux.serve(
        {
            "/connect": recorder("connect"),
            "/message": recorder("message", b'{"ok": true}'),
            "/disconnect": recorder("disconnect"),
        }
    )
    base = f"http://127.0.0.1:{port}"
    route = {
        "method": "GET",
        "path": "/chat",
        "integration": {
            "type": "websocket_api",
            "websocketRoutes": {
                "$connect": {"type": "http", "uri": f"{base}/connect"},
                "$disconnect": {"type": "http", "uri": f"{base}/disconnect"},
                "sendMessage": {"type": "http", "uri": f"{base}/message"},
            },
        },
    }
    snap = snapshot(bundle([route]))
    snap.stages[0].stage.spec.tracing_sample_ratio = 1.0  # every message is a sampled root span
    gw = Gateway(lt)
    gw.start(snap)
    runtime = Runtime()
    gw.on_stop.append(runtime.close)
    gw.holder.table = compile_snapshot(snap, runtime)
    gw.http.registry = Registry(f"127.0.0.1:{gw.port}")
    gw.http.session = runtime.session
    tel = gw.http.telemetry = Telemetry(f"127.0.0.1:{otlp.port}", "sc-ws")
    metrics = gw.http.metrics = Metrics()
    key = ("default/pets", "prod", "/chat")
    upgrade_trace = "3" * 32
    try:
        with connect(
            f"ws://127.0.0.1:{gw.port}/prod/chat",
            additional_headers={"traceparent": traceparent(upgrade_trace)},
        ) as ws:
            conn_id = ws.response.headers["x-meshgate-connection-id"]
            assert metrics.websockets[key] == 1
            ws.send(json.dumps({"action": "sendMessage", "text": "hi"}))
            assert json.loads(ws.recv(timeout=5)) == {"ok": True}
        otlp.wait(lambda: metrics.websockets[key] == 0 and len(seen["disconnect"]) == 1)
        tel.flush()
        otlp.wait(lambda: any(s.name == "websocket.message $disconnect" for s in otlp.spans))
    finally:
        tel.shutdown()
        gw.stop()
    up = tree(otlp.spans, upgrade_trace)
    assert set(up) == {"GET /chat", "integration"}  # the upgrade request and its $connect call
    upgrade = up["GET /chat"]
    assert otlp.attrs(upgrade)["http.response.status_code"] == 101
    assert seen["connect"][0]["traceparent"].split("-")[2] == up["integration"].span_id.hex()
    msg = next(s for s in otlp.spans if s.name == "websocket.message sendMessage")
    a = otlp.attrs(msg)
    assert (
        msg.kind == SERVER
        and a["meshgate.route_key"] == "sendMessage"
        and a["meshgate.connection_id"] == conn_id
    )
    assert a["http.response.status_code"] == 200 and a["meshgate.stage"] == "prod"
    assert msg.trace_id.hex() != upgrade_trace and not msg.parent_span_id  # a root span per message
    assert [link.span_id for link in msg.links] == [upgrade.span_id]  # linked to the upgrade request
    integ = tree(otlp.spans, msg.trace_id.hex())["integration"]
    assert integ.parent_span_id == msg.span_id and integ.kind == CLIENT
    _, t, parent, _ = seen["message"][0]["traceparent"].split("-")
    assert (t, parent) == (msg.trace_id.hex(), integ.span_id.hex())
    assert metrics.ws_messages["default/pets", "prod", "sendMessage"] == 1
    assert metrics.count[key] == 1  # the upgrade request, answered 101


def test_authorizer_and_cache_spans(gateway: Gateway, backends: Backends, otlp: Any, aux: Aux) -> None:
    auth_headers: list[dict[str, str]] = []

    async def authorize(request: web.Request) -> web.Response:
        auth_headers.append(dict(request.headers))
        event = await request.json()
        allow = event["authorizationToken"] == "good"
        return web.json_response(
            {
                "principalId": "user-1",
                "policyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Action": "execute-api:Invoke",
                            "Effect": "Allow" if allow else "Deny",
                            "Resource": "arn:meshgate:execute-api:*",
                        }
                    ],
                },
            }
        )

    integration: list[dict[bytes, bytes]] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, headers, _ = await read_request(r)
            integration.append(headers)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\npet")
            await w.drain()

    auth_port = aux.serve({"/authorize": authorize})
    route = {
        **http_route("GET", "/pets/{id}", f"http://127.0.0.1:{backends.start(backend)}/pets/{{id}}"),
        "authorizer": "gate",
    }
    b = bundle(
        [route],
        api_spec={
            "authorizers": [
                {
                    "name": "gate",
                    "type": "token",
                    "uri": f"http://127.0.0.1:{auth_port}/authorize",
                    "identitySources": ["method.request.header.Authorization"],
                }
            ]
        },
    )
    b["stage"]["spec"]["cache"] = {"enabled": True, "ttlSeconds": 60}
    snap = snapshot(b)
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)
    tel = gateway.http.telemetry = Telemetry(f"127.0.0.1:{otlp.port}", "sc-auth")
    metrics = gateway.http.metrics = Metrics()
    first, second, denied = "5" * 32, "6" * 32, "7" * 32
    creds = {"Authorization": "good"}
    try:
        status, headers, _ = call(
            gateway.port, "/prod/pets/1", headers={**creds, "traceparent": traceparent(first)}
        )
        assert status == 200 and headers["x-meshgate-cache"] == "miss"
        status, headers, _ = call(
            gateway.port, "/prod/pets/1", headers={**creds, "traceparent": traceparent(second)}
        )
        assert status == 200 and headers["x-meshgate-cache"] == "hit"
        bad = {"Authorization": "bad", "traceparent": traceparent(denied)}
        assert call(gateway.port, "/prod/pets/1", headers=bad)[0] == 403
        tel.flush()
        otlp.wait(lambda: len(otlp.spans) >= 11)
    finally:
        tel.shutdown()
    one = tree(otlp.spans, first)
    assert set(one) == {"GET /pets/{id}", "request phase", "authorizer", "cache", "integration"}
    server, phase = one["GET /pets/{id}"], one["request phase"]
    assert phase.parent_span_id == server.span_id and one["integration"].parent_span_id == server.span_id
    assert one["authorizer"].parent_span_id == phase.span_id and one["cache"].parent_span_id == phase.span_id
    auth = otlp.attrs(one["authorizer"])
    assert auth["meshgate.authorizer.name"] == "gate" and auth["meshgate.authorizer.type"] == "token"
    assert auth["meshgate.authorizer.cached"] is False and auth["enduser.id"] == "user-1"
    assert otlp.attrs(one["cache"])["meshgate.cache.result"] == "miss"
    # the authorizer service and the integration joined the trace under their own spans
    assert auth_headers[0]["traceparent"].split("-")[1:3] == [first, one["authorizer"].span_id.hex()]
    assert integration[0][b"traceparent"].decode().split("-")[1:3] == [
        first,
        one["integration"].span_id.hex(),
    ]
    two = tree(otlp.spans, second)
    assert set(two) == {"GET /pets/{id}", "request phase", "authorizer", "cache"}  # served from the cache
    assert otlp.attrs(two["authorizer"])["meshgate.authorizer.cached"] is True  # the result cache answered
    assert otlp.attrs(two["cache"])["meshgate.cache.result"] == "hit"
    three = tree(otlp.spans, denied)
    assert set(three) == {"GET /pets/{id}", "request phase", "authorizer"}
    assert otlp.attrs(three["authorizer"])["meshgate.authorizer.status"] == 403
    assert three["authorizer"].status.code == 2  # STATUS_CODE_ERROR, with the reason
    assert "denied" in three["authorizer"].status.message
    assert len(integration) == 1 and len(auth_headers) == 2
    key = ("default/pets", "prod", "/pets/{id}")
    assert sum(metrics.authorizer_latency[key].counts) == 3
    assert metrics.cache_hits[key] == 1 and metrics.cache_misses[key] == 1


def test_websocket_pass_through_upgrade_span(gateway: Gateway, lt: LoopThread, otlp: Any) -> None:
    upstream = WsUpstream(lt)
    try:
        url = start_ws(gateway, upstream.port)
        tel = gateway.http.telemetry = Telemetry(f"127.0.0.1:{otlp.port}", "sc-ws")
        metrics = gateway.http.metrics = Metrics()
        trace_id = "8" * 32
        with connect(url, additional_headers={"traceparent": traceparent(trace_id)}) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
            assert metrics.websockets["default/pets", "prod", "/chat"] == 1
        otlp.wait(lambda: metrics.websockets["default/pets", "prod", "/chat"] == 0)
        tel.flush()
        otlp.wait(lambda: len(otlp.spans) >= 2)
        tel.shutdown()
    finally:
        upstream.stop()
    spans = tree(otlp.spans, trace_id)
    assert set(spans) == {"GET /chat", "integration"}  # the handshake; frames are not spanned
    assert otlp.attrs(spans["GET /chat"])["http.response.status_code"] == 101
    assert otlp.attrs(spans["integration"])["server.port"] == upstream.port
    _, t, parent, _ = upstream.headers[0]["traceparent"].split("-")
    assert (t, parent) == (trace_id, spans["integration"].span_id.hex())
