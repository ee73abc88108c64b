"""CORS (preflight answered by the sidecar, headers on every response) and gateway-response overrides."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Backends, Gateway, bundle, call, http_route, mock_route, read_request, snapshot

CORS = {
    "allowOrigins": ["https://app.example.com", "https://*.partner.io"],
    "allowHeaders": ["Authorization", "Content-Type"],
    "exposeHeaders": ["X-Request-Count"],
    "allowCredentials": True,
    "maxAgeSeconds": 600,
}


def test_preflight_answered_without_the_integration(gateway: Gateway, backends: Backends) -> None:
    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port_b = backends.start(backend)
    gateway.start(
        _with_spec(
            [
                http_route("POST", "/orders", f"http://127.0.0.1:{port_b}/orders"),
                mock_route("GET", "/orders", "[]"),
            ],
            cors=CORS,
        )
    )
    pre = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    status, headers, _ = call(gateway.port, "/prod/orders", "OPTIONS", pre)
    assert status == 204 and backends.accepted == 0
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["access-control-allow-methods"] == "GET, OPTIONS, POST"
    assert headers["access-control-allow-headers"] == "Authorization, Content-Type"
    assert (
        headers["access-control-allow-credentials"] == "true" and headers["access-control-max-age"] == "600"
    )
    # wildcard subdomain
    status, headers, _ = call(
        gateway.port, "/prod/orders", "OPTIONS", {**pre, "Origin": "https://eu.partner.io"}
    )
    assert status == 204 and headers["access-control-allow-origin"] == "https://eu.partner.io"
    # not allowed
    status, headers, body = call(
        gateway.port, "/prod/orders", "OPTIONS", {**pre, "Origin": "https://evil.io"}
    )
    assert (
        status == 403
        and "access-control-allow-origin" not in headers
        and "evil.io" in json.loads(body)["reason"]
    )


def test_cors_headers_on_responses_and_gateway_errors(gateway: Gateway) -> None:
    gateway.start(_with_spec([mock_route("GET", "/orders", "[]")], cors=CORS))
    origin = {"Origin": "https://app.example.com"}
    status, headers, _ = call(gateway.port, "/prod/orders", headers=origin)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["access-control-expose-headers"] == "X-Request-Count" and headers["vary"] == "Origin"
    status, headers, _ = call(gateway.port, "/prod/nothing", headers=origin)  # an error made by the gateway
    assert status == 404 and headers["access-control-allow-origin"] == "https://app.example.com"
    status, headers, _ = call(gateway.port, "/prod/orders", headers={"Origin": "https://evil.io"})
    assert status == 200 and "access-control-allow-origin" not in headers
    assert "access-control-allow-origin" not in call(gateway.port, "/prod/orders")[1]


def test_gateway_response_overrides(gateway: Gateway) -> None:
    overrides = [
        {
            "type": "RESOURCE_NOT_FOUND",
            "status": 404,
            "headers": {"X-Docs": "https://docs.example.com/errors"},
            "bodyTemplate": '{"error": "no such thing", "id": "$context.requestId", "type": "$context.error.responseType"}',
        },
        {"type": "DEFAULT_5XX", "bodyTemplate": '{"oops": $context.error.messageString}'},
        {"type": "THROTTLED", "status": 503},
    ]
    snap = _with_spec(
        [mock_route("GET", "/x", '"x"'), http_route("GET", "/broken", "http://${stageVariables.missing}/b")],
        gatewayResponses=overrides,
    )
    snap.stages[0].stage.spec.throttling.rate_limit = 0.001
    snap.stages[0].stage.spec.throttling.burst_limit = 1
    gateway.start(snap)
    gateway.holder.table = compile_snapshot(snap, runtime := Runtime())
    try:
        status, headers, body = call(gateway.port, "/prod/nope")
        doc = json.loads(body)
        assert status == 404 and headers["x-docs"] == "https://docs.example.com/errors"
        assert doc == {
            "error": "no such thing",
            "id": headers["x-meshgate-request-id"],
            "type": "RESOURCE_NOT_FOUND",
        }
        status, _, body = call(gateway.port, "/prod/broken")
        assert status == 500 and json.loads(body) == {"oops": "Internal server error"}
        assert call(gateway.port, "/prod/x")[0] == 200
        status, headers, body = call(gateway.port, "/prod/x")
        assert status == 503 and headers["x-meshgate-error-type"] == "THROTTLED"  # status overridden
        assert "retry-after" in headers
        assert "reason" in json.loads(body) and "throttled" in json.loads(body)["reason"]
    finally:
        gateway.lt.run(runtime.close())


def _with_spec(routes: list[dict[str, Any]], **spec: Any) -> Any:
    return snapshot(bundle(routes, api_spec=spec))
