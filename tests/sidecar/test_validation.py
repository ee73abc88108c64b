"""Request validation through the real listener: required parameters, content type, JSON Schema bodies,
hostile input (deep nesting, huge numbers, invalid UTF-8) — always a 4xx with what failed, never a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import pytest
from meshgate.sidecar.routing import CompileError, compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Backends, Gateway, bundle, http_route, read_request, snapshot

PET_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name", "type"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "type": {"enum": ["dog", "cat"]},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
DRAFT4_SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {"qty": {"type": "integer", "minimum": 1, "exclusiveMinimum": True}},
    "required": ["qty"],
}


def validated(gateway: Gateway, backends: Backends, counter: dict[str, int]) -> int:
    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, _, body = await read_request(r)
            counter["n"] = counter.get("n", 0) + 1
            w.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            await w.drain()

    port = backends.start(backend)
    pets = {**http_route("POST", "/pets", f"http://127.0.0.1:{port}/pets"), "requestModel": "Pet"}
    orders = {
        **http_route("POST", "/orders", f"http://127.0.0.1:{port}/orders"),
        "requestModel": "Order",
        "requiredParameters": ["method.request.querystring.store", "method.request.header.X-Client"],
    }
    b = bundle([pets, orders])
    models = [
        {"name": "Pet", "contentType": "application/json", "schemaJson": json.dumps(PET_SCHEMA)},
        {"name": "Order", "schemaJson": json.dumps(DRAFT4_SCHEMA)},
    ]
    for spec in (b["api"]["spec"], b["deployment"]["spec"]["apiSpec"]):
        spec["models"] = models
    snap = snapshot(b)
    gateway.start(snap)
    runtime = Runtime()
    gateway.on_stop.append(runtime.close)
    gateway.holder.table = compile_snapshot(snap, runtime)
    return gateway.port


def post(
    port: int, path: str, body: bytes, ctype: str = "application/json", headers: dict[str, str] | None = None
):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": ctype, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_valid_body_reaches_the_integration_unchanged(gateway: Gateway, backends: Backends) -> None:
    n: dict[str, int] = {}
    port = validated(gateway, backends, n)
    body = json.dumps({"name": "rex", "type": "dog", "age": 3}).encode()
    assert post(port, "/prod/pets", body) == (201, body)
    assert post(port, "/prod/pets", body, "application/json; charset=utf-8")[0] == 201
    assert n["n"] == 2


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"name": "", "type": "bird", "extra": 1}, {"/name", "/type", "/"}),
        ({"type": "dog"}, {"/"}),
        ({"name": "x", "type": "dog", "age": -1, "tags": [1, "a"]}, {"/age", "/tags/0"}),
    ],
)
def test_schema_failures_list_path_and_reason(
    gateway: Gateway, backends: Backends, body: Any, expect: set[str]
) -> None:
    n: dict[str, int] = {}
    port = validated(gateway, backends, n)
    status, data = post(port, "/prod/pets", json.dumps(body).encode())
    doc = json.loads(data)
    assert status == 400 and doc["reason"] == "request body does not match model Pet"
    assert {e["path"] for e in doc["errors"]} == expect and all(e["message"] for e in doc["errors"])
    assert n.get("n", 0) == 0  # the integration is never called


def test_content_type_is_checked(gateway: Gateway, backends: Backends) -> None:
    port = validated(gateway, backends, {})
    status, data = post(port, "/prod/pets", b"name=rex", "application/x-www-form-urlencoded")
    assert status == 415 and "expects application/json" in json.loads(data)["reason"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 100000 + b"]" * 100000, "nested"),
        (b'{"name": "x", "type": "dog", "age": ' + b"9" * 100000 + b"}", "not valid JSON"),
        (b'{"name": "\xff\xfe", "type": "dog"}', "UTF-8"),
        (b'{"name": "x", "type": "dog"', "not valid JSON"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "nested"),
    ],
)
def test_hostile_bodies_get_400(gateway: Gateway, backends: Backends, body: bytes, why: str) -> None:
    n: dict[str, int] = {}
    port = validated(gateway, backends, n)
    status, data = post(port, "/prod/pets", body)
    assert status == 400 and why in json.loads(data)["reason"] and n.get("n", 0) == 0
    assert post(port, "/prod/pets", b'{"name": "ok", "type": "cat"}')[0] == 201  # the sidecar is unaffected


def test_required_parameters_and_draft4_models(gateway: Gateway, backends: Backends) -> None:
    port = validated(gateway, backends, {})
    status, data = post(port, "/prod/orders", b'{"qty": 2}')
    doc = json.loads(data)
    assert (
        status == 400
        and doc["reason"] == "missing required request parameters: querystring store, header x-client"
    )
    ok = {"X-Client": "web"}
    assert post(port, "/prod/orders?store=7", b'{"qty": 2}', headers=ok)[0] == 201
    status, data = post(port, "/prod/orders?store=7", b'{"qty": 1}', headers=ok)  # draft-04 exclusiveMinimum
    assert status == 400 and json.loads(data)["errors"][0]["path"] == "/qty"


def test_invalid_model_cannot_compile(gateway: Gateway) -> None:
    b = bundle([{**http_route("POST", "/x", "http://b/x"), "requestModel": "Bad"}])
    b["deployment"]["spec"]["apiSpec"]["models"] = [{"name": "Bad", "schemaJson": '{"type": 12}'}]
    with pytest.raises(CompileError, match="invalid JSON Schema"):
        compile_snapshot(snapshot(b), Runtime())
