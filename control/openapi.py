"""OpenAPI 3.0/3.1 <-> Api: `meshgate import` and `meshgate export`.

Paths and methods become routes, components/schemas become models (each
carrying the other schemas under `$defs`, so `$ref`s — circular ones included —
keep working), parameters become required parameters, security schemes become
authorizers or API-key requirements. What OpenAPI cannot say travels in
`x-meshgate-*` extensions, so an exported spec imports back to the same Api.
Anything not understood is a warning with its JSON pointer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from meshgate.control import openapi_aws as aws
from meshgate.v1 import resources_pb2

METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
X_INTEGRATION = "x-meshgate-integration"
X_AUTHORIZER = "x-meshgate-authorizer"
X_ROUTE = "x-meshgate-route"  # throttling, cacheKeyParameters, ... of one operation
X_API = "x-meshgate-api"  # Api spec fields outside paths (selector, cors, ...)
X_ANY = "x-meshgate-any-method"  # path item key of an ANY route
API_FIELDS_IN_X = (
    "description",
    "endpointType",
    "selector",
    "basePath",
    "binaryMediaTypes",
    "resourcePolicy",
    "cors",
    "gatewayResponses",
    "templateLanguage",
)


class OpenApiError(ValueError):
    """A document that cannot be imported (or warnings with --fail-on-warnings)."""


@dataclass
class ImportResult:
    api: resources_pb2.Api
    warnings: list[str] = field(default_factory=list)


def _ptr(*parts: object) -> str:
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _rewrite_refs(node: Any, to_defs: bool) -> Any:
    """#/components/schemas/X <-> #/$defs/X everywhere in a schema."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                if to_defs and v.startswith("#/components/schemas/"):
                    v = "#/$defs/" + v[len("#/components/schemas/") :]
                elif not to_defs and v.startswith("#/$defs/"):
                    v = "#/components/schemas/" + v[len("#/$defs/") :]
            out[k] = _rewrite_refs(v, to_defs)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, to_defs) for v in node]
    return node


