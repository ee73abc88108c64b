"""Lambda proxy events (1.0 and 2.0), authorizer events (TOKEN and REQUEST) and function results,
compared whole with what AWS API Gateway documents, through the real listener against real HTTP
function and authorizer endpoints. Only volatile fields (times, request ids) are checked by format."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Gateway, LoopThread, bundle, mock_route, snapshot
from .test_function import Function

REQUEST_TIME = re.compile(
    r"^\d\d/(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/\d{4}:\d\d:\d\d:\d\d \+0000$"
)
RESOURCE_ID = re.compile(r"^[0-9a-z]{6}$")

IDENTITY_NULLS = {
    "accessKey": None,
    "accountId": None,
    "caller": None,
    "cognitoAuthenticationProvider": None,
    "cognitoAuthenticationType": None,
    "cognitoIdentityId": None,
    "cognitoIdentityPoolId": None,
    "principalOrgId": None,
    "user": None,
    "userArn": None,
}


@pytest.fixture(name="fn")
def function_endpoint(lt: LoopThread) -> Iterator[Function]:
    f = Function(lt)
    yield f
    f.stop()


def start(gateway: Gateway, routes: list[dict[str, Any]], **kw: Any) -> None:
    snap = snapshot(bundle(routes, **kw))
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)


def fn_route(port: int, path: str, version: str = "1.0", method: str = "ANY", **extra: Any) -> dict[str, Any]:
    integ = {"type": "function", "uri": f"http://127.0.0.1:{port}/invoke", "payloadFormatVersion": version}
    return {"method": method, "path": path, "integration": integ, **extra}


def raw_call(port: int, head: str, body: bytes = b"") -> tuple[int, list[tuple[str, str]], bytes]:
    """One request written byte for byte (header case, order and repeats as given)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            top, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length: *(\d+)", top)
                if (m and len(rest) >= int(m.group(1))) or top.startswith(b"HTTP/1.1 204"):
                    break
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return int(lines[0].split()[1]), headers, rest


