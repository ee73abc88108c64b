"""Validation of every resource before it is stored: errors name the field (`spec.routes[1].path`).

Checks here are per resource; references between resources (a Stage's Api)
are checked by the store against etcd and the rest of the batch. `validate`
reports every error of a resource at once, as kubectl's field validation does:
each `with _checking():` block is one independent check that its first `_fail`
ends, and the next block runs on.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import jsonschema
from meshgate.control.errors import FieldError, InvalidConfig
from meshgate.control.state import unwrap
from meshgate.control.validation_common import (
    _FOUND,
    HEX64_RE,
    HOST_RE,
    IDENTITY_SOURCE_RE,
    JWT_ALGORITHMS,
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    METHODS,
    NAME_RE,
    PARAM_RE,
    STAGE_VAR_REF_RE,
    VAR_NAME_RE,
    VAR_VALUE_RE,
    _checking,
    _fail,
    _header_constants,
    _lenient_params,
    _meta,
    path_params,
)
from meshgate.control.validation_integrations import (
    _integration,
    _with_template_language,
)
from meshgate.sidecar.errors import GATEWAY_TYPES
from meshgate.sidecar.respond import InvalidHeader, check_headers
from meshgate.v1 import resources_pb2


def _authorizers(spec: resources_pb2.ApiSpec) -> set[str]:
    authorizers: set[str] = set()
    for i, a in enumerate(spec.authorizers):
        with _checking():
            _authorizer(a, i, authorizers)
        authorizers.add(a.name)  # a refused authorizer is still a name its routes may use
    return authorizers


def _authorizer(a: resources_pb2.Authorizer, i: int, authorizers: set[str]) -> None:
    """spec.authorizers[i]; `authorizers` holds the names of those before it."""
    if not a.name:
        _fail(f"spec.authorizers[{i}].name", "required")
    if a.name in authorizers:
        _fail(f"spec.authorizers[{i}].name", f"duplicate authorizer {a.name!r}")
    if a.type not in ("jwt", "request", "token"):
        _fail(f"spec.authorizers[{i}].type", f'must be "jwt", "request" or "token", got {a.type!r}')
    if a.result_ttl_seconds > 3600:
        _fail(f"spec.authorizers[{i}].resultTtlSeconds", "must be at most 3600")
    where = f"spec.authorizers[{i}]"
    for j, src in enumerate(a.identity_sources):
        if not IDENTITY_SOURCE_RE.match(src):
            _fail(
                f"{where}.identitySources[{j}]",
                f"{src!r}: use method.request.header.NAME, method.request.querystring.NAME, "
                "stageVariables.NAME or context.sourceIp",
            )
    if a.type == "jwt":
        if not a.jwks_uri.startswith(("http://", "https://")):
            _fail(f"{where}.jwksUri", "required for jwt authorizers (http:// or https:// URL)")
        for alg in a.algorithms:
            if alg not in JWT_ALGORITHMS:
                _fail(
                    f"{where}.algorithms",
                    f"{alg!r} is not accepted (use {', '.join(sorted(JWT_ALGORITHMS))})",
                )
        if a.identity_sources and not a.identity_sources[0].startswith("method.request.header."):
            _fail(f"{where}.identitySources[0]", "a jwt token comes from a header")
    else:
        if not a.uri.startswith("http://"):
            _fail(f"{where}.uri", "required for request/token authorizers (http:// URL of the service)")
        if a.type == "token" and len(a.identity_sources) > 1:
            _fail(f"{where}.identitySources", "a token authorizer takes one header")


def _models(spec: resources_pb2.ApiSpec) -> set[str]:
    models = set()
    for i, m in enumerate(spec.models):
        with _checking():
            if not m.name:
                _fail(f"spec.models[{i}].name", "required")
        with _checking():
            _schema(m, i)
        models.add(m.name)
    return models


def _schema(m: resources_pb2.Model, i: int) -> None:
    """spec.models[i].schemaJson: a JSON Schema (an object) that its own metaschema accepts."""
    try:
        schema = json.loads(m.schema_json or "{}")
    except ValueError as exc:
        _fail(f"spec.models[{i}].schemaJson", f"not valid JSON: {exc}")
    if not isinstance(schema, dict):  # `5` or `"x"` is JSON but no schema (jsonschema raises TypeError)
        _fail(
            f"spec.models[{i}].schemaJson",
            f"must be a JSON object (a JSON Schema), got {m.schema_json!r}",
        )
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except jsonschema.exceptions.SchemaError as exc:
        _fail(f"spec.models[{i}].schemaJson", f"not a valid JSON Schema: {exc.message}")


def _route(
    spec: resources_pb2.ApiSpec,
    i: int,
    seen: dict[tuple[str, str], int],
    authorizers: set[str],
    models: set[str],
) -> None:
    r, where = spec.routes[i], f"spec.routes[{i}]"
    with _checking():
        if r.method.upper() not in METHODS:
            _fail(f"{where}.method", f"must be one of {', '.join(sorted(METHODS))}, got {r.method!r}")
    params = _lenient_params(r.path)
    with _checking():
        params = path_params(r.path, f"{where}.path")
        normalized = "/" + "/".join(PARAM_RE.sub("{}", s) for s in r.path.strip("/").split("/"))
        key = (r.method.upper(), normalized)
        if key in seen:
            _fail(f"{where}.path", f"{r.method} {r.path} duplicates spec.routes[{seen[key]}]")
        seen[key] = i
    with _checking():
        if not r.HasField("integration"):
            _fail(f"{where}.integration", "required")
        integ = _with_template_language(r.integration, spec, f"{where}.integration")
        _integration(integ, params, f"{where}.integration", r.path.rstrip("/").endswith("+}"))
    with _checking():
        if r.integration.type == "websocket_api" and r.method.upper() not in ("GET", "ANY"):
            _fail(
                f"{where}.method", f"a WebSocket API is opened with a GET upgrade: use GET, got {r.method!r}"
            )
    with _checking():
        if r.authorizer and r.authorizer not in authorizers:
            _fail(f"{where}.authorizer", f"no authorizer named {r.authorizer!r} in spec.authorizers")
    with _checking():
        if r.request_model and r.request_model not in models:
            _fail(f"{where}.requestModel", f"no model named {r.request_model!r} in spec.models")
    with _checking():
        if r.throttling.rate_limit < 0:
            _fail(f"{where}.throttling.rateLimit", "must not be negative")
    with _checking():
        if r.authorization_scopes:
            kinds = {a.name: a.type for a in spec.authorizers}
            if kinds.get(r.authorizer) != "jwt":
                _fail(f"{where}.authorizationScopes", "scopes need a jwt authorizer on the route")
    for j, port in enumerate(r.ports):
        with _checking():
            if not 0 < port < 65536:
                _fail(f"{where}.ports[{j}]", f"a port is 1-65535, got {port}")
    with _checking():
        if len(set(r.ports)) != len(r.ports):
            _fail(f"{where}.ports", "lists a port twice")
    for field, names in (
        ("requiredParameters", r.required_parameters),
        ("cacheKeyParameters", r.cache_key_parameters),
    ):
        for j, p in enumerate(names):
            with _checking():
                if not re.match(r"^method\.request\.(querystring|header)\.[A-Za-z0-9\-_.]+$", p):
                    _fail(
                        f"{where}.{field}[{j}]",
                        f"{p!r}: use method.request.querystring.NAME or method.request.header.NAME",
                    )


# A gateway response's status: API Gateway takes any 3-digit [1-5]xx; 1xx is refused here because
# an interim status can never end an exchange (the client keeps waiting for the final response).
GATEWAY_STATUS_MIN, GATEWAY_STATUS_MAX = 200, 599
CORS_METHODS = frozenset(METHODS - {"ANY"}) | {"*"}
CORS_MAX_AGE = 86400  # API Gateway's cap (and Chromium's, 2 h, is below it)
# An Origin header as a browser sends it: lowercase scheme and host, no path (RFC 6454 §6.1).
_ORIGIN_HOST = r"([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|\[[0-9a-f:.]+\]"
ORIGIN_RE = re.compile(rf"^[a-z][a-z0-9+.-]*://({_ORIGIN_HOST})(:[0-9]{{1,5}})?$")
WILDCARD_ORIGIN_RE = re.compile(rf"^https://\*\.({_ORIGIN_HOST})(:[0-9]{{1,5}})?$")


def _gateway_responses(spec: resources_pb2.ApiSpec) -> None:
    """Only the types the sidecar raises (sidecar/errors.py), a final status, headers it can write."""
    seen: dict[str, int] = {}
    for i, g in enumerate(spec.gateway_responses):
        with _checking():
            where = f"spec.gatewayResponses[{i}]"
            if g.type not in GATEWAY_TYPES:
                _fail(
                    f"{where}.type",
                    f"{g.type!r} is not a gateway response type ({', '.join(sorted(GATEWAY_TYPES))})",
                )
            if g.type in seen:
                _fail(
                    f"{where}.type",
                    f"{g.type} is already overridden by spec.gatewayResponses[{seen[g.type]}]",
                )
            seen[g.type] = i
            if g.status and not GATEWAY_STATUS_MIN <= g.status <= GATEWAY_STATUS_MAX:
                _fail(
                    f"{where}.status",
                    f"must be 0 (keep the default) or between {GATEWAY_STATUS_MIN} and {GATEWAY_STATUS_MAX}, got {g.status}",
                )
            _header_constants(g.headers, f"{where}.headers")


def _cors(c: resources_pb2.Cors) -> None:
    """Origins a browser's Origin header can equal, methods and header names the filter can write."""
    for j, origin in enumerate(c.allow_origins):
        with _checking():
            if origin != "*" and not ORIGIN_RE.match(origin) and not WILDCARD_ORIGIN_RE.match(origin):
                _fail(
                    f"spec.cors.allowOrigins[{j}]",
                    f'{origin!r}: use "*", an origin (scheme://host[:port], lowercase, no path) '
                    "or https://*.domain",
                )
            if origin == "*" and c.allow_credentials:
                _fail(
                    f"spec.cors.allowOrigins[{j}]",
                    'browsers refuse credentials with origin "*": list the origins with allowCredentials',
                )
    for j, m in enumerate(c.allow_methods):
        with _checking():
            if m not in CORS_METHODS:
                _fail(f"spec.cors.allowMethods[{j}]", f"{m!r}: use {', '.join(sorted(CORS_METHODS))}")
    for field, names in (("allowHeaders", c.allow_headers), ("exposeHeaders", c.expose_headers)):
        for j, name in enumerate(names):
            with _checking():
                try:
                    check_headers(((name.encode("latin-1", "replace"), b""),))
                except InvalidHeader as exc:
                    _fail(f"spec.cors.{field}[{j}]", str(exc))
    if c.max_age_seconds > CORS_MAX_AGE:
        _fail("spec.cors.maxAgeSeconds", f"must be at most {CORS_MAX_AGE}, got {c.max_age_seconds}")