def _nullable_30(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` -> JSON Schema type lists."""
    if isinstance(node, dict):
        node = {k: _nullable_30(v) for k, v in node.items()}
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_nullable_30(v) for v in node]
    return node


class _Importer:
    def __init__(
        self,
        doc: dict[str, Any],
        warnings: list[str],
        namespace: str = "default",
        function_url: str = aws.DEFAULT_FUNCTION_URL,
    ) -> None:
        self.doc = doc
        self.warnings = warnings
        self.aws = aws.is_aws(doc)  # API Gateway semantics: VTL templates, validators
        self.namespace = namespace
        self.function_url = function_url
        version = str(doc.get("openapi", ""))
        if not version.startswith(("3.0", "3.1")):
            raise OpenApiError(
                f"#/openapi: only OpenAPI 3.0, 3.1 and Swagger 2.0 are supported, got {version or 'none'!r}"
            )
        self.v31 = version.startswith("3.1")
        comps = doc.get("components") or {}
        self.schemas: dict[str, Any] = comps.get("schemas") or {}
        self.schemes: dict[str, Any] = comps.get("securitySchemes") or {}
        self.params: dict[str, Any] = comps.get("parameters") or {}
        self.bodies: dict[str, Any] = comps.get("requestBodies") or {}
        self.models: dict[str, resources_pb2.Model] = {}
        self.defs = {k: self._schema(v) for k, v in self.schemas.items()}

    def warn(self, pointer: str, message: str) -> None:
        self.warnings.append(f"{pointer}: {message}")

    def _schema(self, schema: Any) -> Any:
        s = _rewrite_refs(schema, to_defs=True)
        return s if self.v31 else _nullable_30(s)

    def _refs(self, node: Any, seen: set[str]) -> None:
        """Names of the component schemas a schema needs, transitively (cycles allowed)."""
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref[len("#/$defs/") :]
                if name not in seen and name in self.defs:
                    seen.add(name)
                    self._refs(self.defs[name], seen)
            for v in node.values():
                self._refs(v, seen)
        elif isinstance(node, list):
            for v in node:
                self._refs(v, seen)

    def model(self, name: str, schema: Any) -> str:
        if name not in self.models:
            doc = copy.deepcopy(schema)
            if isinstance(doc, dict):
                doc.setdefault(
                    "$schema",
                    "https://json-schema.org/draft/2020-12/schema"
                    if self.v31
                    else "http://json-schema.org/draft-04/schema#",
                )
                needed: set[str] = set()
                self._refs(doc, needed)
                if needed:
                    doc["$defs"] = {k: self.defs[k] for k in sorted(needed)}
            self.models[name] = resources_pb2.Model(
                name=name, content_type="application/json", schema_json=json.dumps(doc, sort_keys=True)
            )
        return name

    def deref(self, obj: Any, table: dict[str, Any], prefix: str) -> Any:
        if isinstance(obj, dict) and isinstance(obj.get("$ref"), str):
            ref = obj["$ref"]
            if ref.startswith(prefix):
                return table.get(ref[len(prefix) :], {})
        return obj

    def security_schemes(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Authorizers (by scheme name) and the names of the x-api-key schemes."""
        authorizers: dict[str, dict[str, Any]] = {}
        api_key_schemes: set[str] = set()
        for name, scheme in self.schemes.items():
            where = _ptr("components", "securitySchemes", name)
            kind = scheme.get("type")
            ext = scheme.get(X_AUTHORIZER)
            if isinstance(scheme.get(aws.X_AWS_AUTHORIZER), dict):
                mapped = aws.authorizer(
                    name,
                    scheme[aws.X_AWS_AUTHORIZER],
                    f"{where}/{aws.X_AWS_AUTHORIZER}",
                    self.warn,
                    self.function_url,
                    self.namespace,
                )
                if mapped is not None:
                    authorizers[name] = mapped
                continue
            if str(scheme.get("x-amazon-apigateway-authtype", "")).lower() in ("awssigv4", "aws_iam"):
                self.warn(where, "AWS SigV4 (IAM) is not checked: routes using it are open")
                continue
            if kind == "apiKey":
                if scheme.get("in") == "header" and str(scheme.get("name", "")).lower() == "x-api-key":
                    api_key_schemes.add(name)
                else:
                    self.warn(where, "only header x-api-key API keys are supported; scheme ignored")
                continue
            if ext is not None:
                authorizers[name] = {"name": name, **ext}
                continue
            if kind in ("http", "oauth2", "openIdConnect") and (
                kind != "http" or scheme.get("scheme") == "bearer"
            ):
                self.warn(
                    where,
                    f"{kind} scheme without {X_AUTHORIZER} (issuer, jwksUri): routes using it are not protected",
                )
            else:
                self.warn(where, f"security scheme type {kind!r} is not supported")
        return authorizers, api_key_schemes

    def run(self, api_name: str, namespace: str) -> resources_pb2.Api:
        doc = self.doc
        spec: dict[str, Any] = {}
        if self.aws:
            spec.update(aws.api_fields(doc, self.warn))
        x_api = doc.get(X_API) or {}
        for key in API_FIELDS_IN_X:
            if key in x_api:
                spec[key] = x_api[key]
        if "description" not in spec and (doc.get("info") or {}).get("description"):
            spec["description"] = doc["info"]["description"]
        authorizers, api_key_schemes = self.security_schemes()
        routes = []
        for path, item in (doc.get("paths") or {}).items():
            pwhere = ("paths", path)
            if not isinstance(item, dict):
                continue
            for key in item:
                if key not in (
                    *METHODS,
                    "parameters",
                    "summary",
                    "description",
                    "servers",
                ) and not key.startswith("x-"):
                    self.warn(_ptr(*pwhere, key), f"{key!r} is not supported")
            for method in (*METHODS, X_ANY, aws.X_AWS_ANY):
                op = item.get(method)
                if op is None:
                    continue
                where = _ptr(*pwhere, method)
                for served in self._paths_of(path, method, doc.get("paths") or {}):
                    routes.append(self.route(served, method, op, item, authorizers, api_key_schemes, where))
        if not routes:
            raise OpenApiError("#/paths: no operations to import")
        for key in ("webhooks",):
            if doc.get(key):
                self.warn(_ptr(key), "not supported")
        spec["routes"] = routes
        for name in self.schemas:  # every schema is a model, as on API Gateway (response ones too)
            self.model(name, self.defs[name])
        if authorizers:
            spec["authorizers"] = list(authorizers.values())
        if self.models:
            spec["models"] = [json_format.MessageToDict(self.models[k]) for k in sorted(self.models)]
        api = resources_pb2.Api(api_version="meshgate.io/v1", kind="Api")
        api.metadata.name = api_name
        api.metadata.namespace = namespace
        try:
            json_format.ParseDict(spec, api.spec)
        except json_format.ParseError as exc:
            raise OpenApiError(f"{X_API} or {X_INTEGRATION}: {str(exc).splitlines()[0]}") from None
        return api

    def _paths_of(self, path: str, method: str, paths: dict[str, Any]) -> list[str]:
        """The route paths of a path key: an HTTP API's `$default` route catches every path (the root
        and `/{proxy+}`) that no other route of the document takes."""
        if path != "$default" or not self.aws:
            return [path]
        out = [p for p in ("/", "/{proxy+}") if not isinstance((paths.get(p) or {}).get(method), dict)]
        self.warn(
            _ptr("paths", path, method), f"the $default route is served as {' and '.join(out) or 'nothing'}"
        )
        return out

    def _integration(self, op: dict[str, Any], item: dict[str, Any], r: dict[str, Any], where: str) -> Any:
        """The route's integration: x-meshgate-integration (operation, path item, document), else the
        AWS one (sets the route's cacheKeyParameters), else a 501 placeholder with a warning."""
        integration = op.get(X_INTEGRATION) or item.get(X_INTEGRATION) or self.doc.get(X_INTEGRATION)
        # an HTTP API's shared integration: {$ref: "#/components/x-amazon-apigateway-integrations/NAME"}
        x_aws = self.deref(
            op.get(aws.X_AWS_INTEGRATION),
            (self.doc.get("components") or {}).get("x-amazon-apigateway-integrations") or {},
            "#/components/x-amazon-apigateway-integrations/",
        )
        if str((op.get("x-amazon-apigateway-auth") or {}).get("type", "")).lower() == "aws_iam":
            self.warn(
                f"{where}/x-amazon-apigateway-auth", "AWS_IAM (SigV4) is not checked: the route is open"
            )
        if integration is None and x_aws is not None:
            integration, cache_keys = aws.integration(
                x_aws, f"{where}/{aws.X_AWS_INTEGRATION}", self.warn, self.function_url, self.namespace
            )
            if cache_keys:
                r["cacheKeyParameters"] = cache_keys
        if integration is None:
            self.warn(where, f"no {X_INTEGRATION}: the route answers 501 until you add one")
            integration = {"type": "mock", "mock": {"status": 501, "body": '{"message": "Not implemented"}'}}
        return integration

    def route(
        self,
        path: str,
        method: str,
        op: dict[str, Any],
        item: dict[str, Any],
        authorizers: dict[str, dict[str, Any]],
        api_key_schemes: set[str],
        where: str,
    ) -> dict[str, Any]:
        r: dict[str, Any] = {
            "method": "ANY" if method in (X_ANY, aws.X_AWS_ANY) else method.upper(),
            "path": path,
        }
        if op.get("operationId"):
            r["operationName"] = op["operationId"]
        r["integration"] = self._integration(op, item, r, where)
        required = []
        for i, p in enumerate([*(item.get("parameters") or []), *(op.get("parameters") or [])]):
            p = self.deref(p, self.params, "#/components/parameters/")
            loc, name = p.get("in"), p.get("name")
            if loc == "cookie":
                self.warn(f"{where}/parameters/{i}", "cookie parameters are not validated")
            elif loc in ("query", "header") and p.get("required"):
                kind = "querystring" if loc == "query" else "header"
                required.append(f"method.request.{kind}.{name}")
        check_params, check_body = aws.validator(self.doc, op) if self.aws else (True, True)
        if required and check_params:
            r["requiredParameters"] = sorted(set(required))
        body = self.deref(op.get("requestBody"), self.bodies, "#/components/requestBodies/")
        if isinstance(body, dict) and check_body:
            content = body.get("content") or {}
            media = content.get("application/json")
            if media is None:
                if content:
                    self.warn(
                        f"{where}/requestBody",
                        f"only application/json bodies are validated (got {', '.join(content)})",
                    )
            elif isinstance(media.get("schema"), dict):
                schema = media["schema"]
                ref = schema.get("$ref", "")
                if ref.startswith("#/components/schemas/") and len(schema) == 1:
                    name = ref.rsplit("/", 1)[1]
                    r["requestModel"] = self.model(name, self.defs.get(name, {}))
                else:
                    name = (op.get("operationId") or f"{method}{path}").replace("/", "_").replace(
                        "{", ""
                    ).replace("}", "") + "Request"
                    r["requestModel"] = self.model(name, self._schema(schema))
        security = op.get("security", self.doc.get("security"))
        for req in security or []:
            for scheme, scopes in req.items():
                if scheme in api_key_schemes:
                    r["apiKeyRequired"] = True
                elif scheme in authorizers:
                    r["authorizer"] = scheme
                    if scopes:
                        r["authorizationScopes"] = list(scopes)
            if not self.aws:
                break  # OpenAPI: alternatives, the first is taken; AWS exports list each one that applies
        for key in ("callbacks",):
            if op.get(key):
                self.warn(f"{where}/{key}", "not supported")
        r.update(op.get(X_ROUTE) or {})
        return r


def import_openapi(
    doc: Any, api_name: str, namespace: str = "default", *, function_url: str = aws.DEFAULT_FUNCTION_URL
) -> ImportResult:
    """An Api from an OpenAPI 3.0/3.1 or Swagger 2.0 document (AWS API Gateway exports included:
    `function_url` is where a Lambda function runs, with {function} and {namespace})."""
    if not isinstance(doc, dict):
        raise OpenApiError("#: an OpenAPI document is an object")
    warnings: list[str] = []
    if str(doc.get("swagger", "")) == "2.0":
        doc = aws.swagger2_to_oas3(doc, lambda where, msg: warnings.append(f"{where}: {msg}"))
    elif aws.is_aws(doc):
        doc = aws.model_refs(doc)
    imp = _Importer(doc, warnings, namespace, function_url)
    api = imp.run(api_name, namespace)
    return ImportResult(api, imp.warnings)


def export_openapi(
    api_name: str, spec: resources_pb2.ApiSpec, *, stage: str = "", version: str = "1"
) -> dict[str, Any]:
    """An OpenAPI 3.1 document that imports back to the same Api spec."""
    full = json_format.MessageToDict(spec)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": api_name, "version": version},
        "paths": {},
    }
    if stage:
        doc["servers"] = [{"url": f"/{spec.base_path.strip('/') + '/' if spec.base_path else ''}{stage}"}]
    x_api = {k: full[k] for k in API_FIELDS_IN_X if k in full}
    if x_api:
        doc[X_API] = x_api
    components = _components(spec, full)
    if components:
        doc["components"] = components
    for r in full.get("routes", []):
        path_item = doc["paths"].setdefault(r["path"], {})
        method = r["method"].lower()
        key = method if method in METHODS else X_ANY  # OpenAPI has no ANY (API Gateway uses an extension too)
        path_item[key] = _operation(r)
    return doc


def _components(spec: resources_pb2.ApiSpec, full: dict[str, Any]) -> dict[str, Any]:
    """components: the models as schemas ($defs lifted), the authorizers and the API key as schemes."""
    schemas: dict[str, Any] = {}
    for m in spec.models:
        schema = json.loads(m.schema_json or "{}")
        for name, sub in (schema.pop("$defs", None) or {}).items():
            schemas.setdefault(name, _rewrite_refs(sub, to_defs=False))
        schema.pop("$schema", None)  # OpenAPI 3.1 schemas are 2020-12 already
        schemas[m.name] = _rewrite_refs(schema, to_defs=False)
    schemes: dict[str, Any] = {}
    for a in full.get("authorizers", []):
        ext = dict(a)
        name = ext.pop("name")
        scheme: dict[str, Any] = {"type": "http", "scheme": "bearer"}
        if a.get("type") == "jwt":
            scheme["bearerFormat"] = "JWT"
        scheme[X_AUTHORIZER] = ext
        schemes[name] = scheme
    if any(r.api_key_required for r in spec.routes):
        schemes["api_key"] = {"type": "apiKey", "in": "header", "name": "x-api-key"}
    components: dict[str, Any] = {}
    if schemas:
        components["schemas"] = schemas
    if schemes:
        components["securitySchemes"] = schemes
    return components


def _operation(r: dict[str, Any]) -> dict[str, Any]:
    """One route (its JSON mapping) as an operation: parameters, body, security, the integration."""
    op: dict[str, Any] = {}
    if r.get("operationName"):
        op["operationId"] = r["operationName"]
    params = []
    for seg in r["path"].strip("/").split("/"):
        if seg.startswith("{") and seg.endswith("}"):
            params.append(
                {"name": seg.strip("{}+"), "in": "path", "required": True, "schema": {"type": "string"}}
            )
    for p in r.get("requiredParameters", []):
        kind, name = p.split(".")[2], p.split(".", 3)[3]
        params.append(
            {
                "name": name,
                "in": "query" if kind == "querystring" else "header",
                "required": True,
                "schema": {"type": "string"},
            }
        )
    if params:
        op["parameters"] = params
    if r.get("requestModel"):
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{r['requestModel']}"}}
            },
        }
    security = []
    if r.get("authorizer"):
        security.append({r["authorizer"]: r.get("authorizationScopes", [])})
    if r.get("apiKeyRequired"):
        security.append({"api_key": []})
    if security:
        op["security"] = [dict(kv for s in security for kv in s.items())]
    op["responses"] = _responses(r["integration"])
    op[X_INTEGRATION] = r["integration"]
    extra = {k: v for k, v in r.items() if k in ("throttling", "cacheKeyParameters")}
    if extra:
        op[X_ROUTE] = extra
    return op


def export_document(
    api_name: str,
    spec: resources_pb2.ApiSpec,
    *,
    stage: str = "",
    version: str = "1",
    fmt: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """`meshgate export`: OpenAPI 3.1 with meshgate's extensions, or with `fmt` "aws" API Gateway's
    export format (OpenAPI 3.0 with the x-amazon-apigateway-* extensions, control/openapi_aws_export.py)."""
    if fmt == "aws":
        from meshgate.control.openapi_aws_export import export_aws

        return export_aws(api_name, spec, namespace=namespace, version=version)
    return export_openapi(api_name, spec, stage=stage, version=version)


def _responses(integration: dict[str, Any]) -> dict[str, Any]:
    """What an operation answers, for readers of the export (import reads the integration itself)."""
    kind = integration.get("type")
    if kind == "websocket_api":
        keys = ", ".join(sorted(integration.get("websocketRoutes", {})))
        return {
            "101": {
                "description": "Switching Protocols: a WebSocket API; each message goes to the route "
                f"its {integration.get('routeSelectionExpression') or '$request.body.action'} names "
                f"({keys}), see {X_INTEGRATION}"
            }
        }
    if kind == "websocket":
        return {"101": {"description": "Switching Protocols: a WebSocket relayed to the integration"}}
    return {"default": {"description": "integration response"}}
