"""Function integrations (the Lambda proxy contract) through the real listener against a real HTTP
function endpoint: events 1.0 and 2.0, response mapping, and every way a function can fail."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Gateway, LoopThread, bundle, snapshot


class Function:
    """An in-cluster function endpoint: answers what `behaviour` says and records each event."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.events: list[dict[str, Any]] = []
        self.behaviour: Any = None

        async def handler(request: web.Request) -> web.Response:
            event = await request.json()
            self.events.append(event)
            b = self.behaviour
            if callable(b):
                b = b(event)
            if isinstance(b, web.Response):
                return b
            if isinstance(b, float):
                await asyncio.sleep(b)
                return web.json_response({"statusCode": 200})
            return web.json_response(b)

        async def go() -> tuple[web.AppRunner, int]:
            app = web.Application()
            app.router.add_post("/invoke", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.runner, self.port = lt.run(go())

    def stop(self) -> None:
        self.lt.run(self.runner.cleanup())


@pytest.fixture
def fn(lt: LoopThread) -> Iterator[Function]:
    f = Function(lt)
    yield f
    f.stop()


def start(
    gateway: Gateway, port: int, version: str = "1.0", timeout_ms: int = 0, binary: list[str] | None = None
) -> None:
    integ: dict[str, Any] = {
        "type": "function",
        "uri": f"http://127.0.0.1:{port}/invoke",
        "payloadFormatVersion": version,
    }
    if timeout_ms:
        integ["timeoutMs"] = timeout_ms
    b = bundle([{"method": "ANY", "path": "/pets/{id}", "integration": integ}], variables={"color": "blue"})
    if binary:
        b["deployment"]["spec"]["apiSpec"]["binaryMediaTypes"] = binary
    snap = snapshot(b)
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)


def call(
    port: int,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheaders(), data


def test_payload_1_0_event_and_response_mapping(gateway: Gateway, fn: Function) -> None:
    fn.behaviour = {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-One": "1"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": json.dumps({"created": True}),
        "isBase64Encoded": False,
    }
    start(gateway, fn.port)
    status, headers, data = call(
        gateway.port, "/prod/pets/7?x=1&x=2&y=3", "POST", b'{"n": 1}', {"Content-Type": "application/json"}
    )
    assert status == 201 and json.loads(data) == {"created": True}
    assert [v for k, v in headers if k.lower() == "set-cookie"] == ["a=1", "b=2"] and (
        "X-One",
        "1",
    ) in headers
    ev = fn.events[-1]
    assert ev["resource"] == "/pets/{id}" and ev["path"] == "/pets/7" and ev["httpMethod"] == "POST"
    assert ev["pathParameters"] == {"id": "7"} and ev["stageVariables"] == {"color": "blue"}
    assert ev["queryStringParameters"] == {"x": "2", "y": "3"} and ev["multiValueQueryStringParameters"][
        "x"
    ] == ["1", "2"]
    assert ev["body"] == '{"n": 1}' and ev["isBase64Encoded"] is False
    assert (
        ev["requestContext"]["stage"] == "prod"
        and ev["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    )
    assert ev["requestContext"]["requestId"] == dict(headers)["x-meshgate-request-id"]


def test_payload_2_0_event_and_bare_json_answer(gateway: Gateway, fn: Function) -> None:
    fn.behaviour = {"just": "data"}
    start(gateway, fn.port, version="2.0")
    status, headers, data = call(gateway.port, "/prod/pets/9?a=1&a=2", headers={"Cookie": "s=1; t=2"})
    assert (
        status == 200
        and json.loads(data) == {"just": "data"}
        and ("content-type", "application/json") in headers
    )
    ev = fn.events[-1]
    assert ev["version"] == "2.0" and ev["routeKey"] == "ANY /pets/{id}" and ev["rawQueryString"] == "a=1&a=2"
    assert ev["queryStringParameters"] == {"a": "1,2"} and ev["cookies"] == ["s=1", "t=2"]
    assert ev["requestContext"]["http"]["method"] == "GET" and ev["rawPath"] == "/prod/pets/9"


def test_binary_bodies_are_base64_both_ways(gateway: Gateway, fn: Function) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    fn.behaviour = lambda ev: {
        "statusCode": 200,
        "body": ev["body"],
        "isBase64Encoded": True,
        "headers": {"Content-Type": "image/png"},
    }
    start(gateway, fn.port, binary=["image/*"])
    status, _, data = call(gateway.port, "/prod/pets/1", "PUT", png, {"Content-Type": "image/png"})
    assert status == 200 and data == png
    assert fn.events[-1]["isBase64Encoded"] is True and base64.b64decode(fn.events[-1]["body"]) == png


@pytest.mark.parametrize(
    ("behaviour", "status", "reason"),
    [
        ({"statusCode": "abc"}, 502, "invalid integration response: statusCode"),
        (
            {"statusCode": 200, "body": {"not": "a string"}},
            502,
            "invalid integration response: body must be a string",
        ),
        ({"status": 200}, 502, "invalid integration response: unexpected field(s) status"),
        (
            {
                "statusCode": 200,
                "body": "!!",
                "isBase64Encoded": True,
                "headers": {"Content-Type": "image/png"},
            },
            502,
            "not valid base64",
        ),
        (web.Response(text="plain text"), 502, "not JSON"),
        (web.Response(status=500, text="boom"), 502, "function invocation failed: HTTP 500"),
        (3.0, 504, "integration timeout after 0.3s"),
    ],
)
def test_function_failures_are_gateway_errors(
    gateway: Gateway, fn: Function, behaviour: Any, status: int, reason: str
) -> None:
    fn.behaviour = behaviour
    start(gateway, fn.port, timeout_ms=300, binary=["image/*"])
    got, _, data = call(gateway.port, "/prod/pets/1")
    assert got == status and reason in json.loads(data)["reason"], data


def test_unreachable_function_is_503(gateway: Gateway) -> None:
    start(gateway, 1)
    status, _, data = call(gateway.port, "/prod/pets/1")
    assert status == 503 and "function unreachable" in json.loads(data)["reason"]
