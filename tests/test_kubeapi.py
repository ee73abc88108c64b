"""The in-test API server (kubeapi.py) answers what the controller and kubectl rely on as a real one
does: CRD schema pruning, defaulting and validation (kubeschema.py), finalizers and
deletionTimestamp, watch bookmarks, and 410 Gone as an ERROR event or as the HTTP status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubeapi import SCHEMAS, KubeApi
from kubeschema import apply_defaults, prune, validate

APIS = "/apis/meshgate.io/v1/namespaces/shop/apis"


def api(name: str = "pets", **spec: Any) -> dict[str, Any]:
    routes = [{"method": "GET", "path": "/pets", "integration": {"type": "mock"}}]
    return {
        "apiVersion": "meshgate.io/v1",
        "kind": "Api",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"routes": routes, **spec},
    }


@pytest.fixture
async def kube() -> AsyncIterator[KubeApi]:
    server = KubeApi()
    await server.start()
    yield server
    await server.stop()


async def call(
    kube: KubeApi, method: str, path: str, body: Any = None, ctype: str = "application/json", **query: str
) -> tuple[int, Any, list[str]]:
    """status, JSON body, Warning headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            kube.url + path,
            params=query,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": ctype},
        ) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.getall("Warning", [])


# ------------------------------------------------------------------ schema


async def test_unknown_fields_are_pruned_with_a_warning_or_refused_under_strict(kube: KubeApi) -> None:
    doc = api(colour="red")
    doc["spec"]["routes"][0]["integration"]["colour"] = "blue"
    doc["metadata"]["colour"] = "green"
    code, body, _ = await call(kube, "POST", APIS, doc, fieldValidation="Strict")
    assert code == 400 and body["reason"] == "BadRequest", body
    assert body["message"] == (
        'Api in version "v1" cannot be handled as a Api: strict decoding error: '
        'unknown field "metadata.colour", unknown field "spec.colour", '
        'unknown field "spec.routes[0].integration.colour"'
    )
    assert kube.get("Api", "shop", "pets") is None
    code, body, warnings = await call(kube, "POST", APIS, doc)  # Warn: the default
    assert code == 201 and "colour" not in json.dumps(body), body
    assert warnings == [
        '299 - "unknown field \\"metadata.colour\\""',
        '299 - "unknown field \\"spec.colour\\""',
        '299 - "unknown field \\"spec.routes[0].integration.colour\\""',
    ]
    assert "colour" not in json.dumps(kube.get("Api", "shop", "pets"))
    # what x-kubernetes-preserve-unknown-fields covers is kept
    schema = SCHEMAS["meshgate.io/v1", "Api"]
    kept = {"spec": {"routes": [{"method": "GET", "path": "/x", "integration": {"type": "mock"}}]}}
    assert prune(kept, schema) == []


async def test_a_value_the_schema_refuses_is_422_naming_the_field(kube: KubeApi) -> None:
    doc = api(cors={"maxAgeSeconds": "long"})
    doc["spec"]["routes"][0]["method"] = 7
    doc["spec"]["routes"][0]["integration"]["timeoutMs"] = -1
    code, body, _ = await call(kube, "POST", APIS, doc)
    assert code == 422 and body["reason"] == "Invalid", body
    assert [(c["reason"], c["field"]) for c in body["details"]["causes"]] == [
        ("FieldValueTypeInvalid", "spec.routes[0].method"),
        ("FieldValueInvalid", "spec.routes[0].integration.timeoutMs"),
        ("FieldValueTypeInvalid", "spec.cors.maxAgeSeconds"),
    ]
    assert body["message"] == (
        'Api.meshgate.io "pets" is invalid: ['
        'spec.routes[0].method: Invalid value: "integer": spec.routes[0].method in body must be of type '
        'string: "integer", '
        "spec.routes[0].integration.timeoutMs: Invalid value: -1: spec.routes[0].integration.timeoutMs in "
        "body should be greater than or equal to 0, "
        'spec.cors.maxAgeSeconds: Invalid value: "string": spec.cors.maxAgeSeconds in body must be of type '
        'integer: "string"]'
    )
    assert kube.get("Api", "shop", "pets") is None
    bare = {"apiVersion": "meshgate.io/v1", "kind": "Api", "metadata": {"name": "x"}}
    code, body, _ = await call(kube, "POST", APIS, bare)
    assert (code, body["message"]) == (422, 'Api.meshgate.io "x" is invalid: spec: Required value')


async def test_status_writes_are_checked_against_the_status_schema(kube: KubeApi) -> None:
    kube.create(api())
    bad = {"status": {"conditions": [{"type": "Accepted", "status": "Maybe"}], "boundSidecars": "one"}}
    code, body, _ = await call(
        kube, "PATCH", f"{APIS}/pets/status", bad, ctype="application/merge-patch+json"
    )
    assert code == 422, body
    message = body["message"]
    assert (
        'status.conditions[0].status: Unsupported value: "Maybe": supported values: "True", "False", "Unknown"'
        in message
    )
    assert 'status.boundSidecars: Invalid value: "string"' in message