def answer(status: int, headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The whole answer, less the gateway's own per-request headers."""
    own = {"x-meshgate-request-id", "x-meshgate-deployment", "content-length", "date", "connection"}
    return {
        "status": status,
        "headers": [(k, v) for k, v in headers if k.lower() not in own],
        "body": body,
    }


def volatile_1(ev: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Check the volatile fields of a 1.0 requestContext by format and take them out."""
    rc = ev["requestContext"]
    assert REQUEST_TIME.match(rc.pop("requestTime")), rc
    epoch = rc.pop("requestTimeEpoch")
    assert isinstance(epoch, int) and abs(epoch - time.time() * 1000) < 60_000
    assert RESOURCE_ID.match(rc.pop("resourceId"))
    assert rc.pop("requestId") == rc.pop("extendedRequestId") == request_id
    return ev


def rid(headers: list[tuple[str, str]]) -> str:
    return dict((k.lower(), v) for k, v in headers)["x-meshgate-request-id"]


# ------------------------------------------------------------------ payload 1.0


def test_event_1_0_is_api_gateways_whole(gateway: Gateway, fn: Function) -> None:
    """AWS's "Input format of a Lambda function for proxy integration": every key, client header case,
    last value in `headers`, all values in `multiValueHeaders`, the stage in requestContext.path."""
    fn.behaviour = {"statusCode": 200}
    start(gateway, [fn_route(fn.port, "/pets/{id}")], variables={"color": "blue"})
    status, headers, _ = raw_call(
        gateway.port,
        "POST /prod/pets/7?x=1&x=2&y=3 HTTP/1.1\nHost: api.example.test:8080\nUser-Agent: agent/1.0\n"
        "Content-Type: application/json\nX-Multi: a\nx-multi: b\nContent-Length: 8\n",
        b'{"n": 1}',
    )
    assert status == 200
    assert volatile_1(fn.events[-1], rid(headers)) == {
        "resource": "/pets/{id}",
        "path": "/pets/7",
        "httpMethod": "POST",
        "headers": {
            "Host": "api.example.test:8080",
            "User-Agent": "agent/1.0",
            "Content-Type": "application/json",
            "X-Multi": "a",
            "x-multi": "b",
            "Content-Length": "8",
        },
        "multiValueHeaders": {
            "Host": ["api.example.test:8080"],
            "User-Agent": ["agent/1.0"],
            "Content-Type": ["application/json"],
            "X-Multi": ["a"],
            "x-multi": ["b"],
            "Content-Length": ["8"],
        },
        "queryStringParameters": {"x": "2", "y": "3"},
        "multiValueQueryStringParameters": {"x": ["1", "2"], "y": ["3"]},
        "pathParameters": {"id": "7"},
        "stageVariables": {"color": "blue"},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "pets",
            "deploymentId": "1",
            "domainName": "api.example.test",
            "domainPrefix": "api",
            "httpMethod": "POST",
            "identity": {**IDENTITY_NULLS, "sourceIp": "127.0.0.1", "userAgent": "agent/1.0"},
            "path": "/prod/pets/7",
            "protocol": "HTTP/1.1",
            "resourcePath": "/pets/{id}",
            "stage": "prod",
        },
        "body": '{"n": 1}',
        "isBase64Encoded": False,
    }


def test_event_1_0_absent_parts_are_null(gateway: Gateway, fn: Function) -> None:
    fn.behaviour = {"statusCode": 200}
    start(gateway, [fn_route(fn.port, "/health", method="GET")])
    status, headers, _ = raw_call(gateway.port, "GET /prod/health HTTP/1.1\nHost: gw\n")
    assert status == 200
    assert volatile_1(fn.events[-1], rid(headers)) == {
        "resource": "/health",
        "path": "/health",
        "httpMethod": "GET",
        "headers": {"Host": "gw"},
        "multiValueHeaders": {"Host": ["gw"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "pets",
            "deploymentId": "1",
            "domainName": "gw",
            "domainPrefix": "gw",
            "httpMethod": "GET",
            "identity": {**IDENTITY_NULLS, "sourceIp": "127.0.0.1", "userAgent": None},
            "path": "/prod/health",
            "protocol": "HTTP/1.1",
            "resourcePath": "/health",
            "stage": "prod",
        },
        "body": None,
        "isBase64Encoded": False,
    }


def test_event_1_0_greedy_value_keeps_its_encoding_and_drops_the_trailing_slash(
    gateway: Gateway, fn: Function
) -> None:
    fn.behaviour = {"statusCode": 200}
    start(
        gateway, [fn_route(fn.port, "/files/{proxy+}", method="GET"), fn_route(fn.port, "/a", method="GET")]
    )
    status, headers, _ = raw_call(gateway.port, "GET /prod/files/a%2Bb/c%2fd/ HTTP/1.1\nHost: gw\n")
    assert status == 200
    ev = volatile_1(fn.events[-1], rid(headers))
    assert (ev["resource"], ev["path"], ev["pathParameters"], ev["requestContext"]["path"]) == (
        "/files/{proxy+}",
        "/files/a%2Bb/c%2Fd/",
        {"proxy": "a%2Bb/c%2Fd"},
        "/prod/files/a%2Bb/c%2Fd/",
    )
    assert ev["requestContext"]["resourcePath"] == "/files/{proxy+}"
    status, _, _ = raw_call(gateway.port, "GET /prod/files/x/y/ HTTP/1.1\nHost: gw\n")
    assert status == 200 and fn.events[-1]["pathParameters"] == {"proxy": "x/y"}
    assert fn.events[-1]["path"] == "/files/x/y/"
    raw_call(gateway.port, "GET /prod/a HTTP/1.1\nHost: gw\n")
    raw_call(gateway.port, "GET /prod/files/z HTTP/1.1\nHost: gw\n")
    ids = [e["requestContext"]["resourceId"] for e in fn.events[1:]]
    assert ids[0] == ids[2] != ids[1]  # one stable id per resource


# ------------------------------------------------------------------ payload 2.0


def test_event_2_0_is_api_gateways_whole(gateway: Gateway, fn: Function) -> None:
    """AWS's payload format 2.0: lower-cased, comma-joined headers, cookies out of the headers, the
    raw path and query string, requestContext.http, and absent parts left out."""
    fn.behaviour = {"statusCode": 200}
    start(gateway, [fn_route(fn.port, "/pets/{id}", "2.0")], variables={"color": "blue"})
    status, headers, _ = raw_call(
        gateway.port,
        "PUT /prod/pets/9?a=1&a=2&b= HTTP/1.1\nHost: api.example.test\nUser-Agent: agent/2\n"
        "Cookie: s=1; t=2\nX-Multi: a\nx-multi: b\nContent-Length: 5\n",
        b"hello",
    )
    assert status == 200
    ev = fn.events[-1]
    rc = ev["requestContext"]
    assert REQUEST_TIME.match(rc.pop("time"))
    assert abs(rc.pop("timeEpoch") - time.time() * 1000) < 60_000
    assert rc.pop("requestId") == rid(headers)
    assert ev == {
        "version": "2.0",
        "routeKey": "ANY /pets/{id}",
        "rawPath": "/prod/pets/9",
        "rawQueryString": "a=1&a=2&b=",
        "cookies": ["s=1", "t=2"],
        "headers": {
            "host": "api.example.test",
            "user-agent": "agent/2",
            "x-multi": "a,b",
            "content-length": "5",
        },
        "queryStringParameters": {"a": "1,2", "b": ""},
        "pathParameters": {"id": "9"},
        "stageVariables": {"color": "blue"},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "pets",
            "domainName": "api.example.test",
            "domainPrefix": "api",
            "http": {
                "method": "PUT",
                "path": "/prod/pets/9",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "agent/2",
            },
            "routeKey": "ANY /pets/{id}",
            "stage": "prod",
        },
        "body": "hello",
        "isBase64Encoded": False,
    }


def test_event_2_0_leaves_absent_parts_out(gateway: Gateway, fn: Function) -> None:
    fn.behaviour = {"statusCode": 204}
    start(gateway, [fn_route(fn.port, "/health", "2.0", method="GET")])
    status, _, _ = raw_call(gateway.port, "GET /prod/health HTTP/1.1\nHost: gw\n")
    assert status == 204
    ev = fn.events[-1]
    rc = ev["requestContext"]
    for k in ("time", "timeEpoch", "requestId"):
        rc.pop(k)
    assert ev == {
        "version": "2.0",
        "routeKey": "GET /health",
        "rawPath": "/prod/health",
        "rawQueryString": "",
        "headers": {"host": "gw"},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "pets",
            "domainName": "gw",
            "domainPrefix": "gw",
            "http": {
                "method": "GET",
                "path": "/prod/health",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "",
            },
            "routeKey": "GET /health",
            "stage": "prod",
        },
        "isBase64Encoded": False,
    }


# ------------------------------------------------------------------ results


JSON = ("Content-Type", "application/json")


@pytest.mark.parametrize(
    ("version", "result", "binary", "expected"),
    [
        # a boolean or number header value is sent as text
        (
            "1.0",
            {"statusCode": 200, "headers": {"X-Flag": True, "X-Off": False, "X-N": 3}, "body": "ok"},
            None,
            {
                "status": 200,
                "headers": [("X-Flag", "true"), ("X-Off", "false"), ("X-N", "3"), JSON],
                "body": b"ok",
            },
        ),
        # no statusCode: 200; a numeric string is a status
        ("1.0", {"body": "fine"}, None, {"status": 200, "headers": [JSON], "body": b"fine"}),
        ("1.0", {"statusCode": "201"}, None, {"status": 201, "headers": [JSON], "body": b""}),
        # headers and multiValueHeaders naming one header (any case): both sent, a value in both once
        (
            "1.0",
            {
                "statusCode": 200,
                "headers": {"X-A": "1", "Content-Type": "text/plain", "X-B": "same"},
                "multiValueHeaders": {"x-a": ["2", "3"], "x-b": ["same"]},
                "body": "x",
            },
            None,
            {
                "status": 200,
                "headers": [
                    ("X-A", "1"),
                    ("Content-Type", "text/plain"),
                    ("x-a", "2"),
                    ("x-a", "3"),
                    ("x-b", "same"),
                ],
                "body": b"x",
            },
        ),
        # isBase64Encoded on an Api without binary media types: the base64 text as it is (REST)
        (
            "1.0",
            {
                "statusCode": 200,
                "headers": {"Content-Type": "image/png"},
                "body": "AAE=",
                "isBase64Encoded": True,
            },
            None,
            {"status": 200, "headers": [("Content-Type", "image/png")], "body": b"AAE="},
        ),
        # ... and decoded where the response's content type is a binary media type
        (
            "1.0",
            {
                "statusCode": 200,
                "headers": {"Content-Type": "image/png"},
                "body": "AAE=",
                "isBase64Encoded": True,
            },
            ["image/*"],
            {"status": 200, "headers": [("Content-Type", "image/png")], "body": b"\x00\x01"},
        ),
        # 2.0 always decodes
        (
            "2.0",
            {
                "statusCode": 200,
                "headers": {"content-type": "image/png"},
                "body": "AAE=",
                "isBase64Encoded": True,
            },
            None,
            {"status": 200, "headers": [("content-type", "image/png")], "body": b"\x00\x01"},
        ),
        # 2.0: a result without statusCode is the body; a string goes as it is
        (
            "2.0",
            "Hello from Lambda!",
            None,
            {"status": 200, "headers": [("content-type", "application/json")], "body": b"Hello from Lambda!"},
        ),
        (
            "2.0",
            {"a": 1},
            None,
            {"status": 200, "headers": [("content-type", "application/json")], "body": b'{"a": 1}'},
        ),
        (
            "2.0",
            {"statusCode": 200, "cookies": ["a=1", "b=2"], "headers": {"x-n": 1}, "body": ""},
            None,
            {
                "status": 200,
                "headers": [("x-n", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")],
                "body": b"",
            },
        ),
    ],
)
def test_results_are_mapped_as_api_gateway_maps_them(
    gateway: Gateway,
    fn: Function,
    version: str,
    result: Any,
    binary: list[str] | None,
    expected: dict[str, Any],
) -> None:
    fn.behaviour = result
    spec = {"binaryMediaTypes": binary} if binary else None
    start(gateway, [fn_route(fn.port, "/r", version, method="GET")], api_spec=spec)
    assert answer(*raw_call(gateway.port, "GET /prod/r HTTP/1.1\nHost: gw\n")) == expected


MALFORMED = [
    ({"statusCode": "abc"}, "statusCode"),
    ({"statusCode": True}, "statusCode"),
    ({"statusCode": 200, "body": {"not": "a string"}}, "body must be a string"),
    ({"status": 200}, "unexpected field(s) status"),
    ({"statusCode": 200, "cookies": ["a=1"]}, "unexpected field(s) cookies"),
    ({"statusCode": 200, "headers": {"X": {"a": 1}}}, "header X"),
    ({"statusCode": 200, "headers": {"X": None}}, "header X"),
    ({"statusCode": 200, "multiValueHeaders": {"X": "one"}}, "multiValueHeaders.X must be a list"),
    ([1, 2], "not an object"),
]


@pytest.mark.parametrize(("result", "reason"), MALFORMED)
def test_malformed_results_are_502_configuration_errors(
    gateway: Gateway, fn: Function, result: Any, reason: str
) -> None:
    fn.behaviour = result
    start(gateway, [fn_route(fn.port, "/r", method="GET")])
    status, headers, body = raw_call(gateway.port, "GET /prod/r HTTP/1.1\nHost: gw\n")
    doc = json.loads(body)
    assert status == 502 and reason in doc.pop("reason") and doc.pop("requestId") == rid(headers)
    assert set(doc) == {"message"}


def test_malformed_result_overridable_as_api_configuration_error(gateway: Gateway, fn: Function) -> None:
    """The gateway-response type of a malformed result is API_CONFIGURATION_ERROR ("Execution failed
    due to configuration error: Malformed Lambda proxy response"): an Api's override of it applies."""
    fn.behaviour = {"statusCode": "abc"}
    override = {"type": "API_CONFIGURATION_ERROR", "bodyTemplate": '{"oops": true}'}
    start(gateway, [fn_route(fn.port, "/r", method="GET")], api_spec={"gatewayResponses": [override]})
    status, _, body = raw_call(gateway.port, "GET /prod/r HTTP/1.1\nHost: gw\n")
    assert (status, json.loads(body)) == (502, {"oops": True})


def test_malformed_result_body_is_api_gateways(gateway: Gateway, fn: Function) -> None:
    fn.behaviour = {"statusCode": "abc"}
    start(gateway, [fn_route(fn.port, "/r", method="GET")])
    status, _, body = raw_call(gateway.port, "GET /prod/r HTTP/1.1\nHost: gw\n")
    doc = json.loads(body)
    assert (status, doc["message"]) == (502, "Internal server error")


# ------------------------------------------------------------------ authorizer events


def authorizer(lt: LoopThread, events: list[dict[str, Any]]) -> tuple[int, Any]:
    async def handler(request: web.Request) -> web.Response:
        event = await request.json()
        events.append(event)
        doc = {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
            ],
        }
        return web.json_response({"principalId": "ann", "policyDocument": doc})

    async def go() -> tuple[int, web.AppRunner]:
        app = web.Application()
        app.router.add_post("/authorize", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1]), runner  # type: ignore[union-attr]

    return lt.run(go())


@pytest.mark.parametrize("kind", ["token", "request"])
def test_authorizer_events_are_api_gateways_whole(gateway: Gateway, lt: LoopThread, kind: str) -> None:
    """AWS's "Input to an API Gateway Lambda authorizer": TOKEN {type, authorizationToken, methodArn};
    REQUEST with the request's parts and context. The methodArn has AWS's structure
    (partition:execute-api:region:account:apiId/stage/METHOD/path) with meshgate's partition, and the
    authorizer's policy for exactly that ARN allows the call."""
    events: list[dict[str, Any]] = []
    port, runner = authorizer(lt, events)
    try:
        conf: dict[str, Any] = {
            "name": "custom",
            "type": kind,
            "uri": f"http://127.0.0.1:{port}/authorize",
            "identitySources": ["method.request.header.Authorization"],
            "resultTtlSeconds": 0,
        }
        route = {**mock_route("GET", "/pets/{id}", '{"ok": 1}'), "authorizer": "custom"}
        start(gateway, [route], variables={"color": "blue"}, api_spec={"authorizers": [conf]})
        status, headers, body = raw_call(
            gateway.port,
            "GET /prod/pets/7?q=1&q=2 HTTP/1.1\nHost: api.example.test\nAuthorization: Bearer t\n"
            "User-Agent: agent/1\n",
        )
        assert (status, json.loads(body)) == (200, {"ok": 1})
    finally:
        lt.run(runner.cleanup())
    arn = "arn:meshgate:execute-api:default:000000000000:pets/prod/GET/pets/7"
    if kind == "token":
        assert events == [{"type": "TOKEN", "authorizationToken": "Bearer t", "methodArn": arn}]
        return
    assert volatile_1(events[0], rid(headers)) == {
        "type": "REQUEST",
        "methodArn": arn,
        "resource": "/pets/{id}",
        "path": "/pets/7",
        "httpMethod": "GET",
        "headers": {"Host": "api.example.test", "Authorization": "Bearer t", "User-Agent": "agent/1"},
        "multiValueHeaders": {
            "Host": ["api.example.test"],
            "Authorization": ["Bearer t"],
            "User-Agent": ["agent/1"],
        },
        "queryStringParameters": {"q": "2"},
        "multiValueQueryStringParameters": {"q": ["1", "2"]},
        "pathParameters": {"id": "7"},
        "stageVariables": {"color": "blue"},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "pets",
            "deploymentId": "1",
            "domainName": "api.example.test",
            "domainPrefix": "api",
            "httpMethod": "GET",
            "identity": {**IDENTITY_NULLS, "sourceIp": "127.0.0.1", "userAgent": "agent/1"},
            "path": "/prod/pets/7",
            "protocol": "HTTP/1.1",
            "resourcePath": "/pets/{id}",
            "stage": "prod",
        },
    }