def validate_api(api: resources_pb2.Api) -> None:
    _meta(api.metadata, "metadata")
    spec = api.spec
    _gateway_responses(spec)
    with _checking():
        if spec.HasField("cors"):
            _cors(spec.cors)
    with _checking():
        if spec.endpoint_type not in ("", "cluster", "private"):
            _fail("spec.endpointType", f'must be "cluster" or "private", got {spec.endpoint_type!r}')
    with _checking():
        if spec.escaped_slashes_action not in ("", "KEEP_UNCHANGED", "REJECT_REQUEST"):
            _fail(
                "spec.escapedSlashesAction",
                f'must be "KEEP_UNCHANGED" or "REJECT_REQUEST", got {spec.escaped_slashes_action!r}',
            )
    with _checking():
        if spec.base_path:
            path_params("/" + spec.base_path.strip("/"), "spec.basePath")
            if "{" in spec.base_path:
                _fail("spec.basePath", "must not contain parameters")
    for ns in spec.selector.namespaces:
        with _checking():
            if ns != "*" and not NAME_RE.match(ns):
                _fail("spec.selector.namespaces", f"invalid namespace {ns!r}")
    for k, v in spec.selector.match_labels.items():
        with _checking():
            if not LABEL_KEY_RE.match(k) or not LABEL_VALUE_RE.match(v):
                _fail(f"spec.selector.matchLabels.{k}", f"invalid label {k}={v}")
    authorizers = _authorizers(spec)
    for cidr in [*spec.resource_policy.allow_cidrs, *spec.resource_policy.deny_cidrs]:
        with _checking():
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                _fail("spec.resourcePolicy", f"{cidr!r} is not a CIDR")
    models = _models(spec)
    seen: dict[tuple[str, str], int] = {}
    for i in range(len(spec.routes)):
        _route(spec, i, seen, authorizers, models)