def test_defaults_are_set_where_the_parent_is_present() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "default": 1},
                    "cache": {"type": "object", "properties": {"ttl": {"type": "integer", "default": 300}}},
                    "routes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"method": {"type": "string", "default": "GET"}},
                        },
                    },
                },
            }
        },
    }
    obj: dict[str, Any] = {"spec": {"routes": [{}, {"method": "POST"}]}}
    apply_defaults(obj, schema)
    assert obj == {"spec": {"replicas": 1, "routes": [{"method": "GET"}, {"method": "POST"}]}}  # no cache
    assert validate(obj, schema) == []


# ------------------------------------------------------------------ finalizers and deletion


async def test_delete_with_finalizers_marks_the_object_and_the_last_removal_deletes_it(kube: KubeApi) -> None:
    doc = api()
    doc["metadata"]["finalizers"] = ["example.com/a", "example.com/b"]
    kube.create(doc)
    code, body, _ = await call(kube, "DELETE", f"{APIS}/pets")
    assert code == 200 and body["kind"] == "Api", body  # the object, not a Status: it is still there
    stamp = body["metadata"]["deletionTimestamp"]
    assert stamp and body["metadata"]["generation"] == 2
    # no finalizer may be added now, and a client cannot move or clear the timestamp
    code, body, _ = await call(
        kube,
        "PATCH",
        f"{APIS}/pets",
        {"metadata": {"finalizers": ["example.com/a", "example.com/b", "example.com/c"]}},
        ctype="application/merge-patch+json",
    )
    assert code == 422 and "no new finalizers can be added if the object is being deleted" in body["message"]
    patch = {"metadata": {"finalizers": ["example.com/b"], "deletionTimestamp": None}}
    code, body, _ = await call(kube, "PATCH", f"{APIS}/pets", patch, ctype="application/merge-patch+json")
    assert code == 200 and body["metadata"]["deletionTimestamp"] == stamp, body
    types = [t for _, k, _, t, _ in kube.log if k.kind == "Api"]
    assert types == ["ADDED", "MODIFIED", "MODIFIED"]
    code, body, _ = await call(
        kube, "PATCH", f"{APIS}/pets", {"metadata": {"finalizers": []}}, ctype="application/merge-patch+json"
    )
    assert code == 200 and kube.get("Api", "shop", "pets") is None
    assert [t for _, k, _, t, _ in kube.log if k.kind == "Api"][-1] == "DELETED"
    assert (await call(kube, "GET", f"{APIS}/pets"))[0] == 404


# ------------------------------------------------------------------ watch: bookmarks, 410


async def watch_lines(kube: KubeApi, query: dict[str, str], after: Any = None) -> list[dict[str, Any]]:
    """Open a watch and return its events until it ends: once it is registered `after()` runs and the
    watch is closed (None: the server ends it by itself)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(kube.url + APIS, params={"watch": "true", **query}) as resp:
            if resp.status != 200:
                return [{"httpStatus": resp.status, **await resp.json()}]
            if after is not None:
                async with asyncio.timeout(5):
                    while not kube.watchers:
                        await asyncio.sleep(0.01)
                after()
                kube.close_watches()
            return [json.loads(line) async for line in resp.content if line.strip()]


async def test_bookmarks_only_for_a_watch_that_asks(kube: KubeApi) -> None:
    rv = str(kube.rv)
    got = await watch_lines(kube, {"resourceVersion": rv, "allowWatchBookmarks": "true"}, kube.bookmark)
    assert [e["type"] for e in got] == ["BOOKMARK"] and got[0]["object"]["metadata"]["resourceVersion"] == rv
    assert await watch_lines(kube, {"resourceVersion": rv}, kube.bookmark) == []


async def test_a_compacted_resource_version_is_410_in_the_stream_or_as_the_status(kube: KubeApi) -> None:
    old = str(kube.rv)
    kube.create(api())
    kube.compact()
    [event] = await watch_lines(kube, {"resourceVersion": old})
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    kube.gone_as_status = True
    [answer] = await watch_lines(kube, {"resourceVersion": old})
    assert (answer["httpStatus"], answer["reason"], answer["code"]) == (410, "Expired", 410)
    code, body, _ = await call(kube, "GET", APIS, resourceVersion=old, resourceVersionMatch="Exact")
    assert (code, body["reason"]) == (410, "Expired")
    code, body, _ = await call(kube, "GET", APIS, resourceVersion=str(kube.rv), resourceVersionMatch="Exact")
    assert code == 200 and [o["metadata"]["name"] for o in body["items"]] == ["pets"]


async def test_openapi_v3_offers_server_side_field_validation(kube: KubeApi) -> None:
    code, index, _ = await call(kube, "GET", "/openapi/v3")
    url = index["paths"]["apis/meshgate.io/v1"]["serverRelativeURL"]
    assert code == 200 and url.startswith("/openapi/v3/apis/meshgate.io/v1?")
    code, doc, _ = await call(kube, "GET", url.split("?")[0])
    assert code == 200
    patch = doc["paths"]["/apis/meshgate.io/v1/namespaces/{namespace}/apis/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "meshgate.io",
        "version": "v1",
        "kind": "Api",
    }
    assert {"name": "fieldValidation", "in": "query"}.items() <= next(
        p for p in patch["parameters"] if p["name"] == "fieldValidation"
    ).items()
    assert "io.meshgate.v1.Api" in doc["components"]["schemas"]
