"""Function integrations through the user's path: `meshgate apply -f` of an Api with `type: function`
routes (payload 1.0 and 2.0) pointing at an in-cluster "function" (an aiohttp app in the test),
`meshgate deploy`, a sidecar process fed by control from etcd, and a real client: the function gets
API Gateway's Lambda proxy event (1.0 with its nulls, account 000000000000, apiId the Api's name,
deploymentId the deployment number), its proxy result becomes the response (status, headers with a
number as text, multiValueHeaders), and a malformed result is API Gateway's 502."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, AioServer, Sidecar, http_request, mesh

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: shop}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: POST
      path: /orders/{{id}}
      integration: {{type: function, uri: "http://127.0.0.1:{fn}/invoke", payloadFormatVersion: "1.0"}}
    - method: GET
      path: /v2/orders/{{id}}
      integration: {{type: function, uri: "http://127.0.0.1:{fn}/invoke", payloadFormatVersion: "2.0"}}
    - method: GET
      path: /broken
      integration: {{type: function, uri: "http://127.0.0.1:{fn}/broken"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: shop, variables: {{color: blue}}}}
"""


@dataclass
class Env:
    sidecar: Sidecar
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    events: list[dict[str, Any]] = []

    async def invoke(request: web.Request) -> web.Response:
        event = await request.json()
        events.append(event)
        result = {
            "statusCode": 201,
            "headers": {"X-Order-Id": "o-7", "X-Count": 3},
            "multiValueHeaders": {"X-Tag": ["a", "b"]},
            "body": json.dumps({"ok": True, "version": event.get("version", "1.0")}),
        }
        return web.json_response(result)

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"statusCode": "not a number", "body": 5})

    app = web.Application()
    app.router.add_post("/invoke", invoke)
    app.router.add_post("/broken", broken)
    with AioServer(app) as fn, mesh(etcd.endpoint, tmp_path_factory.mktemp("functions")) as m:
        m.start_control()
        m.apply(CONFIG.format(fn=fn.port))
        m.cli("deploy", "shop", "--stage", "prod")
        yield Env(m.start_sidecar(extra=NO_DRAIN), events)


def test_the_function_gets_the_1_0_event_and_its_result_is_the_response(env: Env) -> None:
    code, headers, data = http_request(
        env.sidecar.port,
        "POST",
        "/prod/orders/7?verbose=1",
        {"Content-Type": "application/json", "X-Client": "web"},
        b'{"qty": 2}',
    )
    assert code == 201 and json.loads(data) == {"ok": True, "version": "1.0"}, data
    assert headers["x-order-id"] == "o-7" and headers["x-count"] == "3"
    conn = http.client.HTTPConnection("127.0.0.1", env.sidecar.port, timeout=5)
    conn.request("POST", "/prod/orders/8", body=b"{}")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert [v for k, v in resp.getheaders() if k.lower() == "x-tag"] == ["a", "b"]  # multiValueHeaders

    event = next(e for e in env.events if e.get("path") == "/orders/7")
    assert event["resource"] == "/orders/{id}" and event["path"] == "/orders/7"
    assert event["pathParameters"] == {"id": "7"}
    assert event["queryStringParameters"] == {"verbose": "1"}
    assert event["multiValueQueryStringParameters"] == {"verbose": ["1"]}
    assert event["headers"]["X-Client"] == "web" and event["body"] == '{"qty": 2}'
    assert event["isBase64Encoded"] is False and event["stageVariables"] == {"color": "blue"}
    rc = event["requestContext"]
    assert rc["accountId"] == "000000000000" and rc["apiId"] == "shop" and rc["stage"] == "prod"
    assert rc["deploymentId"] == "1" and rc["httpMethod"] == "POST" and rc["resourcePath"] == "/orders/{id}"
    assert rc["requestId"] == headers["x-meshgate-request-id"]
    assert rc["identity"]["sourceIp"] == "127.0.0.1" and rc["identity"]["accessKey"] is None


def test_payload_2_0(env: Env) -> None:
    code, _, data = http_request(env.sidecar.port, "GET", "/prod/v2/orders/9")
    assert code == 201 and json.loads(data)["version"] == "2.0", data
    (event,) = [e for e in env.events if e.get("version") == "2.0"]
    assert event["routeKey"] == "GET /v2/orders/{id}" and event["rawPath"] == "/prod/v2/orders/9"
    assert event["pathParameters"] == {"id": "9"} and event["requestContext"]["http"]["method"] == "GET"


def test_a_malformed_result_is_a_502(env: Env) -> None:
    code, _, data = http_request(env.sidecar.port, "GET", "/prod/broken")
    assert code == 502 and json.loads(data)["message"] == "Internal server error", data
