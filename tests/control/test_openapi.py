"""OpenAPI import/export: a petstore-like spec (29 operations, $refs, allOf/oneOf, a circular schema)
imports to a valid Api, warns with JSON pointers, and round-trips through export unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from meshgate.control.openapi import OpenApiError, export_openapi, import_openapi
from meshgate.control.validation import validate
from meshgate.sidecar.validation import BodyModel
from meshgate.v1 import resources_pb2

SPEC = yaml.safe_load((Path(__file__).parent / "fixtures" / "petstore-openapi.yaml").read_text())


def model(api: resources_pb2.Api, name: str) -> BodyModel:
    m = next(m for m in api.spec.models if m.name == name)
    return BodyModel.compile(m.name, m.content_type, m.schema_json)


def test_import_maps_operations_security_parameters_and_models() -> None:
    result = import_openapi(SPEC, "pets")
    api = result.api
    validate(resources_pb2.Resource(api=api))
    routes = {(r.method, r.path): r for r in api.spec.routes}
    assert len(routes) == 29
    create = routes[("POST", "/pets")]
    assert create.authorizer == "cognito" and list(create.authorization_scopes) == ["pets/write"]
    assert create.request_model == "NewPet" and create.operation_name == "createPet"
    assert create.integration.uri == "http://${stageVariables.backend}/api"  # the document-level default
    assert list(routes[("GET", "/pets")].required_parameters) == ["method.request.header.X-Tenant"]
    assert routes[("GET", "/store/inventory")].api_key_required
    assert routes[("ANY", "/files/{proxy+}")].integration.timeout_ms == 5000
    assert routes[("GET", "/health")].integration.type == "mock" and not routes[("GET", "/health")].authorizer
    search = routes[("GET", "/search")]
    assert list(search.required_parameters) == [
        "method.request.header.X-Client",
        "method.request.querystring.q",
    ]
    assert search.throttling.rate_limit == 5 and list(search.cache_key_parameters) == [
        "method.request.querystring.q"
    ]
    assert routes[("PATCH", "/pets/{petId}")].request_model == "patchPetRequest"
    assert api.spec.authorizers[0].jwks_uri == "https://idp.example.com/jwks"
    assert dict(api.spec.selector.match_labels) == {"app": "pets"} and list(api.spec.cors.allow_origins) == [
        "https://app.example.com"
    ]


def test_imported_models_validate_with_refs_allof_oneof_and_cycles() -> None:
    api = import_openapi(SPEC, "pets").api
    pet = model(api, "Pet")
    ok = {
        "id": 1,
        "name": "rex",
        "kind": {"bark": True},
        "category": {"name": "a", "parent": {"name": "b", "parent": {"name": "c"}}},
    }
    assert pet.check("application/json", json.dumps(ok).encode()) is None
    bad = pet.check(
        "application/json",
        json.dumps({**ok, "kind": {"bark": True, "meow": 1}, "category": {"parent": {}}}).encode(),
    )
    assert bad is not None and bad.status == 400 and bad.errors
    assert model(api, "NewPet").check("application/json", b'{"name": "x", "kind": {"meow": 2}}') is None


def test_warnings_carry_json_pointers() -> None:
    warnings = import_openapi(SPEC, "pets").warnings
    assert "#/components/securitySchemes/basic: security scheme type 'http' is not supported" in warnings
    assert any(w.startswith("#/paths/~1store~1orders/post/callbacks:") for w in warnings)
    assert any(
        w.startswith("#/paths/~1store~1orders~1{orderId}/get/parameters/0:") and "cookie" in w
        for w in warnings
    )
    assert len(warnings) == 3


def test_export_imports_back_to_the_same_api() -> None:
    first = import_openapi(SPEC, "pets").api
    exported = export_openapi("pets", first.spec, stage="prod", version="4")
    assert exported["openapi"] == "3.1.0" and exported["servers"] == [{"url": "/prod"}]
    text = yaml.safe_dump(exported, sort_keys=False)  # through YAML, as a user would save it
    again = import_openapi(yaml.safe_load(text), "pets")
    assert again.warnings == []
    assert again.api.spec == first.spec


def test_openapi_30_nullable_and_refusals() -> None:
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/x": {
                "post": {
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/X"}}}
                    },
                    "x-meshgate-integration": {"type": "mock"},
                }
            }
        },
        "components": {
            "schemas": {"X": {"type": "object", "properties": {"v": {"type": "string", "nullable": True}}}}
        },
    }
    api = import_openapi(doc, "x").api
    assert model(api, "X").check("application/json", b'{"v": null}') is None
    with pytest.raises(OpenApiError, match="only OpenAPI 3.0, 3.1 and Swagger 2.0"):
        import_openapi({"openapi": "2.5.0", "paths": {}}, "x")
    with pytest.raises(OpenApiError, match="no operations"):  # Swagger 2.0 is read (AWS exports)
        import_openapi({"swagger": "2.0"}, "x")
    with pytest.raises(OpenApiError, match="no operations"):
        import_openapi({"openapi": "3.1.0", "paths": {}}, "x")
