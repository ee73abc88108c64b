"""Templates and parameter mapping through the user's path: `meshgate apply -f` of an Api with a Jinja
request template, a VTL response template (`templateLanguage: vtl` on one integration) and
`requestParameters` / `responseParameters` / `removeResponseHeaders`, `meshgate deploy`, a sidecar
process fed by control from etcd, and a real client: the backend receives the body the template made
and the header mapped from the query string; the client gets the body and headers the response side
made."""

from __future__ import annotations

import json
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
  routes:
    - method: POST
      path: /pets
      integration:
        type: http
        uri: "http://127.0.0.1:{backend}/pets"
        requestParameters:
          integration.request.header.x-user-lang: method.request.querystring.lang
          integration.request.header.x-user-origin: "'e2e'"
        requestTemplates:
          application/json: |
            {{"customer": {{{{ input.json('$.customer') }}}},
             "lines": {{{{ input.path('$.items') | length }}}},
             "stage": "{{{{ context.stage }}}}",
             "lang": "{{{{ input.params('lang') }}}}"}}
        responseParameters:
          method.response.header.X-Served-By: integration.response.header.Server
        removeResponseHeaders: [Server]
    - method: GET
      path: /pets/{{id}}
      integration:
        type: http
        uri: "http://127.0.0.1:{backend}/pets/{{id}}"
        templateLanguage: vtl
        requestParameters:
          integration.request.header.x-pet-id: method.request.path.id
        responseTemplates:
          application/json: |
            #set($pet = $input.path('$.data'))
            {{"pet": "$pet.type.toUpperCase()", "id": $pet.id, "seen": $input.json('$.headers')}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: shop}}
"""


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("mapping")) as m:
        m.start_control()
        backend = m.start_backend("v1")
        m.apply(CONFIG.format(backend=backend))
        m.cli("deploy", "shop", "--stage", "prod")
        yield m.start_sidecar(extra=NO_DRAIN)


def test_jinja_request_template_and_query_to_header_mapping(sidecar: Sidecar) -> None:
    body = {"customer": "ann", "items": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]}
    code, headers, data = http_request(
        sidecar.port, "POST", "/prod/pets?lang=fr", {"Content-Type": "application/json"}, json.dumps(body)
    )
    assert code == 201, data
    echoed = json.loads(data)
    # what the backend received: the template's body, the mapped headers
    assert echoed["data"] == {"created": {"customer": "ann", "lines": 3, "stage": "prod", "lang": "fr"}}
    seen = {k.lower(): v for k, v in echoed["headers"].items()}
    assert seen["x-user-lang"] == "fr" and seen["x-user-origin"] == "e2e"
    # the response side: Server renamed to X-Served-By, then removed
    assert headers["x-served-by"].startswith("Python") and "server" not in headers, headers


def test_vtl_response_template(sidecar: Sidecar) -> None:
    code, _, data = http_request(sidecar.port, "GET", "/prod/pets/2")
    assert code == 200, data
    doc = json.loads(data)
    assert {k: doc[k] for k in ("pet", "id")} == {"pet": "CAT", "id": 2}, doc
    # the path parameter mapped to a header reached the backend
    assert {k.lower(): v for k, v in doc["seen"].items()}["x-pet-id"] == "2", doc
