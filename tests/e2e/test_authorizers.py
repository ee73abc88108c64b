"""Request and token authorizers through the user's path: `meshgate apply -f` of an Api whose
authorizers point at an in-cluster service (an aiohttp app in the test taking the Lambda authorizer
event and answering `{principalId, policyDocument, context}`), `meshgate deploy`, a sidecar process
fed by control from etcd, and a real client: the service's Allow/Deny decides (200/403, 401 for its
Unauthorized and for a missing identity source), principal and context reach the backend as headers
and through a `context.authorizer.*` mapping, and results are cached per identity (two requests with
the same identity: one call; another identity: another call)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, AioServer, Sidecar, http_request, mesh

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  authorizers:
    - name: entitlements
      type: request
      uri: http://127.0.0.1:{authz}/authorize
      identitySources: [method.request.header.Authorization, method.request.querystring.tenant]
      resultTtlSeconds: 300
    - name: tokens
      type: token
      uri: http://127.0.0.1:{authz}/token
      identitySources: [method.request.header.X-Token]
  routes:
    - method: GET
      path: /orders/{{id}}
      authorizer: entitlements
      integration:
        type: http
        uri: "http://127.0.0.1:{backend}/orders/{{id}}"
        requestParameters:
          integration.request.header.x-user-tier: context.authorizer.tier
    - method: GET
      path: /reports
      authorizer: tokens
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/reports"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: orders}}
"""


@dataclass
class Env:
    sidecar: Sidecar
    events: list[dict[str, Any]] = field(default_factory=list)


def policy(principal: str, effect: str, arn: str, **context: Any) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": arn}],
        },
        "context": context,
    }


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    events: list[dict[str, Any]] = []

    async def authorize(request: web.Request) -> web.Response:
        event = await request.json()
        events.append(event)
        who = event["headers"].get("Authorization") or event["headers"].get("authorization", "")
        if who == "let-me-in":
            return web.json_response(policy("ann", "Allow", event["methodArn"], tier="gold", n=3))
        if who == "deny-me":
            return web.json_response(policy("bob", "Deny", event["methodArn"]))
        return web.json_response({"message": "Unauthorized"}, status=401)

    async def token(request: web.Request) -> web.Response:
        event = await request.json()
        events.append(event)
        if event["authorizationToken"] == "good-token":
            # allow every method of the stage, as authorizers that cache per token do
            arn = event["methodArn"].rsplit("/", 2)[0] + "/*"
            return web.json_response(policy("carol", "Allow", arn, team="reports"))
        return web.json_response(policy("carol", "Deny", event["methodArn"]))

    app = web.Application()
    app.router.add_post("/authorize", authorize)
    app.router.add_post("/token", token)
    with AioServer(app) as authz, mesh(etcd.endpoint, tmp_path_factory.mktemp("authz")) as m:
        m.start_control()
        backend = m.start_backend("v1")
        m.apply(CONFIG.format(authz=authz.port, backend=backend))
        m.cli("deploy", "orders", "--stage", "prod")
        yield Env(m.start_sidecar(extra=NO_DRAIN), events)


def get(env: Env, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    code, _, body = http_request(env.sidecar.port, "GET", path, headers)
    return code, json.loads(body)


def calls_for(env: Env, value: str) -> list[dict[str, Any]]:
    return [
        e for e in env.events if value in (e.get("authorizationToken"), *(e.get("headers") or {}).values())
    ]


def test_request_authorizer_allows_with_context_and_caches_per_identity(env: Env) -> None:
    code, body = get(env, "/prod/orders/1?tenant=acme", Authorization="let-me-in")
    assert code == 200, body
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["x-meshgate-principal"] == "ann"
    assert seen["x-meshgate-authorizer-tier"] == "gold" and seen["x-meshgate-authorizer-n"] == "3"
    assert seen["x-user-tier"] == "gold"  # requestParameters from context.authorizer.tier

    (event,) = calls_for(env, "let-me-in")
    assert event["type"] == "REQUEST" and event["queryStringParameters"] == {"tenant": "acme"}
    assert event["methodArn"] == "arn:meshgate:execute-api:default:000000000000:orders/prod/GET/orders/1"

    # the same identity again: served from the result cache, the service is not called
    code, body = get(env, "/prod/orders/1?tenant=acme", Authorization="let-me-in")
    assert code == 200 and len(calls_for(env, "let-me-in")) == 1
    # another identity (the tenant is part of it): one more call
    assert get(env, "/prod/orders/1?tenant=zeta", Authorization="let-me-in")[0] == 200
    assert len(calls_for(env, "let-me-in")) == 2


def test_request_authorizer_deny_unauthorized_and_missing_identity(env: Env) -> None:
    code, body = get(env, "/prod/orders/1?tenant=acme", Authorization="deny-me")
    assert code == 403 and "service" not in body, body
    # a deny is cached too
    assert get(env, "/prod/orders/1?tenant=acme", Authorization="deny-me")[0] == 403
    assert len(calls_for(env, "deny-me")) == 1
    code, body = get(env, "/prod/orders/1?tenant=acme", Authorization="who-knows")
    assert code == 401 and body["message"] == "Unauthorized", body
    # an identity source missing (no tenant): 401 without calling the service
    before = len(env.events)
    assert get(env, "/prod/orders/1", Authorization="let-me-in")[0] == 401
    assert len(env.events) == before


def test_token_authorizer_gets_the_token_event(env: Env) -> None:
    code, body = get(env, "/prod/reports", **{"X-Token": "good-token"})
    assert code == 200, body
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["x-meshgate-principal"] == "carol" and seen["x-meshgate-authorizer-team"] == "reports"
    (event,) = calls_for(env, "good-token")
    assert event == {
        "type": "TOKEN",
        "authorizationToken": "good-token",
        "methodArn": "arn:meshgate:execute-api:default:000000000000:orders/prod/GET/reports",
    }
    assert get(env, "/prod/reports", **{"X-Token": "good-token"})[0] == 200
    assert len(calls_for(env, "good-token")) == 1
    assert get(env, "/prod/reports", **{"X-Token": "bad-token"})[0] == 403
    assert get(env, "/prod/reports")[0] == 401
