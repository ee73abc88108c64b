"""CORS through the user's path: `meshgate apply -f` of an Api with a `cors` block (an exact and a
`https://*.example.com` origin), `meshgate deploy`, a sidecar process fed by control from etcd, and a
real client: the preflight is answered by the sidecar (the backend never sees it), an origin not
listed is refused, and the CORS headers are on proxied responses and on the gateway's own errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, http_request, mesh

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: shop}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  cors:
    allowOrigins: [https://shop.example.com, "https://*.partners.example.com"]
    allowHeaders: [Authorization, Content-Type]
    exposeHeaders: [X-Order-Id]
    allowCredentials: true
    maxAgeSeconds: 600
  routes:
    - {{method: GET, path: /items, integration: {{type: http, uri: "http://127.0.0.1:{backend}/items"}}}}
    - {{method: POST, path: /items, integration: {{type: http, uri: "http://127.0.0.1:{backend}/items"}}}}
    - {{method: GET, path: /down, integration: {{type: http, uri: "http://127.0.0.1:{dead}/down"}}}}
    - {{method: GET, path: /keyed, apiKeyRequired: true, integration: {{type: mock}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: shop}}
"""
SHOP = "https://shop.example.com"


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("cors")) as m:
        m.start_control()
        backend = m.start_backend("v1")
        m.apply(CONFIG.format(backend=backend, dead=dead))
        m.cli("deploy", "shop", "--stage", "prod")
        yield m.start_sidecar(extra=NO_DRAIN)


def served(sc: Sidecar) -> int:
    code, _, body = http_request(sc.port, "GET", "/prod/items")
    assert code == 200
    return int(json.loads(body)["served"])


def test_preflight_is_answered_by_the_sidecar(sidecar: Sidecar) -> None:
    before = served(sidecar)
    code, headers, body = http_request(
        sidecar.port,
        "OPTIONS",
        "/prod/items",
        {
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert code == 204 and body == b"", (code, body)
    assert headers["access-control-allow-origin"] == SHOP
    assert set(headers["access-control-allow-methods"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert headers["access-control-allow-headers"].lower().replace(" ", "") == "authorization,content-type"
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["access-control-max-age"] == "600"
    assert served(sidecar) == before + 1  # the backend saw the two GETs, never the preflight

    # a wildcard origin matches its subdomains only
    code, headers, _ = http_request(
        sidecar.port,
        "OPTIONS",
        "/prod/items",
        {"Origin": "https://eu.partners.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert code == 204 and headers["access-control-allow-origin"] == "https://eu.partners.example.com"
    for origin in (
        "https://evil.example.com",
        "https://partners.example.com.evil.org",
        "http://shop.example.com",
    ):
        code, headers, _ = http_request(
            sidecar.port, "OPTIONS", "/prod/items", {"Origin": origin, "Access-Control-Request-Method": "GET"}
        )
        assert code == 403 and "access-control-allow-origin" not in headers, origin


def test_cors_headers_on_responses_and_on_gateway_errors(sidecar: Sidecar) -> None:
    code, headers, _ = http_request(sidecar.port, "GET", "/prod/items", {"Origin": SHOP})
    assert code == 200 and headers["access-control-allow-origin"] == SHOP
    assert headers["access-control-expose-headers"] == "X-Order-Id"
    assert headers["access-control-allow-credentials"] == "true" and "Origin" in headers["vary"]
    for path, status in (("/prod/down", 503), ("/prod/keyed", 403)):
        code, headers, body = http_request(sidecar.port, "GET", path, {"Origin": SHOP})
        assert code == status and "message" in json.loads(body), (path, code, body)
        assert headers["access-control-allow-origin"] == SHOP, path
    # no Origin, or one not allowed: no CORS headers
    assert "access-control-allow-origin" not in http_request(sidecar.port, "GET", "/prod/items")[1]
    code, headers, _ = http_request(
        sidecar.port, "GET", "/prod/items", {"Origin": "https://evil.example.com"}
    )
    assert code == 200 and "access-control-allow-origin" not in headers