def validate_stage(stage: resources_pb2.Stage) -> None:
    _meta(stage.metadata, "metadata")
    spec = stage.spec
    with _checking():
        if not spec.api:
            _fail("spec.api", "required: the name of the Api this stage serves")
    for name, value in spec.variables.items():
        with _checking():
            if not VAR_NAME_RE.match(name):
                _fail(f"spec.variables.{name}", "variable names are letters, digits and '_'")
            if not VAR_VALUE_RE.match(value):
                _fail(
                    f"spec.variables.{name}", f"value {value!r} has characters outside [A-Za-z0-9-._~:/?#&=,]"
                )
    _secret_variables(spec)
    hosts: dict[str, int] = {}
    for i, host in enumerate(spec.hosts):
        with _checking():
            if not HOST_RE.match(host):
                _fail(f"spec.hosts[{i}]", f"invalid host name {host!r}")
            if host.lower() in hosts:  # the sidecar maps hosts case-insensitively and NACKs a second claim
                _fail(f"spec.hosts[{i}]", f"{host} is already spec.hosts[{hosts[host.lower()]}]")
            hosts[host.lower()] = i
    c = spec.canary
    with _checking():
        if not 0 <= c.percent <= 100:
            _fail("spec.canary.percent", f"must be between 0 and 100, got {c.percent:g}")
    for name, value in c.variables.items():
        with _checking():
            if not VAR_NAME_RE.match(name) or not VAR_VALUE_RE.match(value):
                _fail(f"spec.canary.variables.{name}", f"invalid stage variable {name}={value!r}")
    with _checking():
        if c.sticky_header and not re.match(r"^[A-Za-z0-9-]+$", c.sticky_header):
            _fail("spec.canary.stickyHeader", f"invalid header name {c.sticky_header!r}")
    with _checking():
        if spec.throttling.rate_limit < 0:
            _fail("spec.throttling.rateLimit", "must not be negative")
    with _checking():
        if spec.cache.ttl_seconds > 3600:
            _fail("spec.cache.ttlSeconds", "must be between 0 and 3600")
    with _checking():
        if spec.cache.invalidation not in ("", "ignore", "require_authorization", "fail"):
            _fail("spec.cache.invalidation", 'must be "ignore", "require_authorization" or "fail"')
    for m in spec.cache.methods:
        with _checking():
            if m.upper() not in METHODS - {"ANY"}:
                _fail("spec.cache.methods", f"{m!r} is not an HTTP method")
    with _checking():
        if not 0 <= spec.tracing_sample_ratio <= 1:
            _fail("spec.tracingSampleRatio", "must be between 0 and 1")


