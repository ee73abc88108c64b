"""Transformations through the real listener: request and response mapping templates (Jinja2 sandbox),
passthrough behaviours, header/query removal and response header mapping, and hostile templates."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import pytest
from meshgate.sidecar.routing import CompileError, compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.templates import BodyTemplate, TemplateLimit

from .conftest import Backends, Gateway, bundle, http_route, read_request, snapshot


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        line, headers, body = await read_request(r)
        doc = json.dumps(
            {
                "line": line.decode(),
                "headers": {k.decode(): v.decode() for k, v in headers.items()},
                "body": body.decode(),
            }
        ).encode()
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Internal: secret\r\nX-Version: 7\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(doc), doc)
        )
        await w.drain()


def start(gateway: Gateway, backend: int, **integration: Any) -> None:
    route = http_route("POST", "/pets/{id}", f"http://127.0.0.1:{backend}/pets/{{id}}", **integration)
    snap = snapshot(bundle([route], variables={"env": "prod-eu"}))
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)


def post(
    port: int, path: str, body: bytes, ctype: str = "application/json", headers: dict[str, str] | None = None
):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": ctype, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


REQUEST_TEMPLATE = """{
  "petName": {{ input.json('$.pet.name') }},
  "firstTag": {{ input.json('$.pet.tags[0]') }},
  "id": "{{ input.params('id') }}",
  "lang": "{{ input.params('lang') }}",
  "stage": "{{ context.stage }}",
  "env": "{{ stageVariables.env }}",
  "escaped": "{{ util.escapeJavaScript(input.path('$.note')) }}",
  "b64": "{{ util.base64Encode('hi') }}"
}"""


def test_request_template_rewrites_the_body(gateway: Gateway, backends: Backends) -> None:
    start(gateway, backends.start(echo), requestTemplates={"application/json": REQUEST_TEMPLATE})
    body = json.dumps({"pet": {"name": "rex", "tags": ["good", "dog"]}, "note": 'say "hi"'}).encode()
    status, _, data = post(gateway.port, "/prod/pets/7?lang=en", body)
    seen = json.loads(data)
    sent = json.loads(seen["body"])
    assert status == 200 and sent == {
        "petName": "rex",
        "firstTag": "good",
        "id": "7",
        "lang": "en",
        "stage": "prod",
        "env": "prod-eu",
        "escaped": 'say "hi"',
        "b64": "aGk=",
    }
    assert seen["headers"]["content-length"] == str(len(seen["body"]))


def test_passthrough_behaviours(gateway: Gateway, backends: Backends) -> None:
    port_b = backends.start(echo)
    start(gateway, port_b, requestTemplates={"application/json": '{"wrapped": {{ input.body }}}'})
    assert (
        json.loads(post(gateway.port, "/prod/pets/1", b"plain", "text/plain")[2])["body"] == "plain"
    )  # WHEN_NO_MATCH
    start(gateway, port_b, requestTemplates={"application/json": "{}"}, passthroughBehavior="NEVER")
    status, _, data = post(gateway.port, "/prod/pets/1", b"plain", "text/plain")
    assert status == 415 and "no mapping template" in json.loads(data)["reason"]
    assert post(gateway.port, "/prod/pets/1", b'{"a": 1}')[0] == 200


def test_parameter_removal_and_response_header_mapping(gateway: Gateway, backends: Backends) -> None:
    start(
        gateway,
        backends.start(echo),
        removeRequestParameters=[
            "integration.request.header.cookie",
            "integration.request.querystring.debug",
        ],
        responseParameters={
            "method.response.header.X-Api-Version": "integration.response.header.X-Version",
            "method.response.header.X-Served-By": "'meshgate'",
            "method.response.header.X-Request": "context.requestId",
        },
        removeResponseHeaders=["X-Internal", "X-Version"],
    )
    status, headers, data = post(
        gateway.port, "/prod/pets/1?debug=1&keep=2", b"{}", headers={"Cookie": "s=1", "X-Keep": "y"}
    )
    seen = json.loads(data)
    assert status == 200 and "cookie" not in seen["headers"] and seen["headers"]["x-keep"] == "y"
    assert seen["line"] == "POST /pets/1?keep=2 HTTP/1.1"
    assert headers["x-api-version"] == "7" and headers["x-served-by"] == "meshgate"
    assert headers["x-request"] == headers["x-meshgate-request-id"]
    assert "x-internal" not in headers and "x-version" not in headers


def test_response_template(gateway: Gateway, backends: Backends) -> None:
    start(
        gateway,
        backends.start(echo),
        responseTemplates={
            "application/json": '{"requestLine": {{ input.json(\'$.line\') }}, "id": "{{ context.requestId }}"}'
        },
    )
    status, headers, data = post(gateway.port, "/prod/pets/3", b"{}")
    assert status == 200 and json.loads(data) == {
        "requestLine": "POST /pets/3 HTTP/1.1",
        "id": headers["x-meshgate-request-id"],
    }
    assert headers["content-length"] == str(len(data))


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
        ("{{ 'x' * 1000000000 }}", "would build"),
        ("{% for i in range(100000) %}{{ 'yyyyyyyyyyyyyyyyyyyyyyyy' }}{% endfor %}", "output larger"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed"),
        ("{{ input.__class__.__mro__ }}", "template failed"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
)
def test_hostile_templates_are_bounded(gateway: Gateway, backends: Backends, template: str, why: str) -> None:
    start(gateway, backends.start(echo), requestTemplates={"application/json": template})
    status, _, data = post(gateway.port, "/prod/pets/1", b"{}")
    assert status == 500 and why in json.loads(data)["reason"], data
    start(gateway, backends.start(echo))
    assert post(gateway.port, "/prod/pets/1", b"{}")[0] == 200  # the sidecar is unaffected


def test_sandbox_blocks_attribute_escapes() -> None:
    t = BodyTemplate.compile("application/json", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateLimit):
        t.render(b"", {}, {}, {})


def test_bad_template_or_behaviour_cannot_compile() -> None:
    for integ in (
        {"requestTemplates": {"application/json": "{% for %}"}},
        {"passthroughBehavior": "SOMETIMES"},
    ):
        with pytest.raises(CompileError):
            compile_snapshot(snapshot(bundle([http_route("POST", "/x", "http://b/x", **integ)])), Runtime())


def test_binary_media_types_pass_through_untouched(gateway: Gateway, backends: Backends) -> None:
    port_b = backends.start(echo)
    route = http_route(
        "POST",
        "/pets/{id}",
        f"http://127.0.0.1:{port_b}/pets/{{id}}",
        requestTemplates={"image/png": "{{ 'templated' }}"},
        passthroughBehavior="NEVER",
    )
    b = bundle([route])
    b["deployment"]["spec"]["apiSpec"]["binaryMediaTypes"] = ["image/*"]
    snap = snapshot(b)
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)
    status, _, data = post(gateway.port, "/prod/pets/1", b"PNGDATA", "image/png")
    assert status == 200 and json.loads(data)["body"] == "PNGDATA"
