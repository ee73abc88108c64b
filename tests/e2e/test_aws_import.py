"""An AWS API Gateway export through the real CLI, control and a sidecar process (issue 16, part 2):
`meshgate import` of the PetStore-shaped OpenAPI 3.0 export (its http integrations' host turned into
the stage variable `${stageVariables.petstore}`, pointing at a backend of the test), `meshgate
deploy`, then the mock root page, a CORS preflight mock and `GET /pets/1` answer as on API Gateway."""

from __future__ import annotations

import json
from pathlib import Path

from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, http_request, mesh

PETSTORE = Path(__file__).resolve().parent.parent / "control" / "fixtures" / "aws" / "petstore-oas30.yaml"
STAGE = """
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec:
  api: petstore
  variables: {{petstore: "127.0.0.1:{backend}"}}
"""
# what binds the Api to the test's sidecar (AWS exports have no such thing)
SELECTOR = "x-meshgate-api: {selector: {matchLabels: {app: pets}}}\n"


def test_petstore_export_imports_deploys_and_answers_as_api_gateway(etcd: LocalEtcd, tmp_path: Path) -> None:
    text = PETSTORE.read_text().replace(
        "http://petstore.execute-api.com/", "http://${stageVariables.petstore}/"
    )
    spec = tmp_path / "petstore.yaml"
    spec.write_text(text + SELECTOR)
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        backend = m.start_backend("petstore")
        out = m.cli("import", str(spec), "--api", "petstore", "--fail-on-warnings")
        assert "api/petstore created (6 routes, 0 warnings)" in out.stdout, out.stdout + out.stderr
        m.apply(STAGE.format(backend=backend))
        m.cli("deploy", "petstore", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)

        code, headers, body = http_request(sc.port, "GET", "/prod/")
        assert code == 200 and headers["content-type"] == "text/html", (code, headers, body)
        assert body.startswith(b"<html>") and b"<h1>Welcome to your Pet Store API</h1>" in body
        assert b"color: #333;" in body  # the template's text, as API Gateway sends it

        code, headers, body = http_request(
            sc.port,
            "OPTIONS",
            "/prod/pets",
            {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert code == 200 and body == b"", (code, headers, body)
        assert headers["access-control-allow-origin"] == "*"
        assert headers["access-control-allow-methods"] == "POST,GET,OPTIONS"
        assert headers["access-control-allow-headers"] == "Content-Type,X-Amz-Date,Authorization,X-Api-Key"

        code, headers, body = http_request(sc.port, "GET", "/prod/pets/1")
        assert code == 200, (code, headers, body)
        echoed = json.loads(body)
        assert echoed["path"] == "/petstore/pets/1" and echoed["service"] == "petstore", echoed
        assert headers["access-control-allow-origin"] == "*"  # the integration response's parameter

        code, _, body = http_request(sc.port, "GET", "/prod/pets?type=dog&page=2")
        assert code == 200, body
        path, _, query = json.loads(body)["path"].partition("?")
        # the mapped query parameters arrive (the sidecar also passes the client's query string on,
        # which API Gateway does not do for non-proxy http integrations: not asserted here)
        assert path == "/petstore/pets" and {"page=2", "type=dog"} <= set(query.split("&"))
