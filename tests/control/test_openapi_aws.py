"""AWS API Gateway exports import (issue 16, parts 2 and 5): OpenAPI 3.0 and Swagger 2.0 with
`x-amazon-apigateway-*` extensions become Apis that control accepts, with API Gateway's meaning:
mock/http/http_proxy/aws_proxy integrations, Lambda and Cognito authorizers, validators, gateway
responses, binary media types, ANY methods, stage variables, and every schema as a model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from meshgate.control.openapi import export_openapi, import_openapi
from meshgate.control.validation import validate
from meshgate.sidecar.validation import BodyModel
from meshgate.v1 import resources_pb2

FIXTURES = Path(__file__).parent / "fixtures" / "aws"
PETSTORE = yaml.safe_load((FIXTURES / "petstore-oas30.yaml").read_text())
ORDERS = yaml.safe_load((FIXTURES / "orders-swagger2.yaml").read_text())


def routes(api: resources_pb2.Api) -> dict[tuple[str, str], resources_pb2.Route]:
    return {(r.method, r.path): r for r in api.spec.routes}


def imported(doc: dict[str, Any], **kw: Any) -> tuple[resources_pb2.Api, list[str]]:
    result = import_openapi(copy.deepcopy(doc), "pets", "shop", **kw)
    validate(resources_pb2.Resource(api=result.api))  # control takes it as it is
    return result.api, result.warnings


def test_petstore_mock_root_page_and_cors_preflights() -> None:
    api, warnings = imported(PETSTORE)
    assert warnings == []
    assert api.spec.template_language == "vtl"  # API Gateway's templates are VTL
    root = routes(api)[("GET", "/")].integration
    assert root.type == "mock" and root.mock.status == 200
    assert dict(root.mock.headers) == {"Content-Type": "text/html"}
    assert root.mock.body.startswith("<html>") and "Welcome to your Pet Store API" in root.mock.body
    preflight = routes(api)[("OPTIONS", "/pets")].integration
    assert preflight.type == "mock" and preflight.mock.status == 200 and not preflight.mock.body
    assert dict(preflight.mock.headers) == {
        "Content-Type": "application/json",  # as API Gateway answers an empty mock
        "Access-Control-Allow-Methods": "POST,GET,OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type,X-Amz-Date,Authorization,X-Api-Key",
        "Access-Control-Allow-Origin": "*",
    }


def test_petstore_http_integrations_keep_mapping_and_response_parameters() -> None:
    api, _ = imported(PETSTORE)
    r = routes(api)
    one = r[("GET", "/pets/{petId}")].integration
    assert (one.type, one.uri, one.http_method) == (
        "http",
        "http://petstore.execute-api.com/petstore/pets/{petId}",
        "GET",
    )
    assert dict(one.request_parameters) == {"integration.request.path.petId": "method.request.path.petId"}
    # AWS's `http` is a non-proxy integration: its integration responses (here only the default)
    assert not one.proxy and one.HasField("proxy")
    assert [json_format.MessageToDict(x) for x in one.responses] == [
        {"status": 200, "responseParameters": {"method.response.header.Access-Control-Allow-Origin": "'*'"}}
    ]
    assert one.passthrough_behavior == "WHEN_NO_MATCH"
    listing = r[("GET", "/pets")]
    assert listing.integration.timeout_ms == 29000 and listing.operation_name == "listPets"
    assert listing.integration.request_parameters["integration.request.querystring.type"] == (
        "method.request.querystring.type"
    )
    # no x-amazon-apigateway-request-validator: API Gateway validates nothing
    assert not r[("POST", "/pets")].request_model and not listing.required_parameters


def test_every_schema_is_a_model_and_export_writes_them_back() -> None:
    api, _ = imported(PETSTORE)
    names = sorted(m.name for m in api.spec.models)
    # Pets, Pet, NewPetResponse are used only in responses, Empty nowhere: API Gateway keeps them all
    assert names == ["Empty", "NewPet", "NewPetResponse", "Pet", "PetType", "Pets"]
    pets = next(m for m in api.spec.models if m.name == "Pets")
    checker = BodyModel.compile(pets.name, pets.content_type, pets.schema_json)
    assert checker.check("application/json", b'[{"id": 1, "type": "dog"}]') is None
    assert checker.check("application/json", b'[{"id": "x"}]') is not None
    doc = export_openapi("pets", api.spec)
    assert sorted(doc["components"]["schemas"]) == names
    again = import_openapi(json.loads(json.dumps(doc)), "pets", "shop").api
    assert sorted(m.name for m in again.spec.models) == names


def test_swagger2_definitions_body_parameters_and_validators() -> None:
    api, _ = imported(ORDERS)
    r = routes(api)
    assert sorted(m.name for m in api.spec.models) == ["Error", "NewOrder", "Order", "Orders"]
    create = r[("POST", "/orders")]
    assert create.request_model == "NewOrder"  # `in: body` + validator "all"
    new_order = next(m for m in api.spec.models if m.name == "NewOrder")
    checker = BodyModel.compile(new_order.name, new_order.content_type, new_order.schema_json)
    assert checker.check("application/json", b'{"quantity": 2}') is not None
    # the document's default validator "params-only": required query parameters, no body model
    assert list(r[("GET", "/orders")].required_parameters) == ["method.request.querystring.status"]
    assert not api.spec.base_path  # basePath is the AWS stage (ignored, as API Gateway's import does)


def test_swagger2_lambda_proxy_and_authorizers() -> None:
    api, warnings = imported(ORDERS)
    r = routes(api)
    listing = r[("GET", "/orders")]
    assert listing.integration.type == "function"
    assert listing.integration.uri == "http://listorders.shop.svc.cluster.local/"
    assert listing.integration.timeout_ms == 10000 and listing.authorizer == "tokenAuth"
    create = r[("POST", "/orders")]
    assert create.integration.uri == "http://${stageVariables.createFn}.shop.svc.cluster.local/"
    assert create.integration.payload_format_version == "1.0"
    assert create.authorizer == "cognito" and create.api_key_required  # AWS lists each that applies
    auth = {a.name: a for a in api.spec.authorizers}
    token = auth["tokenAuth"]
    assert (token.type, token.uri, list(token.identity_sources), token.result_ttl_seconds) == (
        "token",
        "http://orders-authorizer.shop.svc.cluster.local/",
        ["method.request.header.Authorization"],
        120,
    )
    jwt = auth["cognito"]
    assert jwt.type == "jwt"
    assert jwt.issuer == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"
    assert jwt.jwks_uri == jwt.issuer + "/.well-known/jwks.json"
    assert any("identityValidationExpression" in w for w in warnings)


def test_function_url_template_is_an_import_option() -> None:
    api, _ = imported(ORDERS, function_url="http://lambda-shim.{namespace}:8080/fn/{function}")
    assert routes(api)[("GET", "/orders")].integration.uri == "http://lambda-shim.shop:8080/fn/listorders"
    assert api.spec.authorizers[0].uri == "http://lambda-shim.shop:8080/fn/orders-authorizer"


def test_service_integration_answers_501_with_a_warning() -> None:
    api, warnings = imported(ORDERS)
    archive = routes(api)[("GET", "/archive")].integration
    assert archive.type == "mock" and archive.mock.status == 501
    assert json.loads(archive.mock.body) == {"message": "Not implemented"}
    assert any(
        w.startswith("#/paths/~1archive/get/x-amazon-apigateway-integration: AWS service integration")
        for w in warnings
    )


def test_http_template_mapping_stage_variables_cache_keys_and_any() -> None:
    api, _ = imported(ORDERS)
    r = routes(api)
    one = r[("GET", "/orders/{orderId}")]
    assert one.integration.uri == "http://${stageVariables.ordersHost}/orders/{orderId}"
    assert one.integration.request_templates["application/json"] == """{"id": "$input.params('orderId')"}"""
    assert [json_format.MessageToDict(x) for x in one.integration.responses] == [
        {"status": 200, "responseTemplates": {"application/json": """{"order": $input.json('$')}"""}}
    ]
    assert one.integration.request_parameters["integration.request.header.X-Source"] == "'apigateway'"
    assert one.api_key_required and not one.cache_key_parameters  # the path is always in the key
    proxy = r[("ANY", "/proxy/{proxy+}")].integration
    assert proxy.type == "http" and not proxy.http_method and not proxy.request_templates
    assert not proxy.HasField("proxy") and not proxy.responses  # http_proxy: meshgate's proxy


def test_api_level_extensions() -> None:
    api, _ = imported(ORDERS)
    assert list(api.spec.binary_media_types) == ["image/png", "application/octet-stream"]
    gw = {g.type: g for g in api.spec.gateway_responses}
    assert gw["UNAUTHORIZED"].status == 401
    assert dict(gw["UNAUTHORIZED"].headers) == {"WWW-Authenticate": "Bearer"}
    assert gw["UNAUTHORIZED"].body_template.startswith('{"error": $context.error.messageString')
    assert gw["DEFAULT_5XX"].status == 0


def test_aws_only_gateway_responses_are_dropped_with_a_warning() -> None:
    """EXPIRED_TOKEN, WAF_FILTERED, a 1xx status: what meshgate never raises or cannot send is left
    out at import (control would refuse it at apply), each with its JSON pointer."""
    doc = copy.deepcopy(ORDERS)
    doc["x-amazon-apigateway-gateway-responses"] = {
        "EXPIRED_TOKEN": {"statusCode": "403"},
        "WAF_FILTERED": {"statusCode": "403"},
        "THROTTLED": {"statusCode": "100"},
    }
    api, warnings = imported(doc)
    assert [(g.type, g.status) for g in api.spec.gateway_responses] == [("THROTTLED", 0)]
    text = " ".join(warnings)
    assert "EXPIRED_TOKEN" in text and "WAF_FILTERED" in text and "THROTTLED/statusCode" in text
    validate(resources_pb2.Resource(api=api))


def test_mock_status_from_request_template_selects_the_response() -> None:
    doc: dict[str, Any] = {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "x-amazon-apigateway-cors": {"allowOrigins": ["https://app.example.com"], "maxAge": 600},
        "paths": {
            "/gone": {
                "get": {
                    "x-amazon-apigateway-integration": {
                        "type": "mock",
                        "requestTemplates": {"application/json": '{"statusCode": 410}'},
                        "responses": {
                            "default": {"statusCode": "200"},
                            "4\\d{2}": {
                                "statusCode": "410",
                                "responseTemplates": {"application/json": '{"message": "gone"}'},
                            },
                        },
                    }
                }
            }
        },
    }
    api, warnings = imported(doc)
    gone = routes(api)[("GET", "/gone")].integration.mock
    assert (gone.status, gone.body, dict(gone.headers)) == (
        410,
        '{"message": "gone"}',
        {"Content-Type": "application/json"},
    )
    assert list(api.spec.cors.allow_origins) == ["https://app.example.com"]
    assert api.spec.cors.max_age_seconds == 600 and warnings == []


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        (
            {"type": "request", "authorizerUri": "arn:aws:lambda:us-east-1:1:function:ReqAuth",
             "identitySource": "method.request.header.X-User, method.request.querystring.token",
             "authorizerResultTtlInSeconds": 0},
            {"type": "request", "uri": "http://reqauth.shop.svc.cluster.local/",
             "identitySources": ["method.request.header.X-User", "method.request.querystring.token"],
             "resultTtlSeconds": 0},
        ),
        (
            {"type": "jwt", "identitySource": "$request.header.Authorization",
             "jwtConfiguration": {"issuer": "https://idp.example.com", "audience": ["shop"]}},
            {"type": "jwt", "issuer": "https://idp.example.com", "audiences": ["shop"],
             "jwksUri": "https://idp.example.com/.well-known/jwks.json",
             "identitySources": ["method.request.header.Authorization"]},
        ),
    ],
)  # fmt: skip
def test_request_and_http_api_jwt_authorizers(scheme: dict[str, Any], expected: dict[str, Any]) -> None:
    doc: dict[str, Any] = {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "components": {
            "securitySchemes": {
                "auth": {"type": "apiKey", "name": "Authorization", "in": "header",
                         "x-amazon-apigateway-authorizer": scheme}
            }
        },
        "paths": {"/x": {"get": {"security": [{"auth": []}],
                                 "x-amazon-apigateway-integration": {"type": "mock"}}}},
    }  # fmt: skip
    api, _ = imported(doc)
    assert json_format.MessageToDict(api.spec.authorizers[0]) == {"name": "auth", **expected}
    assert routes(api)[("GET", "/x")].authorizer == "auth"


def test_cli_import_takes_a_function_url_template(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from meshgate.control.cli_admin import CliError, cmd_import

    args = argparse.Namespace(
        file=str(FIXTURES / "orders-swagger2.yaml"),
        api="orders",
        namespace="shop",
        fail_on_warnings=False,
        dry_run=False,
        show=True,
        function_url="http://fn-{function}.{namespace}:9000/",
    )
    assert cmd_import(args) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    uris = {r["path"] + " " + r["method"]: r["integration"].get("uri") for r in doc["spec"]["routes"]}
    assert uris["/orders GET"] == "http://fn-listorders.shop:9000/"
    args.function_url = "http://{fn}/"
    with pytest.raises(CliError, match="only {function} and {namespace}"):
        cmd_import(args)


RESPONSES = yaml.safe_load((FIXTURES / "responses-oas30.yaml").read_text())


def test_integration_responses_import_with_their_selection_patterns() -> None:
    api, warnings = imported(RESPONSES)
    assert warnings == []
    r = {k: json_format.MessageToDict(v.integration) for k, v in routes(api).items()}
    aws_http = RESPONSES["paths"]["/items/{id}"]["get"]["x-amazon-apigateway-integration"]
    assert r[("GET", "/items/{id}")] == {
        "type": "http",
        "uri": "http://catalog.example.com/status/{id}",
        "httpMethod": "GET",
        "requestParameters": aws_http["requestParameters"],
        "passthroughBehavior": "WHEN_NO_MATCH",
        "proxy": False,
        "responses": [
            {
                "selectionPattern": "4\\d{2}",
                "status": 404,
                "responseParameters": {"method.response.header.X-Reason": "integration.response.body.detail"},
                "responseTemplates": aws_http["responses"]["4\\d{2}"]["responseTemplates"],
            },
            {
                "selectionPattern": "5\\d{2}",
                "status": 502,
                "responseTemplates": {"application/json": '{"message": "the catalog is down"}'},
            },
            {"status": 200, "responseParameters": aws_http["responses"]["default"]["responseParameters"]},
        ],
    }
    aws_fn = RESPONSES["paths"]["/pets/{id}"]["post"]["x-amazon-apigateway-integration"]
    assert r[("POST", "/pets/{id}")] == {  # a Lambda custom integration: a function, not a proxy
        "type": "function",
        "uri": "http://savepet.shop.svc.cluster.local/",
        "passthroughBehavior": "WHEN_NO_TEMPLATES",
        "proxy": False,
        "requestTemplates": aws_fn["requestTemplates"],
        "responses": [
            {
                "selectionPattern": ".*Not found.*",
                "status": 404,
                "responseTemplates": {"application/json": """{"message": $input.json('$.errorMessage')}"""},
            },
            {"selectionPattern": "Invalid.*", "status": 400},
            {"status": 201, "responseTemplates": {"application/json": """{"saved": $input.json('$')}"""}},
        ],
    }
    aws_mock = RESPONSES["paths"]["/status/{code}"]["get"]["x-amazon-apigateway-integration"]
    assert r[("GET", "/status/{code}")] == {  # VTL in its templates: the mock runs them
        "type": "mock",
        "requestTemplates": aws_mock["requestTemplates"],
        "passthroughBehavior": "WHEN_NO_MATCH",
        "responses": [
            {
                "selectionPattern": "404",
                "status": 404,
                "responseTemplates": aws_mock["responses"]["404"]["responseTemplates"],
            },
            {
                "status": 200,
                "responseParameters": {"method.response.header.X-Code": "'fine'"},
                "responseTemplates": {"application/json": """{"code": "$input.params('code')"}"""},
            },
        ],
    }


def test_integration_responses_the_sidecar_cannot_run_are_left_out_with_a_warning() -> None:
    doc = copy.deepcopy(RESPONSES)
    x = doc["paths"]["/items/{id}"]["get"]["x-amazon-apigateway-integration"]
    x["responses"] = {
        "4(\\d": {"statusCode": "400"},  # not a regular expression
        "(a+)+": {"statusCode": "400"},  # backtracks without bound
        "5\\d{2}": {"statusCode": "abc"},
        "default": {
            "statusCode": "200",
            "responseParameters": {"method.response.header.X-Q": "method.request.querystring.q"},
            "contentHandling": "CONVERT_TO_TEXT",
        },
    }
    api, warnings = imported(doc)
    assert [
        json_format.MessageToDict(x) for x in routes(api)[("GET", "/items/{id}")].integration.responses
    ] == [{"status": 200}]
    base = "#/paths/~1items~1{id}/get/x-amazon-apigateway-integration/responses/"
    assert sorted(w.split(": ", 1)[0] for w in warnings) == sorted(
        [
            base + "4(\\d/selectionPattern",
            base + "(a+)+/selectionPattern",
            base + "5\\d{2}/statusCode",
            base + "default/responseParameters/method.response.header.X-Q",
            base + "default/contentHandling",
        ]
    )


HTTP_API = yaml.safe_load((FIXTURES / "httpapi-oas30.yaml").read_text())


def test_http_api_export_imports_with_mappings_cors_and_authorizers_control_accepts() -> None:
    api, warnings = imported(HTTP_API)
    r = {k: json_format.MessageToDict(v.integration) for k, v in routes(api).items()}
    assert r[("GET", "/orders/{id}")] == {
        "type": "function",
        "uri": "http://getorder.shop.svc.cluster.local/",
        "payloadFormatVersion": "2.0",
        "timeoutMs": 30000,
    }
    assert r[("ANY", "/legacy/{proxy+}")] == {  # HTTP API parameter mapping in REST's terms
        "type": "http",
        "uri": "http://legacy.example.internal/{proxy}",
        "requestParameters": {
            "integration.request.header.x-tenant": "method.request.header.x-org",
            "integration.request.querystring.source": "'http-api'",
            "integration.request.header.x-request-id": "context.requestId",
        },
        "removeRequestParameters": ["integration.request.header.x-debug"],
        "responses": [  # the HTTP API's response mapping, by status code; other answers as they came
            {
                "selectionPattern": "404",
                "status": 410,
                "responseParameters": {"method.response.header.x-gone": "'yes'"},
            },
            {
                "selectionPattern": "200",
                "responseParameters": {
                    "method.response.header.x-served-by": "integration.response.header.x-backend"
                },
            },
            {},
        ],
    }
    assert r[("GET", "/services/{service}")] == {  # a path parameter renamed for the uri
        "type": "http",
        "uri": "http://svc.example.internal/{op}",
        "httpMethod": "GET",
        "proxy": False,
        "requestParameters": {
            "integration.request.querystring.stage": "method.request.querystring.version",
            "integration.request.header.x-userid": "method.request.header.x-user-id",
            "integration.request.path.op": "method.request.path.service",
            "integration.request.header.x-values": "method.request.header.x-value",
        },
        "responses": [{"status": 200}],
    }
    assert json_format.MessageToDict(api.spec.cors) == {
        "allowOrigins": ["https://shop.example.com", "http://localhost:3000"],
        "allowMethods": ["GET", "POST", "*"],
        "allowHeaders": ["authorization", "content-type"],
        "exposeHeaders": ["x-request-id"],
        "allowCredentials": True,
        "maxAgeSeconds": 86400,
    }
    auth = {a.name: json_format.MessageToDict(a) for a in api.spec.authorizers}
    assert auth["lambda"] == {
        "name": "lambda",
        "type": "request",
        "uri": "http://orgauth.shop.svc.cluster.local/",
        "identitySources": ["method.request.header.x-org"],
        "resultTtlSeconds": 3600,
    }
    assert list(routes(api)[("GET", "/orders/{id}")].authorization_scopes) == ["orders.read"]
    base = "#/paths/~1legacy~1{proxy+}/x-amazon-apigateway-any-method/x-amazon-apigateway-integration/"
    where = {w.split(": ", 1)[0] for w in warnings}
    assert {
        base + "requestParameters/append:querystring.source",
        base + "requestParameters/overwrite:path",
        base + "responseParameters/200/remove:header.server",
        "#/paths/~1services~1{service}/get/x-amazon-apigateway-integration/requestParameters/"
        "integration.request.header.x-item",
        "#/x-amazon-apigateway-cors/allowOrigins",
        "#/x-amazon-apigateway-cors/maxAge",
        "#/components/securitySchemes/lambda/x-amazon-apigateway-authorizer/identitySource",
    } <= where, warnings


def test_model_urls_become_component_refs_and_http_api_authorizer_options_are_warned() -> None:
    doc = copy.deepcopy(HTTP_API)
    doc["components"]["schemas"] = {
        "Item": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}},
        "Order": {
            "type": "object",
            "properties": {"item": {"$ref": "https://apigateway.amazonaws.com/restapis/abc123/models/Item"}},
        },
    }
    doc["components"]["securitySchemes"]["lambda"]["x-amazon-apigateway-authorizer"][
        "enableSimpleResponses"
    ] = True
    api, warnings = imported(doc)
    order = next(m for m in api.spec.models if m.name == "Order")
    assert json.loads(order.schema_json) == {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}},
        "$defs": {"Item": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}},
    }
    checker = BodyModel.compile(order.name, order.content_type, order.schema_json)
    assert checker.check("application/json", b'{"item": {}}') is not None  # Item's `required` applies
    base = "#/components/securitySchemes/lambda/x-amazon-apigateway-authorizer/"
    where = {w.split(": ", 1)[0] for w in warnings}
    assert {base + "enableSimpleResponses", base + "authorizerPayloadFormatVersion"} <= where


def test_an_http_api_default_route_serves_the_root_and_every_path_below() -> None:
    doc = copy.deepcopy(HTTP_API)
    fallback = copy.deepcopy(doc["paths"]["/orders/{id}"]["get"])
    fallback.pop("parameters")
    doc["paths"]["$default"] = {"x-amazon-apigateway-any-method": fallback}
    api, warnings = imported(doc)
    r = routes(api)
    assert r[("ANY", "/")].integration == r[("ANY", "/{proxy+}")].integration
    assert r[("ANY", "/{proxy+}")].integration.uri == "http://getorder.shop.svc.cluster.local/"
    assert (
        "#/paths/$default/x-amazon-apigateway-any-method: the $default route is served as / and /{proxy+}"
        in warnings
    )


def test_shared_http_api_integrations_and_iam_routes() -> None:
    shared = {
        "type": "aws_proxy",
        "httpMethod": "POST",
        "uri": "arn:aws:apigateway:us-east-2:lambda:path/2015-03-31/functions/"
        "arn:aws:lambda:us-east-2:123456789012:function:my-function/invocations",
        "payloadFormatVersion": "1.0",
    }
    ref = {"$ref": "#/components/x-amazon-apigateway-integrations/integration1"}
    doc: dict[str, Any] = {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/": {"get": {"x-amazon-apigateway-integration": ref}},
            "/pets": {
                "get": {"x-amazon-apigateway-integration": ref, "x-amazon-apigateway-auth": {"type": "AWS_IAM"}}
            },
        },
        "components": {
            "x-amazon-apigateway-integrations": {"integration1": shared},
            "securitySchemes": {
                "sigv4": {"type": "apiKey", "name": "Authorization", "in": "header",
                          "x-amazon-apigateway-authtype": "awsSigv4"}
            },
        },
    }  # fmt: skip
    api, warnings = imported(doc)
    expected = {
        "type": "function",
        "uri": "http://my-function.shop.svc.cluster.local/",
        "payloadFormatVersion": "1.0",
    }
    assert [json_format.MessageToDict(r.integration) for r in api.spec.routes] == [expected, expected]
    assert warnings == [
        "#/components/securitySchemes/sigv4: AWS SigV4 (IAM) is not checked: routes using it are open",
        "#/paths/~1pets/get/x-amazon-apigateway-auth: AWS_IAM (SigV4) is not checked: the route is open",
    ]


def test_a_source_ip_resource_policy_becomes_the_apis_and_exports_back() -> None:
    from meshgate.control.openapi_aws_export import export_aws

    doc = copy.deepcopy(PETSTORE)
    invoke = {"Principal": "*", "Action": "execute-api:Invoke"}
    doc["x-amazon-apigateway-policy"] = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", **invoke, "Resource": "execute-api:/*"},
            {"Effect": "Deny", **invoke, "Resource": "arn:aws:execute-api:us-east-1:123456789012:abc/*",
             "Condition": {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.0.2.7"]}}},
            {"Effect": "Deny", **invoke, "Resource": "execute-api:/*",
             "Condition": {"IpAddress": {"aws:SourceIp": "10.9.0.0/16"}}},
            {"Effect": "Deny", **invoke, "Resource": "execute-api:/*",
             "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-1"}}},
        ],
    }  # fmt: skip
    api, warnings = imported(doc)
    assert json_format.MessageToDict(api.spec.resource_policy) == {
        "allowCidrs": ["10.0.0.0/8", "192.0.2.7/32"],
        "denyCidrs": ["10.9.0.0/16"],
    }
    assert warnings == [
        "#/x-amazon-apigateway-policy/Statement/3: only whole-API aws:SourceIp conditions become the "
        "resource policy: not enforced"
    ]
    exported = export_aws("pets", api.spec, namespace="shop")
    assert "resourcePolicy" not in exported.get("x-meshgate-api", {})
    again, _ = imported(exported)
    assert again.spec.resource_policy == api.spec.resource_policy
