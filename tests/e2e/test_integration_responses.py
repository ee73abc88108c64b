"""Integration responses selected by `selectionPattern` (issue 16), through `meshgate apply`, control
and a sidecar process: an http integration's on the backend status code, a non-proxy function's on
the errorMessage of a failed invocation, a mock's on the status its VTL request template gives; each
with its status, header mapping (integration header, body JSONPath, constant) and VTL template. A
non-proxy http integration sends only mapped query parameters and headers (API Gateway's `http`)."""

from __future__ import annotations

import json
import re
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
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: pets}}
  templateLanguage: vtl
  routes:
    - method: GET
      path: /items/{code}
      integration:
        type: http
        proxy: false
        uri: "http://127.0.0.1:PORT/status/{code}"
        requestParameters:
          integration.request.querystring.mapped: method.request.querystring.q
          integration.request.header.x-mapped: "'yes'"
        responses:
          - selectionPattern: "4\\\\d{2}"
            status: 400
            responseParameters:
              method.response.header.X-Reason: integration.response.body.detail
            responseTemplates:
              application/json: '{"error": $input.json(''$.detail''), "backend": $input.path(''$.code'')}'
          - selectionPattern: "5\\\\d{2}"
            status: 502
            responseParameters:
              method.response.header.X-Backend: integration.response.header.X-Backend
          - status: 200
            responseParameters:
              method.response.header.X-Static: "'s'"
    - method: GET
      path: /strict/{code}
      integration:
        type: http
        uri: "http://127.0.0.1:PORT/status/{code}"
        responses:
          - {selectionPattern: "2\\\\d{2}", status: 203}
    - method: POST
      path: /pets/{id}
      integration:
        type: function
        proxy: false
        uri: "http://127.0.0.1:PORT/fn"
        requestTemplates:
          application/json: '{"id": "$input.params(''id'')", "body": $input.json(''$'')}'
        responses:
          - selectionPattern: "Not found.*"
            status: 404
            responseTemplates:
              application/json: '{"message": $input.json(''$.errorMessage'')}'
          - {selectionPattern: ".*Invalid.*", status: 400}
          - status: 201
            responseTemplates:
              application/json: '{"created": $input.json(''$.pet'')}'
    - method: GET
      path: /mock/{kind}
      integration:
        type: mock
        requestTemplates:
          application/json: |
            #if($input.params('kind') == "missing")
            {"statusCode": 404}
            #else
            {"statusCode": 200}
            #end
        responses:
          - selectionPattern: "404"
            status: 404
            responseTemplates:
              application/json: '{"message": "no $input.params(''kind'')", "stage": "$context.stage"}'
          - status: 200
            responseParameters:
              method.response.header.Content-Type: "'text/plain'"
            responseTemplates:
              text/plain: "kind=$input.params('kind') stage=$context.stage"
    - method: GET
      path: /hello/{name}
      integration:
        type: mock
        responseParameters: {method.response.header.X-Mock: "'yes'"}
        responseTemplates:
          application/json: '{"hello": "$input.params(''name'')"}'
    - method: GET
      path: /context
      integration:
        type: mock
        requestTemplates: {application/json: '{"statusCode": 200}'}
        responses:
          - status: 200
            responseTemplates:
              application/json: |
                {"accountId": "$context.accountId", "apiId": "$context.apiId", "stage": "$context.stage",
                 "sourceIp": "$context.identity.sourceIp", "userAgent": "$context.identity.userAgent",
                 "domainName": "$context.domainName", "protocol": "$context.protocol",
                 "resourcePath": "$context.resourcePath", "path": "$context.path",
                 "extendedRequestId": "$context.extendedRequestId", "requestId": "$context.requestId",
                 "epoch": $context.requestTimeEpoch, "resourceId": "$context.resourceId"}
    - method: POST
      path: /echo
      integration:
        type: http
        uri: "http://127.0.0.1:PORT/echo"
        requestTemplates:
          application/json: '{"apiId": "$context.apiId", "deploymentId": "$context.deploymentId", "time": "$context.requestTime"}'
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: shop}
"""


@dataclass
class Env:
    sidecar: Sidecar
    seen: list[dict[str, Any]]


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    seen: list[dict[str, Any]] = []

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        seen.append({"query": request.query_string, "headers": dict(request.headers)})
        body = {"code": code, "detail": f"backend said {code}"}
        return web.json_response(body, status=code, headers={"X-Backend": "yes"})

    async def fn(request: web.Request) -> web.Response:
        payload = await request.json()
        seen.append({"payload": payload})
        if payload["id"] == "0":
            return web.json_response({"errorMessage": "Not found: pet 0", "errorType": "NotFound"})
        if not payload["id"].isdigit():
            return web.json_response({"errorMessage": f"Invalid id {payload['id']}", "errorType": "E"})
        return web.json_response({"pet": payload})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json()})

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_post("/fn", fn)
    with AioServer(app) as backend, mesh(etcd.endpoint, tmp_path_factory.mktemp("responses")) as m:
        m.start_control()
        m.apply(CONFIG.replace("PORT", str(backend.port)))
        m.cli("deploy", "shop", "--stage", "prod")
        yield Env(m.start_sidecar(extra=NO_DRAIN), seen)


def test_http_responses_are_selected_on_the_backend_status(env: Env) -> None:
    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/items/404")
    assert code == 400, (code, body)
    assert json.loads(body) == {"error": "backend said 404", "backend": 404}
    assert headers["x-reason"] == "backend said 404" and headers["content-type"] == "application/json"
    assert "x-backend" not in headers  # non-proxy: only mapped headers come back

    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/items/503")
    assert code == 502 and headers["x-backend"] == "yes", (code, headers)
    assert json.loads(body) == {"code": 503, "detail": "backend said 503"}  # no template: as it came

    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/items/201")
    assert code == 200 and headers["x-static"] == "s" and "x-backend" not in headers, (code, headers)
    assert json.loads(body) == {"code": 201, "detail": "backend said 201"}


def test_no_matching_response_and_no_default_is_a_500(env: Env) -> None:
    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/strict/204")
    assert code == 203 and headers["x-backend"] == "yes"  # a proxy: the backend's headers stay
    code, _, body = http_request(env.sidecar.port, "GET", "/prod/strict/404")
    assert code == 500 and json.loads(body)["message"] == "Internal server error", body


def test_a_non_proxy_http_integration_sends_only_mapped_query_and_headers(env: Env) -> None:
    code, _, _ = http_request(
        env.sidecar.port, "GET", "/prod/items/200?q=1&secret=2", {"X-Client": "c", "Accept": "text/html"}
    )
    assert code == 200
    got = env.seen[-1]
    assert got["query"] == "mapped=1", got
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["x-mapped"] == "yes" and "x-client" not in headers, headers
    assert headers["accept"] == "application/json" and headers["user-agent"] == "AmazonAPIGateway_shop"


def test_a_non_proxy_function_is_selected_on_its_error_message(env: Env) -> None:
    port = env.sidecar.port
    json_ct = {"Content-Type": "application/json"}
    code, headers, body = http_request(port, "POST", "/prod/pets/7", json_ct, b'{"name": "rex"}')
    assert code == 201 and json.loads(body) == {"created": {"id": "7", "body": {"name": "rex"}}}, body
    assert env.seen[-1] == {"payload": {"id": "7", "body": {"name": "rex"}}}  # the template's output
    assert headers["content-type"] == "application/json"

    code, _, body = http_request(port, "POST", "/prod/pets/0", json_ct, b"{}")
    assert code == 404 and json.loads(body) == {"message": "Not found: pet 0"}, body

    code, headers, body = http_request(port, "POST", "/prod/pets/x1", json_ct, b"{}")
    assert code == 400 and json.loads(body) == {"errorMessage": "Invalid id x1", "errorType": "E"}, body
    assert headers["content-type"] == "application/json"


def test_a_mock_runs_its_vtl_request_and_response_templates(env: Env) -> None:
    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/mock/missing")
    assert code == 404 and json.loads(body) == {"message": "no missing", "stage": "prod"}, body
    assert headers["content-type"] == "application/json"
    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/mock/cat")
    assert (code, body, headers["content-type"]) == (200, b"kind=cat stage=prod", "text/plain")


def test_a_mock_with_only_a_response_template_renders_it(env: Env) -> None:
    code, headers, body = http_request(env.sidecar.port, "GET", "/prod/hello/rex")
    assert (code, json.loads(body), headers["x-mock"]) == (200, {"hello": "rex"}, "yes"), body
    assert headers["content-type"] == "application/json"


def test_templates_see_api_gateways_context(env: Env) -> None:
    """$context holds what API Gateway's does (the 1.0 event's requestContext), in a response template
    (through the integration responses) and in a request template (through the transform filter)."""
    code, headers, body = http_request(
        env.sidecar.port, "GET", "/prod/context", {"Host": "shop.example.test:8080", "User-Agent": "agent/1"}
    )
    assert code == 200, body
    got = json.loads(body)
    request_id = headers["x-meshgate-request-id"]
    assert len(got.pop("resourceId")) == 6 and got.pop("epoch") > 1_700_000_000_000
    assert got == {
        "accountId": "000000000000",
        "apiId": "shop",
        "stage": "prod",
        "sourceIp": "127.0.0.1",
        "userAgent": "agent/1",
        "domainName": "shop.example.test",
        "protocol": "HTTP/1.1",
        "resourcePath": "/context",
        "path": "/prod/context",
        "extendedRequestId": request_id,
        "requestId": request_id,
    }
    code, _, body = http_request(
        env.sidecar.port, "POST", "/prod/echo", {"Content-Type": "application/json"}, b"{}"
    )
    got = json.loads(body)["got"]
    assert code == 200 and got["apiId"] == "shop" and got["deploymentId"] == "1", got
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000", got["time"]), got
