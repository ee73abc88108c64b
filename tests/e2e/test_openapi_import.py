"""An imported OpenAPI Api served by a sidecar, the user's way (README "API definitions"): `meshgate
import openapi.yaml --api NAME` through control to etcd, a Stage with `meshgate apply -f`, `meshgate
deploy`, a sidecar process; the paths and methods are routes, required query parameters are checked,
`components/schemas` request bodies are validated, an `apiKey` scheme on `x-api-key` requires a key,
and `x-meshgate-integration` says where each operation goes."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Sidecar, mesh, wait_until

OPENAPI = """
openapi: 3.0.3
info: {{title: Pet store, version: "1.0"}}
x-meshgate-api:
  selector: {{matchLabels: {{app: pets}}}}
paths:
  /pets/{{id}}:
    get:
      operationId: getPet
      parameters:
        - {{name: id, in: path, required: true, schema: {{type: integer}}}}
        - {{name: view, in: query, required: true, schema: {{type: string}}}}
      responses: {{"200": {{description: a pet}}}}
      x-meshgate-integration: {{type: http, uri: "http://127.0.0.1:{port}/pets/{{id}}"}}
  /pets:
    post:
      operationId: createPet
      security: [{{api_key: []}}]
      requestBody:
        required: true
        content:
          application/json:
            schema: {{$ref: "#/components/schemas/NewPet"}}
      responses: {{"201": {{description: created}}}}
      x-meshgate-integration:
        type: mock
        mock: {{status: 201, body: '{{"created": true}}'}}
components:
  securitySchemes:
    api_key: {{type: apiKey, in: header, name: x-api-key}}
  schemas:
    Pet:
      type: object
      required: [type]
      properties:
        type: {{type: string, enum: [dog, cat, fish]}}
        price: {{type: number, minimum: 0}}
    NewPet:
      allOf:
        - {{$ref: "#/components/schemas/Pet"}}
        - {{type: object, required: [price]}}
"""

STAGE_AND_KEY = """
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: store}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {name: basic}
spec: {apis: [store/prod]}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {name: alice}
spec: {usagePlan: basic, value: "alice-key-0123456789abcdef"}
"""


def call(sc: Sidecar, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"content-type": "application/json", **(headers or {})} if data else dict(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("e2e-openapi")
    with mesh(etcd.endpoint, tmp) as m:
        m.start_control()
        backend = m.start_backend("v1")
        spec = tmp / "openapi.yaml"
        spec.write_text(OPENAPI.format(port=backend))
        out = m.cli("import", str(spec), "--api", "store", "--fail-on-warnings")
        assert out.stdout.startswith("api/store created (2 routes, 0 warnings)"), out.stdout
        m.apply(STAGE_AND_KEY)
        m.cli("deploy", "store", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)
        wait_until(
            lambda: call(sc, "GET", "/prod/pets/1?view=full")[0] == 200, what="the imported Api served"
        )
        yield sc


def test_an_imported_operation_is_served(sidecar: Sidecar) -> None:
    status, body = call(sidecar, "GET", "/prod/pets/2?view=full")
    assert status == 200 and body["service"] == "v1" and body["data"]["type"] == "cat"
    assert call(sidecar, "DELETE", "/prod/pets/2?view=full")[0] == 405  # not in the document


def test_a_required_query_parameter_is_checked(sidecar: Sidecar) -> None:
    status, body = call(sidecar, "GET", "/prod/pets/2")
    assert status == 400 and body["errors"] == [{"path": "querystring view", "message": "required"}], body


def test_the_request_body_schema_and_the_api_key(sidecar: Sidecar) -> None:
    key = {"x-api-key": "alice-key-0123456789abcdef"}
    assert call(sidecar, "POST", "/prod/pets", {"type": "dog", "price": 10})[0] == 403  # no key
    assert call(sidecar, "POST", "/prod/pets", {"type": "dog", "price": 10}, key) == (201, {"created": True})
    status, body = call(sidecar, "POST", "/prod/pets", {"type": "cow"}, key)  # allOf: enum and required
    assert status == 400 and len(body["errors"]) == 2, body
