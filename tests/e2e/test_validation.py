"""Models and requiredParameters through the user's path: `meshgate apply -f` of an Api with a JSON
Schema model (2020-12) as a route's `requestModel` and `requiredParameters` for a header and a query
string, `meshgate deploy`, a sidecar process fed by control from etcd, and a real client: a bad body
is a 400 listing `errors: [{path, message}]`, another content type a 415, malformed JSON a 400, a
missing parameter a 400 naming it, and none of these reach the backend; a good request passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, http_request, mesh

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: shop}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  models:
    - name: Order
      contentType: application/json
      schemaJson: |
        {{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
         "required": ["customer", "items"],
         "properties": {{"customer": {{"type": "string", "minLength": 1}},
                        "items": {{"type": "array", "minItems": 1,
                                  "items": {{"type": "object", "required": ["sku", "qty"],
                                            "properties": {{"sku": {{"type": "string"}},
                                                           "qty": {{"type": "integer", "minimum": 1}}}}}}}}}}}}
  routes:
    - method: POST
      path: /pets
      requestModel: Order
      requiredParameters: [method.request.header.X-Client, method.request.querystring.region]
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/pets"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: shop}}
"""
GOOD = {"customer": "ann", "items": [{"sku": "a-1", "qty": 2}]}
HEADERS = {"Content-Type": "application/json", "X-Client": "web"}


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("validation")) as m:
        m.start_control()
        backend = m.start_backend("v1")
        m.apply(CONFIG.format(backend=backend))
        m.cli("deploy", "shop", "--stage", "prod")
        yield m.start_sidecar(extra=NO_DRAIN)


def post(
    sc: Sidecar, body: object, path: str = "/prod/pets?region=eu", **headers: str
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, _, data = http_request(sc.port, "POST", path, {**HEADERS, **headers}, raw)
    return code, json.loads(data)


def test_a_good_request_passes(sidecar: Sidecar) -> None:
    code, body = post(sidecar, GOOD)
    assert code == 201 and body["data"] == {"created": GOOD}, body


def test_a_bad_body_is_400_with_the_validation_errors(sidecar: Sidecar) -> None:
    code, body = post(sidecar, {"customer": "", "items": [{"sku": "a-1", "qty": 0}, {"qty": 1}]})
    assert code == 400 and body["message"] == "Invalid request body" and "service" not in body, body
    errors = {(e["path"], e["message"]) for e in body["errors"]}
    paths = {p for p, _ in errors}
    assert {"/customer", "/items/0/qty", "/items/1"} <= paths, errors
    assert any("sku" in m for p, m in errors if p == "/items/1"), errors
    code, body = post(sidecar, b'{"customer": "ann", "items": [')
    assert code == 400 and "service" not in body, body
    code, body = post(sidecar, b"customer=ann", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 415 and "service" not in body, body


def test_a_missing_parameter_is_400(sidecar: Sidecar) -> None:
    code, _, data = http_request(
        sidecar.port, "POST", "/prod/pets?region=eu", {"Content-Type": "application/json"}, json.dumps(GOOD)
    )
    body = json.loads(data)
    assert code == 400 and "service" not in body, body
    assert "x-client" in json.dumps(body).lower(), body
    code, body = post(sidecar, GOOD, path="/prod/pets")
    assert code == 400 and "region" in json.dumps(body) and "service" not in body, body
