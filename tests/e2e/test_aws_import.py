"""AWS API Gateway exports through the real CLI, control and a sidecar process (issue 16): `meshgate
import` of the PetStore-shaped OpenAPI 3.0 export (its http integrations' host turned into the stage
variable `${stageVariables.petstore}`, pointing at a backend of the test), `meshgate deploy`, then
the mock root page, a CORS preflight mock and `GET /pets/1` answer as on API Gateway; and an export
whose integration responses are selected on the backend's status, a Lambda custom integration's
errorMessage and a VTL mock's statusCode."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from aiohttp import web
from google.protobuf import json_format
from meshgate.control.etcd_local import LocalEtcd
from meshgate.v1 import control_pb2

from .harness import NO_DRAIN, AioServer, http_request, mesh

FIXTURES = Path(__file__).resolve().parent.parent / "control" / "fixtures" / "aws"
PETSTORE = FIXTURES / "petstore-oas30.yaml"
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
        assert code == 200 and body == b"" and headers["content-type"] == "application/json", (code, headers)
        assert headers["access-control-allow-origin"] == "*"
        assert headers["access-control-allow-methods"] == "POST,GET,OPTIONS"
        assert headers["access-control-allow-headers"] == "Content-Type,X-Amz-Date,Authorization,X-Api-Key"

        code, headers, body = http_request(sc.port, "GET", "/prod/pets/1")
        assert code == 200, (code, headers, body)
        echoed = json.loads(body)
        assert echoed["path"] == "/petstore/pets/1" and echoed["service"] == "petstore", echoed
        assert headers["access-control-allow-origin"] == "*"  # the integration response's parameter

        # export --format aws writes API Gateway's format back; importing it gives the same Api
        exported = yaml.safe_load(m.cli("export", "petstore", "--format", "aws").stdout)
        root = exported["paths"]["/"]["get"]
        assert (
            root["x-amazon-apigateway-integration"]["type"] == "mock" and "x-meshgate-integration" not in root
        )
        again = tmp_path / "again.yaml"
        again.write_text(yaml.safe_dump(exported))
        m.cli("import", str(again), "--api", "petstore-again", "--fail-on-warnings")
        specs = [
            m.stub().Get(control_pb2.GetRequest(kind="Api", name=name)).resources[0].api.spec
            for name in ("petstore", "petstore-again")
        ]
        assert json_format.MessageToDict(specs[1]) == json_format.MessageToDict(specs[0])

        code, _, body = http_request(sc.port, "GET", "/prod/pets?type=dog&page=2&debug=1")
        assert code == 200, body
        path, _, query = json.loads(body)["path"].partition("?")
        # a non-proxy http integration: the mapped query parameters arrive, nothing else of the client's
        assert path == "/petstore/pets" and sorted(query.split("&")) == ["page=2", "type=dog"], query


def _catalog_app(seen: list[object]) -> web.Application:
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        seen.append(request.query_string)
        body = {"detail": f"backend said {code}"}
        return web.json_response(body, status=code, headers={"X-Backend": "yes"})

    async def save_pet(request: web.Request) -> web.Response:
        event = await request.json()  # what the request template made, not a proxy event
        seen.append(event)
        if event["name"] == "":
            return web.json_response({"errorMessage": "Invalid name", "errorType": "ValueError"})
        if event["id"] == "0":
            return web.json_response({"errorMessage": "Pet 0: Not found", "errorType": "KeyError"})
        return web.json_response({"id": event["id"], "name": event["name"]})

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_post("/fn/savepet", save_pet)
    return app


def test_integration_responses_of_an_export_answer_as_api_gateway(etcd: LocalEtcd, tmp_path: Path) -> None:
    seen: list[object] = []
    text = (FIXTURES / "responses-oas30.yaml").read_text()
    spec = tmp_path / "catalog.yaml"
    spec.write_text(
        text.replace("http://catalog.example.com/", "http://${stageVariables.catalog}/") + SELECTOR
    )
    with AioServer(_catalog_app(seen)) as backend, mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        url = f"http://127.0.0.1:{backend.port}/fn/{{function}}"
        out = m.cli("import", str(spec), "--api", "catalog", "--function-url", url, "--fail-on-warnings")
        assert "api/catalog created (3 routes, 0 warnings)" in out.stdout, out.stdout + out.stderr
        stage = STAGE.replace("api: petstore", "api: catalog").replace("petstore:", "catalog:")
        m.apply(stage.format(backend=backend.port))
        m.cli("deploy", "catalog", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)

        code, headers, body = http_request(sc.port, "GET", "/prod/items/404?q=red&x=1")
        assert (code, json.loads(body)) == (404, {"message": "backend said 404", "id": "404"}), body
        assert headers["x-reason"] == "backend said 404" and "x-backend" not in headers
        assert seen[-1] == "query=red"
        code, headers, body = http_request(sc.port, "GET", "/prod/items/503")
        assert (code, json.loads(body)) == (502, {"message": "the catalog is down"})
        code, headers, body = http_request(sc.port, "GET", "/prod/items/200")
        assert (code, json.loads(body)) == (200, {"detail": "backend said 200"})
        assert headers["access-control-allow-origin"] == "*" and "x-backend" not in headers

        json_ct = {"Content-Type": "application/json"}
        code, headers, body = http_request(sc.port, "POST", "/prod/pets/7", json_ct, b'{"name": "rex"}')
        assert (code, json.loads(body)) == (201, {"saved": {"id": "7", "name": "rex"}}), body
        assert seen[-1] == {"id": "7", "name": "rex", "stage": "prod"}
        code, _, body = http_request(sc.port, "POST", "/prod/pets/0", json_ct, b'{"name": "rex"}')
        assert (code, json.loads(body)) == (404, {"message": "Pet 0: Not found"}), body
        code, _, body = http_request(sc.port, "POST", "/prod/pets/1", json_ct, b'{"name": ""}')
        assert (code, json.loads(body)) == (400, {"errorMessage": "Invalid name", "errorType": "ValueError"})
        code, _, body = http_request(sc.port, "POST", "/prod/pets/1", {"Content-Type": "text/plain"}, b"x")
        assert code == 415, body  # WHEN_NO_TEMPLATES: no template for text/plain

        code, headers, body = http_request(sc.port, "GET", "/prod/status/404")
        assert code == 404 and json.loads(body) == {
            "message": "nothing at /status/{code}",
            "requestId": headers["x-meshgate-request-id"],
        }, body
        code, headers, body = http_request(sc.port, "GET", "/prod/status/201")
        assert (code, json.loads(body), headers["x-code"]) == (200, {"code": "201"}, "fine")


def _http_api_app(seen: list[dict[str, object]]) -> web.Application:
    async def authorize(request: web.Request) -> web.Response:
        event = await request.json()
        seen.append({"authorizer": event["type"]})
        allow = event["headers"].get("x-org") == "acme"
        return web.json_response(
            {
                "principalId": "acme",
                "policyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Action": "execute-api:Invoke", "Effect": "Allow" if allow else "Deny",
                         "Resource": "/".join(event["methodArn"].split("/")[:2]) + "/*"}  # the stage
                    ],
                },
            }
        )  # fmt: skip

    async def backend(request: web.Request) -> web.Response:
        seen.append({"path": request.path_qs, "headers": {k.lower(): v for k, v in request.headers.items()}})
        if request.path.endswith("/gone"):
            return web.json_response({"gone": True}, status=404)
        return web.json_response({"ok": True}, headers={"X-Backend": "legacy"})

    app = web.Application()
    app.router.add_post("/fn/orgauth", authorize)
    app.router.add_route("*", "/{tail:.*}", backend)
    return app


def test_an_http_api_export_imports_and_maps_parameters_as_api_gateway(
    etcd: LocalEtcd, tmp_path: Path
) -> None:
    seen: list[dict[str, object]] = []
    with AioServer(_http_api_app(seen)) as app, mesh(etcd.endpoint, tmp_path) as m:
        host = f"127.0.0.1:{app.port}"
        text = (FIXTURES / "httpapi-oas30.yaml").read_text()
        text = text.replace("legacy.example.internal", host).replace("svc.example.internal", host)
        spec = tmp_path / "shop-http.yaml"
        spec.write_text(text + SELECTOR)
        m.start_control()
        url = f"http://{host}/fn/{{function}}"
        out = m.cli("import", str(spec), "--api", "shop", "--function-url", url)
        assert "api/shop created (3 routes," in out.stdout, out.stdout + out.stderr
        m.apply(STAGE.replace("api: petstore", "api: shop").format(backend=app.port))
        m.cli("deploy", "shop", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)

        # overwrite:header / append:querystring / remove:header, behind a Lambda REQUEST authorizer
        headers = {"x-org": "acme", "x-debug": "1", "x-request-id": "client-said"}
        code, answer, body = http_request(sc.port, "GET", "/prod/legacy/a/b?q=1", headers)
        assert code == 200 and answer["x-served-by"] == "legacy", (answer, body)  # the response mapping
        got = seen[-1]
        assert seen[-2] == {"authorizer": "REQUEST"} and got["path"] == "/a/b?q=1&source=http-api", got
        sent = got["headers"]
        assert isinstance(sent, dict) and sent["x-tenant"] == "acme" and "x-debug" not in sent
        assert sent["x-request-id"] != "client-said"  # context.requestId, not the client's
        code, answer, body = http_request(sc.port, "GET", "/prod/legacy/gone", {"x-org": "acme"})
        assert (code, answer["x-gone"], json.loads(body)) == (
            410,
            "yes",
            {"gone": True},
        )  # overwrite:statuscode
        code, _, _ = http_request(sc.port, "GET", "/prod/legacy/a", {"x-org": "other"})
        assert code == 403

        # a path parameter renamed for the uri ({service} -> {op}), only mapped parameters go
        code, _, body = http_request(
            sc.port, "GET", "/prod/services/billing?version=7&other=x", {"x-user-id": "u1", "x-other": "o"}
        )
        assert code == 200, body
        got = seen[-1]
        assert got["path"] == "/billing?stage=7", got
        sent = got["headers"]
        assert isinstance(sent, dict) and sent["x-userid"] == "u1" and "x-other" not in sent
