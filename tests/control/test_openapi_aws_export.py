"""`meshgate export --format aws` (issue 16, part 4): an Api as API Gateway's export format, with the
x-amazon-apigateway-* extensions, such that import -> export aws -> import is a fixed point for AWS
exports (the fixtures: PetStore-shaped, Swagger 2.0 with authorizers and validators, integration
responses) and the document says everything in AWS's terms where AWS has them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from meshgate.control.openapi import import_openapi
from meshgate.control.openapi_aws_export import export_aws
from meshgate.control.validation import validate
from meshgate.v1 import resources_pb2

FIXTURES = Path(__file__).parent / "fixtures" / "aws"
AWS_FIXTURES = sorted(FIXTURES.glob("*.yaml"))
CORS = {"allowOrigins": ["https://app.example.com"], "allowMethods": ["GET", "POST"], "maxAge": 600}


def _import(doc: dict[str, Any]) -> resources_pb2.Api:
    result = import_openapi(json.loads(json.dumps(doc)), "shop", "shop")
    validate(resources_pb2.Resource(api=result.api))
    return result.api


def _round_trip(doc: dict[str, Any]) -> tuple[resources_pb2.Api, dict[str, Any], resources_pb2.Api]:
    first = _import(doc)
    exported = export_aws("shop", first.spec, namespace="shop")
    return first, exported, _import(exported)


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p, m): op for p, item in doc["paths"].items() for m, op in item.items() if isinstance(op, dict)}


@pytest.mark.parametrize("fixture", AWS_FIXTURES, ids=[f.name for f in AWS_FIXTURES])
def test_import_export_aws_import_is_a_fixed_point(fixture: Path) -> None:
    doc = yaml.safe_load(fixture.read_text())
    doc["x-amazon-apigateway-cors"] = CORS
    first, exported, again = _round_trip(doc)
    assert json_format.MessageToDict(again.spec) == json_format.MessageToDict(first.spec)
    # and once more: the export of the re-import is the same document
    assert export_aws("shop", again.spec, namespace="shop") == exported
    # every route that had an AWS integration has one again, in AWS's terms (no meshgate fallback)
    before, after = _operations(json.loads(json.dumps(doc))), _operations(exported)
    for (path, method), op in before.items():
        if "x-amazon-apigateway-integration" in op:
            assert "x-amazon-apigateway-integration" in after[(path, method)], (path, method)
            assert "x-meshgate-integration" not in after[(path, method)]
    assert exported["x-amazon-apigateway-cors"] == CORS


def test_the_orders_export_carries_every_extension_back() -> None:
    doc = yaml.safe_load((FIXTURES / "orders-swagger2.yaml").read_text())
    _, exported, _ = _round_trip(doc)
    assert exported["openapi"] == "3.0.1"
    assert exported["x-amazon-apigateway-binary-media-types"] == ["image/png", "application/octet-stream"]
    assert exported["x-amazon-apigateway-api-key-source"] == "HEADER"
    assert exported["x-amazon-apigateway-gateway-responses"]["UNAUTHORIZED"] == {
        "statusCode": "401",
        "responseParameters": {"gatewayresponse.header.WWW-Authenticate": "'Bearer'"},
        "responseTemplates": doc["x-amazon-apigateway-gateway-responses"]["UNAUTHORIZED"][
            "responseTemplates"
        ],
    }
    schemes = exported["components"]["securitySchemes"]
    assert schemes["tokenAuth"] == {
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "x-amazon-apigateway-authtype": "custom",
        "x-amazon-apigateway-authorizer": {
            "type": "token",
            "authorizerUri": "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
            "arn:aws:lambda:us-east-1:000000000000:function:orders-authorizer/invocations",
            "identitySource": "method.request.header.Authorization",
            "authorizerResultTtlInSeconds": 120,
        },
    }
    assert schemes["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    ops = _operations(exported)
    assert ops[("/orders", "get")]["x-amazon-apigateway-request-validator"] == "params-only"
    assert ops[("/orders", "post")]["x-amazon-apigateway-request-validator"] == "body-only"
    assert exported["x-amazon-apigateway-request-validators"] == {
        "body-only": {"validateRequestBody": True, "validateRequestParameters": False},
        "params-only": {"validateRequestBody": False, "validateRequestParameters": True},
    }
    assert ops[("/orders", "post")]["security"] == [{"cognito": []}, {"api_key": []}]
    listing = ops[("/orders", "get")]["x-amazon-apigateway-integration"]
    assert listing == {
        "type": "aws_proxy",
        "httpMethod": "POST",
        "uri": "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
        "arn:aws:lambda:us-east-1:000000000000:function:listorders/invocations",
        "passthroughBehavior": "when_no_match",
        "timeoutInMillis": 10000,
    }
    one = ops[("/orders/{orderId}", "get")]["x-amazon-apigateway-integration"]
    assert one["type"] == "http" and one["responses"] == {
        "default": {
            "statusCode": "200",
            "responseTemplates": {"application/json": """{"order": $input.json('$')}"""},
        }
    }
    assert "x-amazon-apigateway-any-method" in exported["paths"]["/proxy/{proxy+}"]


def test_what_aws_cannot_say_travels_in_meshgate_extensions() -> None:
    doc = yaml.safe_load((FIXTURES / "petstore-oas30.yaml").read_text())
    api = _import(doc)
    spec = copy.deepcopy(api.spec)
    spec.routes[0].integration.CopyFrom(
        resources_pb2.Integration(type="grpc", uri="grpc://orders.shop.svc:9090", timeout_ms=5000)
    )
    spec.routes[1].throttling.rate_limit = 5
    spec.selector.match_labels["app"] = "pets"
    exported = export_aws("shop", spec, namespace="shop")
    root = exported["paths"]["/"]["get"]
    assert "x-amazon-apigateway-integration" not in root
    assert root["x-meshgate-integration"] == {
        "type": "grpc",
        "uri": "grpc://orders.shop.svc:9090",
        "timeoutMs": 5000,
    }
    assert exported["paths"]["/pets"]["get"]["x-meshgate-route"] == {"throttling": {"rateLimit": 5.0}}
    assert exported["x-meshgate-api"] == {"selector": {"matchLabels": {"app": "pets"}}}
    again = _import(exported)
    assert json_format.MessageToDict(again.spec) == json_format.MessageToDict(spec)