def _secret_variables(spec: resources_pb2.StageSpec) -> None:
    seen: set[str] = set()
    for i, name in enumerate(spec.secret_variables):
        with _checking():
            if name not in spec.variables:
                _fail(f"spec.secretVariables[{i}]", f"{name!r} is not one of spec.variables")
            if name in seen:
                _fail(f"spec.secretVariables[{i}]", f"{name!r} is listed twice")
        seen.add(name)


def validate_usage_plan(plan: resources_pb2.UsagePlan) -> None:
    _meta(plan.metadata, "metadata")
    for i, ref in enumerate(plan.spec.apis):
        with _checking():
            parts = ref.split("/")
            if len(parts) > 2 or not all(NAME_RE.match(p) for p in parts):
                _fail(f"spec.apis[{i}]", f'must be "api" or "api/stage", got {ref!r}')
    with _checking():
        if plan.spec.throttle.rate_limit < 0:
            _fail("spec.throttle.rateLimit", "must not be negative")
    with _checking():
        if plan.spec.quota.limit and plan.spec.quota.period not in ("DAY", "WEEK", "MONTH"):
            _fail("spec.quota.period", f"must be DAY, WEEK or MONTH, got {plan.spec.quota.period!r}")


def validate_api_key(key: resources_pb2.ApiKey) -> None:
    _meta(key.metadata, "metadata")
    spec = key.spec
    if spec.value_hmac and not HEX64_RE.match(spec.value_hmac):
        _fail("spec.valueHmac", "must be 64 lowercase hex characters (the keyed hash control stores)")
    if spec.value_sha256 or not spec.value_hmac:
        if not HEX64_RE.match(spec.value_sha256):
            _fail("spec.valueSha256", "must be 64 lowercase hex characters (sha256 of the key)")


def validate(res: resources_pb2.Resource) -> None:
    """Raise InvalidConfig with every error of the resource (each naming it and the field), or return."""
    msg = unwrap(res)
    found: list[FieldError] = []
    token = _FOUND.set(found)
    try:
        with _checking():
            if isinstance(msg, resources_pb2.Api):
                validate_api(msg)
            elif isinstance(msg, resources_pb2.Stage):
                validate_stage(msg)
            elif isinstance(msg, resources_pb2.UsagePlan):
                validate_usage_plan(msg)
            elif isinstance(msg, resources_pb2.ApiKey):
                validate_api_key(msg)
            else:
                raise InvalidConfig("Deployment resources are made by deploy, not applied")
    finally:
        _FOUND.reset(token)
    if found:
        what = f"{msg.DESCRIPTOR.name} {msg.metadata.namespace or 'default'}/{msg.metadata.name}"
        raise InvalidConfig(*(replace(e, resource=what) for e in found))


