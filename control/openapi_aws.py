"""AWS API Gateway exports -> meshgate: Swagger 2.0 normalised to OpenAPI 3, and the
`x-amazon-apigateway-*` extensions (integrations, authorizers, API-level settings) mapped onto
the Api fields meshgate has. Called by control/openapi.py; anything that cannot run in a mesh is a
warning with its JSON pointer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from meshgate.control import openapi_aws_params as params
from meshgate.sidecar.errors import GATEWAY_TYPES
from meshgate.sidecar.transform_responses import compile_pattern, response_parameter

X_AWS = "x-amazon-apigateway-"
X_AWS_INTEGRATION = "x-amazon-apigateway-integration"
X_AWS_AUTHORIZER = "x-amazon-apigateway-authorizer"
X_AWS_ANY = "x-amazon-apigateway-any-method"
X_AWS_VALIDATOR = "x-amazon-apigateway-request-validator"
X_AWS_VALIDATORS = "x-amazon-apigateway-request-validators"
# a Lambda function becomes an in-cluster Service: {function} (DNS-safe name), {namespace} (the Api's)
DEFAULT_FUNCTION_URL = "http://{function}.{namespace}.svc.cluster.local/"
NOT_IMPLEMENTED = '{"message": "Not implemented"}'
FUNCTION_RE = re.compile(r":function:([^/:]+)")
VTL_RE = re.compile(r"\$(input|util|context|stageVariables|\{)|#(set|if|foreach)\b")
IDENTITY_RE = re.compile(r"^\$(request\.)?(header|querystring)\.(.+)$")
Warn = Callable[[str, str], None]


def _ptr(*parts: object) -> str:
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def is_aws(doc: Any) -> bool:
    """Does the document use any x-amazon-apigateway-* extension (AWS semantics apply)?"""
    if isinstance(doc, dict):
        return any(isinstance(k, str) and k.startswith(X_AWS) for k in doc) or any(
            is_aws(v) for v in doc.values()
        )
    if isinstance(doc, list):
        return any(is_aws(v) for v in doc)
    return False


# ---- Swagger 2.0 -> OpenAPI 3.0 -------------------------------------------------------------


MODEL_URL_RE = re.compile(r"^https://apigateway\.amazonaws\.com/restapis/[^/]+/models/([^/#]+)$")


def _refs_v3(node: Any) -> Any:
    """Swagger 2.0 `$ref`s as OpenAPI 3's; API Gateway's model URLs (`$ref` in its model schemas:
    https://apigateway.amazonaws.com/restapis/ID/models/NAME) as the component schema NAME."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and (m := MODEL_URL_RE.match(v)):
                v = "#/components/schemas/" + m.group(1)
            if k == "$ref" and isinstance(v, str):
                for old, new in (
                    ("#/definitions/", "#/components/schemas/"),
                    ("#/parameters/", "#/components/parameters/"),
                ):
                    if v.startswith(old):
                        v = new + v[len(old) :]
            out[k] = _refs_v3(v)
        return out
    if isinstance(node, list):
        return [_refs_v3(v) for v in node]
    return node


def model_refs(doc: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3 document whose API Gateway model URLs are component references."""
    return {k: (_model_urls(v) if k in ("components", "paths") else v) for k, v in doc.items()}


def _model_urls(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ("#/components/schemas/" + m.group(1))
            if k == "$ref" and isinstance(v, str) and (m := MODEL_URL_RE.match(v))
            else _model_urls(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_model_urls(v) for v in node]
    return node


def _param_v3(p: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in p:
        return p
    out = {k: v for k, v in p.items() if k in ("name", "in", "required", "description") or k.startswith("x-")}
    schema = {k: v for k, v in p.items() if k in ("type", "format", "items", "enum", "default", "pattern")}
    if schema:
        out["schema"] = schema
    return out


def _operation_v3(
    op: dict[str, Any], consumes: list[str], produces: list[str], where: str, warn: Warn
) -> None:
    params = []
    for i, p in enumerate(op.get("parameters") or []):
        if not isinstance(p, dict):
            continue
        if p.get("in") == "body":
            media = op.get("consumes") or consumes or ["application/json"]
            body: dict[str, Any] = {"content": {m: {"schema": p.get("schema", {})} for m in media}}
            if p.get("required"):
                body["required"] = True
            op["requestBody"] = body
        elif p.get("in") == "formData":
            warn(f"{where}/parameters/{i}", "formData parameters are not validated")
        else:
            params.append(_param_v3(p))
    if "parameters" in op:
        op["parameters"] = params
    op.pop("consumes", None)
    media_out = op.pop("produces", None) or produces or ["application/json"]
    for resp in (op.get("responses") or {}).values():
        if isinstance(resp, dict) and "schema" in resp:
            resp["content"] = {m: {"schema": resp.pop("schema")} for m in media_out}


def swagger2_to_oas3(doc: dict[str, Any], warn: Warn) -> dict[str, Any]:
    """The OpenAPI 3.0 shape of a Swagger 2.0 document (what the importer reads). `basePath` is
    ignored as API Gateway's import does by default (in AWS exports it is the stage name)."""
    d = _refs_v3(doc)
    out: dict[str, Any] = {
        k: v for k, v in d.items() if k.startswith("x-") or k in ("info", "security", "tags")
    }
    out["openapi"] = "3.0.1"
    consumes, produces = d.get("consumes") or [], d.get("produces") or []
    schemes: dict[str, Any] = {}
    for name, s in (d.get("securityDefinitions") or {}).items():
        s = dict(s)
        if s.get("type") == "basic":
            s = {"type": "http", "scheme": "basic", **{k: v for k, v in s.items() if k.startswith("x-")}}
        schemes[name] = s
    components: dict[str, Any] = {
        "schemas": d.get("definitions") or {},
        "securitySchemes": schemes,
        "parameters": {
            k: _param_v3(v) for k, v in (d.get("parameters") or {}).items() if v.get("in") != "body"
        },
    }
    out["components"] = {k: v for k, v in components.items() if v}
    paths: dict[str, Any] = {}
    for path, item in (d.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        item = dict(item)
        if "parameters" in item:
            item["parameters"] = [_param_v3(p) for p in item["parameters"] if p.get("in") != "body"]
        for key, op in item.items():
            if key != "parameters" and isinstance(op, dict) and not key.startswith("x-meshgate"):
                if key in ("get", "put", "post", "delete", "options", "head", "patch", X_AWS_ANY):
                    _operation_v3(op, consumes, produces, _ptr("paths", path, key), warn)
        paths[path] = item
    out["paths"] = paths
    return out


# ---- x-amazon-apigateway-integration ---------------------------------------------------------


def function_name(uri: str) -> str:
    """The Lambda function a (apigateway invocation or lambda) ARN names, DNS-safe when literal."""
    m = FUNCTION_RE.search(uri)
    name = m.group(1) if m else uri.rsplit("/", 1)[-1] or "function"
    if "${" in name:
        return name
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "function"


def _not_implemented(where: str, warn: Warn, why: str) -> dict[str, Any]:
    warn(where, f"{why}: the route answers 501")
    headers = {"Content-Type": "application/json"}
    return {"type": "mock", "mock": {"status": 501, "headers": headers, "body": NOT_IMPLEMENTED}}


def _pick_response(responses: dict[str, Any], status: str) -> dict[str, Any]:
    """The integration response API Gateway selects for a status code (selectionPattern keys)."""
    for key, resp in responses.items():
        if key != "default" and isinstance(resp, dict):
            try:
                if re.fullmatch(resp.get("selectionPattern", key), status):
                    return resp
            except re.error:
                continue
    default = responses.get("default")
    return default if isinstance(default, dict) else {}


def _header_constants(params: dict[str, Any], prefix: str, where: str, warn: Warn) -> dict[str, str]:
    headers = {}
    for key, value in params.items():
        v = str(value)
        if key.startswith(prefix) and len(v) >= 2 and v[0] == v[-1] == "'":
            headers[key[len(prefix) :]] = v[1:-1]
        else:
            warn(f"{where}/{key}", f"only constant '...' headers are supported here, got {v!r}")
    return headers


class _AnyVariables(dict[str, str]):
    """Stage variables are the stage's: at import any name may be defined later."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def integration_responses(raw: Any, where: str, warn: Warn) -> list[dict[str, Any]]:
    """meshgate `responses` for an AWS integration's `responses` (keyed by selection pattern, or
    `default`); what the sidecar cannot run is left out with a warning naming its pointer."""
    out: list[dict[str, Any]] = []
    has_default = False
    for key, resp in (raw or {}).items() if isinstance(raw, dict) else ():
        rw = f"{where}/responses/{str(key).replace('~', '~0').replace('/', '~1')}"
        if not isinstance(resp, dict):
            warn(rw, "not an integration response object: left out")
            continue
        pattern = str(resp.get("selectionPattern", "" if key == "default" else key) or "")
        status = str(resp.get("statusCode", ""))
        if not (status.isdigit() and 100 <= int(status) <= 599):
            warn(f"{rw}/statusCode", f"{status!r} is not a status a response can have: left out")
            continue
        if pattern:
            try:
                compile_pattern(pattern)
            except ValueError as exc:
                warn(f"{rw}/selectionPattern", f"{exc}: left out")
                continue
        elif has_default:
            warn(rw, "a second default integration response: left out")
            continue
        has_default = has_default or not pattern
        r: dict[str, Any] = {"status": int(status)}
        if pattern:
            r["selectionPattern"] = pattern
        mapped = {}
        for k, v in (resp.get("responseParameters") or {}).items():
            try:
                response_parameter(str(k), str(v), _AnyVariables())
            except ValueError as exc:
                warn(f"{rw}/responseParameters/{k}", f"{exc}: left out")
                continue
            mapped[str(k)] = str(v)
        if mapped:
            r["responseParameters"] = mapped
        templates = params.templates(resp.get("responseTemplates"), f"{rw}/responseTemplates", warn)
        if templates:
            r["responseTemplates"] = templates
        if resp.get("contentHandling"):
            warn(f"{rw}/contentHandling", "not supported: the body passes as it is")
        out.append(r)
    return out


def _mock(x: dict[str, Any], where: str, warn: Warn) -> dict[str, Any]:
    """A fixed mock where nothing varies per request, else API Gateway's: the request template's
    statusCode selects one of the integration responses, whose templates run."""
    if _varies(x):
        out: dict[str, Any] = {"type": "mock"}
        if x.get("requestTemplates"):
            out["requestTemplates"] = params.templates(
                x["requestTemplates"], f"{where}/requestTemplates", warn
            )
        out["responses"] = integration_responses(x.get("responses"), where, warn)
        if x.get("passthroughBehavior"):
            out["passthroughBehavior"] = str(x["passthroughBehavior"]).upper()
        return out
    status = "200"
    templates = x.get("requestTemplates") or {}
    tpl = templates.get("application/json") or next(iter(templates.values()), "")
    try:
        status = str(int(json.loads(tpl).get("statusCode", 200))) if tpl else "200"
    except (ValueError, TypeError, AttributeError):
        if tpl:
            warn(f"{where}/requestTemplates", 'not a {"statusCode": N} template; status 200')
    resp = _pick_response(x.get("responses") or {}, status)
    mock: dict[str, Any] = {"status": int(resp.get("statusCode", status))}
    headers = _header_constants(
        resp.get("responseParameters") or {}, "method.response.header.", f"{where}/responses", warn
    )
    body_templates = resp.get("responseTemplates") or {}
    if body_templates:
        media = "application/json" if "application/json" in body_templates else next(iter(body_templates))
        body = body_templates[media] or ""
        mock["body"] = body
        if not any(h.lower() == "content-type" for h in headers) and body:
            headers["Content-Type"] = media
    if not any(h.lower() == "content-type" for h in headers):  # API Gateway's default, even when empty
        headers["Content-Type"] = "application/json"
    if headers:
        mock["headers"] = headers
    return {"type": "mock", "mock": mock}


def _varies(x: dict[str, Any]) -> bool:
    """Whether a mock's answer depends on the request: VTL in a template, or mapped values."""
    texts = [str(v) for v in (x.get("requestTemplates") or {}).values() if v is not None]
    raw = x.get("responses")
    responses: dict[Any, Any] = raw if isinstance(raw, dict) else {}
    for resp in responses.values():
        if isinstance(resp, dict):
            texts += [str(v) for v in (resp.get("responseTemplates") or {}).values() if v is not None]
            for v in (resp.get("responseParameters") or {}).values():
                value = str(v)
                if not (len(value) >= 2 and value[0] == value[-1] == "'"):
                    return True
    return any(VTL_RE.search(t) for t in texts)


def _http(x: dict[str, Any], where: str, warn: Warn, proxy: bool) -> dict[str, Any]:
    uri = str(x.get("uri", ""))
    if uri.startswith("https://"):
        warn(f"{where}/uri", "https upstreams are reached over http:// inside the mesh")
        uri = "http://" + uri[len("https://") :]
    if x.get("connectionType") == "VPC_LINK":
        warn(f"{where}/connectionType", "VPC links do not exist in a mesh: the uri is called directly")
    out: dict[str, Any] = {"type": "http", "uri": uri}
    method = str(x.get("httpMethod", "")).upper()
    if method and method != "ANY":
        out["httpMethod"] = method
    _common(x, out, where, warn)
    if not proxy:
        _custom(x, out, where, warn)
    elif x.get("responseParameters"):  # an HTTP API's response mapping, by status code
        responses = params.http_api_responses(x["responseParameters"], f"{where}/responseParameters", warn)
        if responses:
            out["responses"] = responses
    return out


def _custom(x: dict[str, Any], out: dict[str, Any], where: str, warn: Warn) -> None:
    """What a non-proxy (AWS `http`, or `aws` to Lambda) integration adds: only mapped parameters
    go, its request templates, and the integration responses."""
    out["proxy"] = False
    if x.get("requestTemplates"):
        out["requestTemplates"] = params.templates(x["requestTemplates"], f"{where}/requestTemplates", warn)
    responses = integration_responses(x.get("responses"), where, warn)
    if responses:
        out["responses"] = responses


def _common(x: dict[str, Any], out: dict[str, Any], where: str, warn: Warn) -> None:
    mapped, removes = params.request_parameters(
        x.get("requestParameters"), f"{where}/requestParameters", warn
    )
    if mapped:
        out["requestParameters"] = mapped
    if removes:
        out["removeRequestParameters"] = removes
    if x.get("passthroughBehavior"):
        out["passthroughBehavior"] = str(x["passthroughBehavior"]).upper()
    if x.get("timeoutInMillis"):
        out["timeoutMs"] = max(50, min(300000, int(x["timeoutInMillis"])))


def integration(
    x: Any, where: str, warn: Warn, function_url: str, namespace: str
) -> tuple[dict[str, Any], list[str]]:
    """A meshgate integration (and the route's cacheKeyParameters) for an AWS integration object."""
    if not isinstance(x, dict):
        return _not_implemented(where, warn, "not an integration object"), []
    kind = str(x.get("type", "")).lower()
    # the request path is always part of meshgate's cache key
    cache_keys = [
        str(k) for k in x.get("cacheKeyParameters") or [] if not str(k).startswith("method.request.path.")
    ]
    if kind == "mock":
        return _mock(x, where, warn), cache_keys
    if kind in ("http", "http_proxy"):
        return _http(x, where, warn, proxy=kind == "http_proxy"), cache_keys
    if kind == "aws_proxy" and ":lambda:" in str(x.get("uri", "")):
        out: dict[str, Any] = {
            "type": "function",
            "uri": function_url.format(function=function_name(str(x["uri"])), namespace=namespace),
        }
        if x.get("payloadFormatVersion"):
            out["payloadFormatVersion"] = str(x["payloadFormatVersion"])
        if x.get("responseParameters"):
            warn(f"{where}/responseParameters", "a Lambda proxy's answer is its result: not mapped")
        _common(x, out, where, warn)
        return out, cache_keys
    if kind == "aws" and ":lambda:path/" in str(x.get("uri", "")):  # Lambda custom integration
        out = {
            "type": "function",
            "uri": function_url.format(function=function_name(str(x["uri"])), namespace=namespace),
        }
        _common(x, out, where, warn)
        _custom(x, out, where, warn)
        return out, cache_keys
    if kind in ("aws", "aws_proxy"):
        return _not_implemented(
            where, warn, f"AWS service integration {x.get('uri', '')!r} cannot run in a mesh"
        ), []
    return _not_implemented(where, warn, f"integration type {kind!r} is not supported"), []


# ---- x-amazon-apigateway-authorizer ---------------------------------------------------------


def _identity_sources(raw: Any) -> list[str]:
    items = raw if isinstance(raw, list) else str(raw or "").split(",")
    out = []
    for s in (str(i).strip() for i in items):
        m = IDENTITY_RE.match(s)
        if m:  # HTTP API style: $request.header.Authorization
            s = f"method.request.{m.group(2)}.{m.group(3)}"
        elif s.startswith("$stageVariables."):
            s = s[1:]
        elif s.startswith("$context."):
            s = s[1:]
        if s:
            out.append(s)
    return out


def authorizer(
    name: str, x: dict[str, Any], where: str, warn: Warn, function_url: str, namespace: str
) -> dict[str, Any] | None:
    """A meshgate authorizer for an x-amazon-apigateway-authorizer object, or None (warned)."""
    kind = str(x.get("type", "")).lower()
    out: dict[str, Any] = {"name": name}
    sources = _identity_sources(x.get("identitySource"))
    if kind in ("token", "request"):
        out["type"] = kind
        out["uri"] = function_url.format(
            function=function_name(str(x.get("authorizerUri", ""))), namespace=namespace
        )
        if kind == "token" and not sources:
            sources = ["method.request.header.Authorization"]
        if "authorizerResultTtlInSeconds" in x:
            out["resultTtlSeconds"] = min(3600, max(0, int(x["authorizerResultTtlInSeconds"])))
        for key, why in (
            ("enableSimpleResponses", "simple responses ({isAuthorized}) are not read: return a policy"),
            ("authorizerPayloadFormatVersion", "the authorizer gets the REST (1.0) TOKEN/REQUEST event"),
        ):
            if x.get(key) and str(x[key]) not in ("false", "1.0"):
                warn(f"{where}/{key}", why)
        if x.get("identityValidationExpression"):
            warn(f"{where}/identityValidationExpression", "not checked; the authorizer sees every token")
    elif kind in ("cognito_user_pools", "jwt"):
        out["type"] = "jwt"
        jwt = x.get("jwtConfiguration") or {}
        issuer = str(jwt.get("issuer", ""))
        if not issuer:
            for arn in x.get("providerARNs") or []:
                m = re.match(r"^arn:aws:cognito-idp:([^:]+):[^:]*:userpool/(.+)$", str(arn))
                if m:
                    issuer = f"https://cognito-idp.{m.group(1)}.amazonaws.com/{m.group(2)}"
                    break
        if not issuer:
            warn(where, "no issuer (jwtConfiguration.issuer or a Cognito providerARN): authorizer dropped")
            return None
        out["issuer"] = issuer
        out["jwksUri"] = issuer.rstrip("/") + "/.well-known/jwks.json"
        if jwt.get("audience"):
            out["audiences"] = [str(a) for a in jwt["audience"]]
    else:
        warn(where, f"authorizer type {kind!r} is not supported")
        return None
    sources = params.identity_sources(sources, where, warn)
    if sources:
        out["identitySources"] = sources
    return out


# ---- API-level extensions --------------------------------------------------------------------


def _gateway_responses(x: dict[str, Any], warn: Warn) -> list[dict[str, Any]]:
    out = []
    for kind, r in x.items():
        if not isinstance(r, dict):
            continue
        where = _ptr("x-amazon-apigateway-gateway-responses", kind)
        if kind not in GATEWAY_TYPES:  # AWS-only (EXPIRED_TOKEN, WAF_FILTERED, ...): never raised here
            warn(where, f"gateway response type {kind} is never raised by meshgate: dropped")
            continue
        g: dict[str, Any] = {"type": kind}
        status = str(r.get("statusCode") or "")
        if status and not (status.isdigit() and 200 <= int(status) <= 599):
            warn(f"{where}/statusCode", f"status {status!r} cannot end a response: the default is kept")
        elif status:
            g["status"] = int(status)
        headers = _header_constants(
            r.get("responseParameters") or {}, "gatewayresponse.header.", f"{where}/responseParameters", warn
        )
        if headers:
            g["headers"] = headers
        templates = r.get("responseTemplates") or {}
        if templates:
            g["bodyTemplate"] = templates.get("application/json") or next(iter(templates.values()))
        out.append(g)
    return out


def api_fields(doc: dict[str, Any], warn: Warn) -> dict[str, Any]:
    """Api spec fields from the document-level AWS extensions (templates are VTL, as on AWS)."""
    spec: dict[str, Any] = {"templateLanguage": "vtl"}
    binary = doc.get("x-amazon-apigateway-binary-media-types")
    if binary:
        spec["binaryMediaTypes"] = [str(b).replace("~1", "/") for b in binary]  # as AWS's API stores them
    responses = doc.get("x-amazon-apigateway-gateway-responses")
    if isinstance(responses, dict) and responses:
        spec["gatewayResponses"] = _gateway_responses(responses, warn)
    cors = doc.get("x-amazon-apigateway-cors")
    if isinstance(cors, dict):
        spec["cors"] = params.cors(cors, warn)
    if "x-amazon-apigateway-policy" in doc:
        policy = params.resource_policy(doc["x-amazon-apigateway-policy"], warn)
        if policy:
            spec["resourcePolicy"] = policy
    source = str(doc.get("x-amazon-apigateway-api-key-source", "HEADER")).upper()
    if source != "HEADER":
        warn(_ptr("x-amazon-apigateway-api-key-source"), "API keys come from the x-api-key header only")
    for key in doc:
        if isinstance(key, str) and key.startswith(X_AWS) and key not in KNOWN_DOC_KEYS:
            warn(_ptr(key), "not supported")
    return spec


KNOWN_DOC_KEYS = frozenset(
    {
        "x-amazon-apigateway-binary-media-types",
        "x-amazon-apigateway-gateway-responses",
        "x-amazon-apigateway-cors",
        "x-amazon-apigateway-api-key-source",
        X_AWS_VALIDATORS,
        X_AWS_VALIDATOR,
        X_AWS_INTEGRATION,
        "x-amazon-apigateway-importexport-version",
        "x-amazon-apigateway-policy",
    }
)


def validator(doc: dict[str, Any], op: dict[str, Any]) -> tuple[bool, bool]:
    """(validate parameters, validate body) for an operation: API Gateway validates nothing
    unless a request validator applies (the operation's, else the document's default)."""
    name = op.get(X_AWS_VALIDATOR, doc.get(X_AWS_VALIDATOR))
    v = (doc.get(X_AWS_VALIDATORS) or {}).get(name) if name else None
    if not isinstance(v, dict):
        return False, False
    return bool(v.get("validateRequestParameters")), bool(v.get("validateRequestBody"))
