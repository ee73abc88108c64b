"""Gateway responses through the user's path: `meshgate apply -f` of an Api with `gatewayResponses`
overriding UNAUTHORIZED (status, headers, a body template with `$context.requestId` and
`$context.error.messageString`) and DEFAULT_4XX (headers and a body), `meshgate deploy`, a sidecar
process fed by control from etcd, and a real client: the overrides shape the gateway's own errors,
the fallback covers the 4xx types not named, and 5xx errors keep the default."""

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
  authorizers:
    - {{name: entitlements, type: request, uri: "http://127.0.0.1:{dead}/authorize"}}
  gatewayResponses:
    - type: UNAUTHORIZED
      status: 407
      headers: {{WWW-Authenticate: 'Basic realm="shop"', X-Error-Kind: auth}}
      bodyTemplate: '{{"error": "login first", "message": $context.error.messageString, "id": "$context.requestId"}}'
    - type: DEFAULT_4XX
      headers: {{X-Docs: https://shop.example.com/errors}}
      bodyTemplate: '{{"oops": "$context.error.responseType", "id": "$context.requestId"}}'
  routes:
    - {{method: GET, path: /me, authorizer: entitlements, integration: {{type: mock}}}}
    - {{method: GET, path: /keyed, apiKeyRequired: true, integration: {{type: mock}}}}
    - {{method: GET, path: /down, integration: {{type: http, uri: "http://127.0.0.1:{dead}/down"}}}}
    - {{method: GET, path: /ok, integration: {{type: mock, mock: {{body: '"fine"'}}}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: shop}}
"""


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("gwresp")) as m:
        m.start_control()
        m.apply(CONFIG.format(dead=dead))
        m.cli("deploy", "shop", "--stage", "prod")
        yield m.start_sidecar(extra=NO_DRAIN)


def test_unauthorized_override_status_headers_and_body(sidecar: Sidecar) -> None:
    # no Authorization header: the identity source is missing -> UNAUTHORIZED, overridden
    code, headers, body = http_request(sidecar.port, "GET", "/prod/me")
    assert code == 407, (code, body)
    assert headers["www-authenticate"] == 'Basic realm="shop"' and headers["x-error-kind"] == "auth"
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc == {"error": "login first", "message": "Unauthorized", "id": headers["x-meshgate-request-id"]}
    assert "x-docs" not in headers  # the specific type wins over DEFAULT_4XX


def test_default_4xx_covers_the_other_client_errors(sidecar: Sidecar) -> None:
    for path, status, kind in (
        ("/prod/keyed", 403, "INVALID_API_KEY"),
        ("/prod/nowhere", 404, "RESOURCE_NOT_FOUND"),
    ):
        code, headers, body = http_request(sidecar.port, "GET", path)
        assert code == status, (path, code, body)
        assert headers["x-docs"] == "https://shop.example.com/errors", path
        assert json.loads(body) == {"oops": kind, "id": headers["x-meshgate-request-id"]}, path


def test_5xx_and_successes_keep_their_defaults(sidecar: Sidecar) -> None:
    code, headers, body = http_request(sidecar.port, "GET", "/prod/down")
    assert code == 503 and "x-docs" not in headers and "oops" not in json.loads(body), body
    code, headers, body = http_request(sidecar.port, "GET", "/prod/ok")
    assert code == 200 and body == b'"fine"' and "x-docs" not in headers