CLUSTER_DOMAINS = (".svc", ".svc.cluster.local", ".cluster.local")


def _substitute(uri: str, variables: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        return variables.get(m.group(1), m.group(0))

    return STAGE_VAR_REF_RE.sub(repl, uri)


def check_private_targets(
    api: resources_pb2.Api, stage_variables: Sequence[Mapping[str, str]], cluster_cidrs: tuple[str, ...]
) -> None:
    """Raise InvalidConfig unless every HTTP integration of a private Api stays inside the cluster.

    Allowed: addresses in the cluster networks, loopback (the pod itself),
    `localhost` and in-cluster service names (`*.svc`, `*.svc.cluster.local`).
    """
    nets = [ipaddress.ip_network(c, strict=False) for c in cluster_cidrs]
    for where, target in _http_targets(api.spec):
        for variables in stage_variables:
            uri = _substitute(target, variables)
            authority = uri[len("http://") :].split("/", 1)[0]
            if "${" in authority:
                continue  # checked when the stage that defines the variable is applied
            host = (
                authority.rsplit(":", 1)[0].strip("[]")
                if authority.count(":") <= 1
                else authority.strip("[]")
            )
            if host == "localhost" or host.endswith(CLUSTER_DOMAINS):
                continue
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                _fail(
                    f"Api {api.metadata.name} is private: {where}",
                    f"host {host!r} is not an in-cluster service name (*.svc) or address",
                )
                continue
            if addr.is_loopback or any(addr in n for n in nets):
                continue
            _fail(
                f"Api {api.metadata.name} is private: {where}",
                f"{host} is outside the cluster networks ({', '.join(cluster_cidrs) or 'none configured'})",
            )


def _http_targets(spec: resources_pb2.ApiSpec) -> Iterator[tuple[str, str]]:
    """(field path, uri) of every HTTP call an Api's routes make, WebSocket API routes included."""
    for _, where, kind, uri in _integration_uris(spec):
        if kind in ("http", "function"):
            yield where, uri


def _integration_uris(spec: resources_pb2.ApiSpec) -> Iterator[tuple[resources_pb2.Route, str, str, str]]:
    """(route, field path, integration type, uri) of every integration URI of an Api's routes,
    WebSocket API routes included."""
    for i, route in enumerate(spec.routes):
        integ = route.integration
        if integ.type == "websocket_api":
            for key in sorted(integ.websocket_routes):
                sub = integ.websocket_routes[key]
                yield route, f"spec.routes[{i}].integration.websocketRoutes.{key}.uri", sub.type, sub.uri
        elif integ.type != "mock":
            yield route, f"spec.routes[{i}].integration.uri", integ.type, integ.uri


def unresolved_variables(
    stage: resources_pb2.Stage, deployments: Mapping[int, resources_pb2.ApiSpec]
) -> list[FieldError]:
    """One error per stage variable that an integration URI of what `stage` serves uses and the
    stage does not define: the base deployment with `spec.variables`; the canary deployment (when
    `canary.percent` > 0) with `spec.variables` overridden and extended by `spec.canary.variables`,
    as the sidecar resolves them. Deployments missing from `deployments` serve nothing, so a stage
    not deployed yet needs no variable. A sidecar would answer 500 on such a route (and refuse a
    WebSocket API's whole snapshot)."""
    spec = stage.spec
    base = dict(spec.variables)
    sides = [(spec.deployment, base, f"deployment {spec.deployment}")]
    if spec.canary.percent > 0:
        canary = {**base, **spec.canary.variables}
        sides.append((spec.canary.deployment, canary, f"canary deployment {spec.canary.deployment}"))
    out: list[FieldError] = []
    for dep, variables, served in sides:
        if dep not in deployments:
            continue
        uses: dict[str, list[str]] = {}
        for route, where, _, uri in _integration_uris(deployments[dep]):
            for name in STAGE_VAR_REF_RE.findall(uri):
                if name not in variables:
                    uses.setdefault(name, []).append(f"{route.method} {route.path} ({where})")
        for name, routes in sorted(uses.items()):
            more = f" and {len(routes) - 2} more routes" if len(routes) > 2 else ""
            out.append(
                FieldError(
                    f"spec.variables.{name}",
                    f"undefined, and {served} uses ${{stageVariables.{name}}} in {', '.join(routes[:2])}{more}",
                )
            )
    return out
