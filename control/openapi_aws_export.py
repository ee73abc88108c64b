"""Api -> an AWS API Gateway export: `meshgate export --format aws`. OpenAPI 3.0 with the
`x-amazon-apigateway-*` extensions API Gateway writes (integrations with their responses,
authorizers, request validators, gateway responses, binary media types, the API-key source, CORS),
so that the document imports into API Gateway, and back into meshgate as the same Api. Each
integration and authorizer is checked by importing it back (control/openapi_aws.py); what AWS's
format cannot carry travels in the `x-meshgate-*` extensions of control/openapi.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import json_format
from meshgate.control import openapi_aws as aws
from meshgate.v1 import resources_pb2

REGION = "us-east-1"  # what the Lambda ARNs say; meshgate's functions live in the Api's namespace
ACCOUNT = "000000000000"
DRAFT_04 = "http://json-schema.org/draft-04/schema#"
VALIDATORS = {
    "all": {"validateRequestBody": True, "validateRequestParameters": True},
    "params-only": {"validateRequestBody": False, "validateRequestParameters": True},
    "body-only": {"validateRequestBody": True, "validateRequestParameters": False},
}
CORS_NAMES = {
    "allowOrigins": "allowOrigins",
    "allowMethods": "allowMethods",
    "allowHeaders": "allowHeaders",
    "exposeHeaders": "exposeHeaders",
    "allowCredentials": "allowCredentials",
    "maxAgeSeconds": "maxAge",
}
ROUTE_AWS_FIELDS = frozenset(
    {
        "method",
        "path",
        "integration",
        "authorizer",
        "apiKeyRequired",
        "requestModel",
        "cacheKeyParameters",
        "operationName",
        "authorizationScopes",
        "requiredParameters",
    }
)


def _lambda_arn(function: str) -> str:
    return (
        f"arn:aws:apigateway:{REGION}:lambda:path/2015-03-31/functions/"
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}/invocations"
    )


def _function_of(uri: str, function_url: str, namespace: str) -> str | None:
    """The function name `function_url` made `uri` from (the inverse of the import's template)."""
    parts = re.split(r"(\{function\}|\{namespace\})", function_url)
    pattern = "".join(
        r"(?P<function>\$\{stageVariables\.\w+\}|[a-z0-9-]+)"
        if p == "{function}"
        else re.escape(namespace)
        if p == "{namespace}"
        else re.escape(p)
        for p in parts
    )
    m = re.fullmatch(pattern, uri)
    return m.group("function") if m and "{function}" in function_url else None


def _responses_aws(responses: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in responses:
        key = r.get("selectionPattern") or "default"
        if key in out:
            continue
        item: dict[str, Any] = {"statusCode": str(r.get("status", 200))}
        for name in ("responseParameters", "responseTemplates"):
            if r.get(name):
                item[name] = dict(r[name])
        out[key] = item
    return out


def _static_mock(integ: dict[str, Any]) -> dict[str, Any]:
    mock = integ.get("mock") or {}
    status = int(mock.get("status") or 200)
    headers = mock.get("headers") or {}
    resp: dict[str, Any] = {"statusCode": str(status)}
    if headers:
        resp["responseParameters"] = {f"method.response.header.{k}": f"'{v}'" for k, v in headers.items()}
    if mock.get("body"):
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
        resp["responseTemplates"] = {ctype.split(";", 1)[0].strip(): mock["body"]}
    return {
        "type": "mock",
        "requestTemplates": {"application/json": json.dumps({"statusCode": status})},
        "passthroughBehavior": "when_no_match",
        "responses": {"default": resp},
    }


def integration_aws(
    integ: dict[str, Any], cache_keys: list[str], function_url: str, namespace: str
) -> dict[str, Any] | None:
    """The x-amazon-apigateway-integration of a meshgate integration (None: AWS has no such kind)."""
    kind = integ.get("type")
    if kind == "mock" and not (integ.get("requestTemplates") or integ.get("responses")):
        return _static_mock(integ)
    out: dict[str, Any]
    if kind == "mock":
        out = {"type": "mock"}
    elif kind == "http":
        proxy = integ.get("proxy", True)
        out = {"type": "http_proxy" if proxy else "http", "httpMethod": integ.get("httpMethod") or "ANY"}
        out["uri"] = integ.get("uri", "")
    elif kind == "function":
        function = _function_of(integ.get("uri", ""), function_url, namespace)
        if function is None:
            return None
        proxy = integ.get("proxy", True)
        out = {"type": "aws_proxy" if proxy else "aws", "httpMethod": "POST", "uri": _lambda_arn(function)}
        if integ.get("payloadFormatVersion"):
            out["payloadFormatVersion"] = integ["payloadFormatVersion"]
    else:
        return None
    for ours, theirs in (
        ("requestParameters", "requestParameters"),
        ("requestTemplates", "requestTemplates"),
    ):
        if integ.get(ours):
            out[theirs] = dict(integ[ours])
    for item in integ.get("removeRequestParameters", []):  # HTTP APIs' form: remove:header.NAME
        where, _, name = item[len("integration.request.") :].partition(".")
        out.setdefault("requestParameters", {})[f"remove:{where}.{name}"] = "''"
    if integ.get("passthroughBehavior"):
        out["passthroughBehavior"] = str(integ["passthroughBehavior"]).lower()
    if integ.get("timeoutMs"):
        out["timeoutInMillis"] = int(integ["timeoutMs"])
    if cache_keys:
        out["cacheKeyParameters"] = list(cache_keys)
    if integ.get("responses") and out["type"] == "http_proxy":  # HTTP APIs' form, by status code
        out["responseParameters"] = _http_api_mapping(integ["responses"])
    elif integ.get("responses"):
        out["responses"] = _responses_aws(integ["responses"])
    return out


def _http_api_mapping(responses: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in responses:
        if not r.get("selectionPattern"):
            continue  # the default: as it came (what the import adds back)
        mapping: dict[str, str] = {}
        if r.get("status"):
            mapping["overwrite:statuscode"] = str(r["status"])
        for key, value in (r.get("responseParameters") or {}).items():
            name = key[len("method.response.header.") :]
            text = str(value)
            if text.startswith("integration.response."):
                text = "$" + text[len("integration.") :]
            elif text.startswith("context."):
                text = "$" + text
            elif len(text) >= 2 and text[0] == text[-1] == "'":
                text = text[1:-1]
            mapping[f"overwrite:header.{name}"] = text
        out[r["selectionPattern"]] = mapping
    return out


def _imports_back(x: dict[str, Any], integ: dict[str, Any], cache: list[str], url: str, ns: str) -> bool:
    warnings: list[str] = []
    again, keys = aws.integration(x, "#", lambda w, m: warnings.append(m), url, ns)
    return (
        not warnings
        and again == integ
        and keys == [k for k in cache if not k.startswith("method.request.path.")]
    )


def authorizer_aws(a: dict[str, Any], function_url: str, namespace: str) -> dict[str, Any] | None:
    """The securityScheme of an authorizer in AWS's format, or None when AWS's cannot say it."""
    kind = a.get("type")
    sources = list(a.get("identitySources") or [])
    scheme: dict[str, Any]
    if kind in ("token", "request"):
        function = _function_of(a.get("uri", ""), function_url, namespace)
        if function is None:
            return None
        x: dict[str, Any] = {"type": kind, "authorizerUri": _lambda_arn(function)}
        if sources:
            x["identitySource"] = ", ".join(sources)
        if "resultTtlSeconds" in a:
            x["authorizerResultTtlInSeconds"] = int(a["resultTtlSeconds"])
        header = next(
            (s.rsplit(".", 1)[1] for s in sources if s.startswith("method.request.header.")), "Unused"
        )
        scheme = {"type": "apiKey", "name": header, "in": "header", "x-amazon-apigateway-authtype": "custom"}
    elif kind == "jwt":
        jwt: dict[str, Any] = {"issuer": a.get("issuer", "")}
        if a.get("audiences"):
            jwt["audience"] = list(a["audiences"])
        x = {"type": "jwt", "jwtConfiguration": jwt}
        if sources:
            x["identitySource"] = ", ".join(sources)
        scheme = {"type": "oauth2", "flows": {}, "x-amazon-apigateway-authtype": "jwt"}
    else:
        return None
    again = aws.authorizer(a["name"], x, "#", lambda w, m: None, function_url, namespace)
    if again != a:
        return None
    scheme[aws.X_AWS_AUTHORIZER] = x
    return scheme


def _schemas(spec: resources_pb2.ApiSpec) -> dict[str, Any]:
    from meshgate.control.openapi import _rewrite_refs

    schemas: dict[str, Any] = {}
    for m in spec.models:
        schema = json.loads(m.schema_json or "{}")
        for name, sub in (schema.pop("$defs", None) or {}).items():
            schemas.setdefault(name, _rewrite_refs(sub, to_defs=False))
        if schema.get("$schema") == DRAFT_04:
            schema.pop("$schema")
        schemas[m.name] = _rewrite_refs(schema, to_defs=False)
    return schemas


def _api_extensions(full: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """Document-level extensions; returns the Api fields only x-meshgate-api can carry."""
    from meshgate.control.openapi import API_FIELDS_IN_X

    doc["x-amazon-apigateway-api-key-source"] = "HEADER"
    if full.get("binaryMediaTypes"):
        doc["x-amazon-apigateway-binary-media-types"] = list(full["binaryMediaTypes"])
    rest = {
        k: full[k]
        for k in API_FIELDS_IN_X
        if k in full and k not in ("binaryMediaTypes", "description", "templateLanguage")
    }
    if full.get("gatewayResponses"):
        out = {}
        for g in full["gatewayResponses"]:
            item: dict[str, Any] = {}
            if g.get("status"):
                item["statusCode"] = str(g["status"])
            if g.get("headers"):
                item["responseParameters"] = {
                    f"gatewayresponse.header.{k}": f"'{v}'" for k, v in g["headers"].items()
                }
            if g.get("bodyTemplate"):
                item["responseTemplates"] = {"application/json": g["bodyTemplate"]}
            out[g["type"]] = item
        doc["x-amazon-apigateway-gateway-responses"] = out
        rest.pop("gatewayResponses")
    cors = full.get("cors")
    if cors and set(cors) <= set(CORS_NAMES):
        doc["x-amazon-apigateway-cors"] = {CORS_NAMES[k]: v for k, v in cors.items()}
        rest.pop("cors")
    policy = full.get("resourcePolicy")
    if policy:
        doc["x-amazon-apigateway-policy"] = _policy(policy)
        rest.pop("resourcePolicy")
    if full.get("templateLanguage") != "vtl":  # an AWS import means VTL
        rest["templateLanguage"] = full.get("templateLanguage") or "jinja"
    return rest


def _policy(policy: dict[str, Any]) -> dict[str, Any]:
    """Api.resourcePolicy as API Gateway's resource policy (aws:SourceIp conditions)."""
    base = {"Principal": "*", "Action": "execute-api:Invoke", "Resource": "execute-api:/*"}
    allow: dict[str, Any] = {"Effect": "Allow", **base}
    if policy.get("allowCidrs"):
        allow["Condition"] = {"IpAddress": {"aws:SourceIp": list(policy["allowCidrs"])}}
    statements = [allow]
    if policy.get("denyCidrs"):
        statements.append(
            {
                "Effect": "Deny",
                **base,
                "Condition": {"IpAddress": {"aws:SourceIp": list(policy["denyCidrs"])}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def export_aws(
    api_name: str,
    spec: resources_pb2.ApiSpec,
    *,
    namespace: str = "default",
    version: str = "1",
    function_url: str = aws.DEFAULT_FUNCTION_URL,
) -> dict[str, Any]:
    """An OpenAPI 3.0.1 document in API Gateway's export format for an Api spec."""
    from meshgate.control.openapi import X_API, X_AUTHORIZER

    full = json_format.MessageToDict(spec)
    doc: dict[str, Any] = {"openapi": "3.0.1", "info": {"title": api_name, "version": version}}
    if full.get("description"):
        doc["info"]["description"] = full["description"]
    doc["paths"] = {}
    rest = _api_extensions(full, doc)
    if rest:
        doc[X_API] = rest
    schemes: dict[str, Any] = {}
    for a in full.get("authorizers", []):
        scheme = authorizer_aws(a, function_url, namespace)
        if scheme is None:  # meshgate's own extension (control/openapi.py) carries it
            ext = {k: v for k, v in a.items() if k != "name"}
            scheme = {"type": "http", "scheme": "bearer", X_AUTHORIZER: ext}
        schemes[a["name"]] = scheme
    if any(r.get("apiKeyRequired") for r in full.get("routes", [])):
        schemes["api_key"] = {"type": "apiKey", "name": "x-api-key", "in": "header"}
    components: dict[str, Any] = {}
    schemas = _schemas(spec)
    if schemas:
        components["schemas"] = schemas
    if schemes:
        components["securitySchemes"] = schemes
    if components:
        doc["components"] = components
    used: set[str] = set()
    for r in full.get("routes", []):
        op = _operation(r, function_url, namespace, used)
        method = r["method"].lower()
        key = method if method != "any" else aws.X_AWS_ANY
        doc["paths"].setdefault(r["path"], {})[key] = op
    if used:
        doc[aws.X_AWS_VALIDATORS] = {k: VALIDATORS[k] for k in sorted(used)}
    return doc


def _operation(r: dict[str, Any], function_url: str, namespace: str, validators: set[str]) -> dict[str, Any]:
    from meshgate.control.openapi import X_INTEGRATION, X_ROUTE

    op: dict[str, Any] = {}
    if r.get("operationName"):
        op["operationId"] = r["operationName"]
    params = [
        {"name": seg.strip("{}+"), "in": "path", "required": True, "schema": {"type": "string"}}
        for seg in r["path"].strip("/").split("/")
        if seg.startswith("{") and seg.endswith("}")
    ]
    for p in r.get("requiredParameters", []):
        kind, name = p.split(".")[2], p.split(".", 3)[3]
        params.append(
            {"name": name, "in": "query" if kind == "querystring" else "header", "required": True,
             "schema": {"type": "string"}}
        )  # fmt: skip
    if params:
        op["parameters"] = params
    if r.get("requestModel"):
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{r['requestModel']}"}}
            },
        }
    checks = (bool(r.get("requiredParameters")), bool(r.get("requestModel")))
    if any(checks):
        name = {(True, True): "all", (True, False): "params-only", (False, True): "body-only"}[checks]
        validators.add(name)
        op[aws.X_AWS_VALIDATOR] = name
    security: list[dict[str, list[str]]] = []
    if r.get("authorizer"):
        security.append({r["authorizer"]: list(r.get("authorizationScopes", []))})
    if r.get("apiKeyRequired"):
        security.append({"api_key": []})
    if security:
        op["security"] = security
    integ = r["integration"]
    cache = list(r.get("cacheKeyParameters", []))
    statuses = sorted({str(x.get("status", 200)) for x in integ.get("responses", [])}) or [
        str((integ.get("mock") or {}).get("status") or 200)
    ]
    op["responses"] = {s: {"description": f"{s} response"} for s in statuses}
    x = integration_aws(integ, cache, function_url, namespace)
    if x is not None and _imports_back(x, integ, cache, function_url, namespace):
        op[aws.X_AWS_INTEGRATION] = x
    else:
        op[X_INTEGRATION] = integ
    extra = {k: v for k, v in r.items() if k not in ROUTE_AWS_FIELDS}
    if [k for k in cache if k.startswith("method.request.path.")]:
        extra["cacheKeyParameters"] = (
            cache  # the import leaves path keys out (meshgate always keys on the path)
        )
    if extra:
        op[X_ROUTE] = extra
    return op
