"""Validation of every resource before it is stored: errors name the field (`spec.routes[1].path`).

Checks here are per resource; references between resources (a Stage's Api)
are checked by the store against etcd and the rest of the batch. `validate`
reports every error of a resource at once, as kubectl's field validation does:
each `with _checking():` block is one independent check that its first `_fail`
ends, and the next block runs on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace

import jsonschema
from meshgate.control.errors import FieldError, InvalidConfig
from meshgate.control.state import unwrap
from meshgate.sidecar.errors import GATEWAY_TYPES
from meshgate.sidecar.respond import InvalidHeader, check_headers
from meshgate.sidecar.transcode import TranscodeError, Transcoder
from meshgate.sidecar.transform import compile_transform
from meshgate.sidecar.transform_responses import compile_pattern, compile_response
from meshgate.v1 import resources_pb2

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"}
PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}$")
LITERAL_SEGMENT_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*,;=:@%]+$")
VAR_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
VAR_VALUE_RE = re.compile(r"^[A-Za-z0-9\-._~:/?#&=,]*$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
HOST_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
STAGE_VAR_REF_RE = re.compile(r"\$\{stageVariables\.([A-Za-z0-9_]+)\}")
URI_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAPPING_KEY_RE = re.compile(r"^integration\.request\.(header|querystring|path)\.([A-Za-z0-9\-_.]+)$")
MAPPING_VALUE_RE = re.compile(
    r"^(method\.request\.(path|querystring|header)\.[A-Za-z0-9\-_.]+"
    r"|context\.(stage|requestId|httpMethod|resourcePath)"
    r"|context\.authorizer\.[A-Za-z0-9_.\-]+"
    r"|stageVariables\.[A-Za-z0-9_]+"
    r"|'[^']*')$"
)
PRIVATE_DEFAULT = "cluster"
IDENTITY_SOURCE_RE = re.compile(
    r"^(method\.request\.(header|querystring)\.[A-Za-z0-9\-_.]+|stageVariables\.[A-Za-z0-9_]+|context\.(identity\.)?sourceIp)$"
)
JWT_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})


def _fail(where: str, problem: str) -> None:
    raise InvalidConfig(FieldError(where, problem))


_FOUND: ContextVar[list[FieldError] | None] = ContextVar("meshgate_validation_found", default=None)


@contextlib.contextmanager
def _checking() -> Iterator[None]:
    """One independent check: within `validate`, its first `_fail` is recorded and ends only this
    block; called on its own (a helper used elsewhere), the error propagates as it is."""
    found = _FOUND.get()
    if found is None:
        yield
        return
    try:
        yield
    except InvalidConfig as exc:
        found.extend(exc.errors)


def _lenient_params(path: str) -> list[str]:
    """The parameter names of a path template that may be invalid (checks after its own refusal)."""
    return [m.group(1) for seg in path.split("/") if (m := PARAM_RE.match(seg))]


def path_params(path: str, where: str) -> list[str]:
    """Validate a route path template and return its parameter names (`proxy` for `{proxy+}`)."""
    if not path.startswith("/"):
        _fail(where, f'must start with "/", got {path!r}')
    if path == "/":
        return []
    segments = path.rstrip("/").split("/")[1:] if path != "/" else []
    names: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "":
            _fail(where, f"empty path segment in {path!r}")
        m = PARAM_RE.match(seg)
        if m:
            name, greedy = m.group(1), m.group(2)
            if greedy and i != len(segments) - 1:
                _fail(where, f"greedy parameter {seg} must be the last segment")
            if name in names:
                _fail(where, f"duplicate path parameter {name!r}")
            names.append(name)
        elif "{" in seg or "}" in seg:
            _fail(where, f"invalid path parameter segment {seg!r} (use {{name}} or {{name+}})")
        elif not LITERAL_SEGMENT_RE.match(seg):
            _fail(where, f"invalid characters in path segment {seg!r}")
    return names


def _meta(meta: resources_pb2.ObjectMeta, where: str) -> None:
    with _checking():
        if not meta.name:
            _fail(f"{where}.name", "required")
        if not NAME_RE.match(meta.name):
            _fail(
                f"{where}.name",
                f"{meta.name!r} must be lowercase letters, digits and '-', at most 63 characters",
            )
    with _checking():
        if meta.namespace and not NAME_RE.match(meta.namespace):
            _fail(f"{where}.namespace", f"{meta.namespace!r} is not a valid namespace name")
    for k, v in meta.labels.items():
        with _checking():
            if not LABEL_KEY_RE.match(k):
                _fail(f"{where}.labels", f"invalid label key {k!r}")
            if not LABEL_VALUE_RE.match(v):
                _fail(f"{where}.labels.{k}", f"invalid label value {v!r}")


def _header_constants(headers: Mapping[str, str], where: str) -> None:
    """Header names and constant values a sidecar would write: refused here if they could split a
    message (the sidecar's own writer check, `respond.check_headers`)."""
    for name, value in headers.items():
        try:
            check_headers(((name.encode("latin-1", "replace"), value.encode("latin-1", "replace")),))
        except InvalidHeader as exc:
            _fail(f"{where}.{name}", str(exc))


def _constants(params: Mapping[str, str], prefix: str, where: str) -> None:
    """The quoted constants ('value') among mapped header parameters."""
    for key, value in params.items():
        if key.startswith(prefix) and len(value) >= 2 and value[0] == value[-1] == "'":
            try:
                check_headers(((b"x", value[1:-1].encode("latin-1", "replace")),))
            except InvalidHeader:
                _fail(f"{where}.{key}", "the constant holds CR, LF or NUL")


INTEGRATION_TYPES = ("http", "mock", "function", "websocket", "grpc", "websocket_api")
WS_RESERVED_KEYS = ("$connect", "$disconnect", "$default")
# what sidecar/wsapi.py `compile_selection` routes on: a (nested) field of the JSON message
WS_SELECTION_RE = re.compile(r"^\$request\.body\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
WS_ROUTE_KEY_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")  # also sent as x-meshgate-route-key
# the fields the sidecar reads (sidecar/integrations/websocket_api.py); any other would be ignored
WS_API_FIELDS = frozenset(
    {"type", "route_selection_expression", "websocket_routes", "max_message_bytes", "template_language"}
)  # template_language: the Api's, resolved onto every route (no templates here to render)
WS_ROUTE_FIELDS = frozenset({"type", "uri", "timeout_ms"})


def _integration(integ: resources_pb2.Integration, params: list[str], where: str, has_greedy: bool) -> None:
    _constants(integ.request_parameters, "integration.request.header.", f"{where}.requestParameters")
    _constants(integ.response_parameters, "method.response.header.", f"{where}.responseParameters")
    if integ.type not in INTEGRATION_TYPES:
        _fail(
            f"{where}.type",
            f'must be "http", "function", "websocket", "websocket_api", "grpc" or "mock", got {integ.type!r}',
        )
    _integration_responses(integ, where)
    if integ.type == "grpc":
        _grpc(integ, where)
        return
    if integ.type == "websocket":
        if not integ.uri.startswith("ws://") or len(integ.uri) <= len("ws://"):
            _fail(f"{where}.uri", f"a websocket integration takes a ws:// URL, got {integ.uri!r}")
        _max_message_bytes(integ, where)
        return
    if integ.type == "websocket_api":
        _websocket_api(integ, where)
        return
    if integ.payload_format_version not in ("", "1.0", "2.0"):
        _fail(f"{where}.payloadFormatVersion", 'must be "1.0" or "2.0"')
    if integ.timeout_ms and not 50 <= integ.timeout_ms <= 300000:
        _fail(f"{where}.timeoutMs", f"must be between 50 and 300000, got {integ.timeout_ms}")
    if integ.connect_timeout_ms > 60000:
        _fail(f"{where}.connectTimeoutMs", f"must be at most 60000, got {integ.connect_timeout_ms}")
    if integ.http_method and integ.http_method not in METHODS:
        _fail(
            f"{where}.httpMethod", f"must be one of {', '.join(sorted(METHODS))}, got {integ.http_method!r}"
        )
    if integ.type in ("http", "function"):
        _http_target(integ, params, where, has_greedy)
    else:
        status = integ.mock.status or 200
        if not 100 <= status <= 599:
            _fail(f"{where}.mock.status", f"must be between 100 and 599, got {status}")
        _header_constants(integ.mock.headers, f"{where}.mock.headers")


def _integration_responses(integ: resources_pb2.Integration, where: str) -> None:
    """`proxy` and `responses` (sidecar/transform_responses.py): patterns that compile and cannot
    backtrack without bound, statuses a response can have, one default, templates that compile
    (a mock's request template too)."""
    if integ.HasField("proxy") and integ.type not in ("http", "function"):
        _fail(f"{where}.proxy", f"only http and function integrations are proxies or not, not {integ.type!r}")
    if integ.type == "mock" and (integ.request_templates or integ.response_templates):
        try:
            compile_transform(integ, _AnyVariables())
        except ValueError as exc:
            _fail(f"{where}.requestTemplates", str(exc))
    if not integ.responses:
        return
    if integ.type not in ("http", "function", "mock"):
        _fail(
            f"{where}.responses", f"integration responses are for http, function and mock, not {integ.type!r}"
        )
    if integ.type == "function" and (not integ.HasField("proxy") or integ.proxy):
        _fail(f"{where}.responses", "a proxy function answers with its result: set proxy: false to map it")
    for field in ("response_parameters", "response_templates"):
        if getattr(integ, field):
            name = resources_pb2.Integration.DESCRIPTOR.fields_by_name[field].json_name
            _fail(
                f"{where}.{name}", "with responses, each response has its own: move it into the default one"
            )
    default = -1
    language = integ.template_language or "jinja"
    for j, r in enumerate(integ.responses):
        rw = f"{where}.responses[{j}]"
        if r.status and not 100 <= r.status <= 599:
            _fail(f"{rw}.status", f"must be between 100 and 599 (0: the integration's), got {r.status}")
        if not r.selection_pattern:
            if default >= 0:
                _fail(f"{rw}.selectionPattern", f"required: responses[{default}] is already the default")
            default = j
        _constants(r.response_parameters, "method.response.header.", f"{rw}.responseParameters")
        try:
            compile_pattern(r.selection_pattern)
        except ValueError as exc:
            _fail(f"{rw}.selectionPattern", str(exc))
        try:
            compile_response(r, language, _AnyVariables())
        except ValueError as exc:
            _fail(rw, str(exc))


def _grpc(integ: resources_pb2.Integration, where: str) -> None:
    if not re.match(r"^grpc://[A-Za-z0-9.\-\[\]:${}_]+:\d+/?$", integ.uri):
        _fail(f"{where}.uri", f"a grpc integration takes grpc://HOST:PORT, got {integ.uri!r}")
    if integ.grpc_method:
        try:
            Transcoder.compile(integ.grpc_method, integ.descriptor_set, integ.body)
        except TranscodeError as exc:
            _fail(f"{where}.grpcMethod", str(exc))


def _max_message_bytes(integ: resources_pb2.Integration, where: str) -> None:
    if integ.max_message_bytes > 64 * 1024 * 1024:
        _fail(f"{where}.maxMessageBytes", "must be at most 67108864")


def _only_fields(integ: resources_pb2.Integration, allowed: frozenset[str], where: str, what: str) -> None:
    """Refuse a field the sidecar would silently ignore for this kind of integration."""
    for fd, _ in integ.ListFields():
        if fd.name not in allowed:
            names = ", ".join(f.json_name for f in integ.DESCRIPTOR.fields if f.name in allowed)
            _fail(f"{where}.{fd.json_name}", f"not used by {what} (it takes {names})")


def _websocket_api(integ: resources_pb2.Integration, where: str) -> None:
    """A WebSocket API (sidecar/wsapi.py): a selection expression and HTTP integrations per route key."""
    _only_fields(integ, WS_API_FIELDS, where, "a websocket_api integration")
    expr = integ.route_selection_expression
    if expr and not WS_SELECTION_RE.match(expr):
        _fail(
            f"{where}.routeSelectionExpression",
            f"must be $request.body.FIELD[.FIELD...] (FIELD: letters, digits, '_', '-'), got {expr!r}",
        )
    _max_message_bytes(integ, where)
    if not integ.websocket_routes:
        _fail(
            f"{where}.websocketRoutes", "at least one route ($connect, $disconnect, $default or a route key)"
        )
    for key in sorted(integ.websocket_routes):
        if not WS_ROUTE_KEY_RE.match(key):
            _fail(
                f"{where}.websocketRoutes", f"route key {key!r}: 1 to 128 characters, no control characters"
            )
        if key.startswith("$") and key not in WS_RESERVED_KEYS:
            _fail(
                f"{where}.websocketRoutes",
                f"route key {key!r}: keys starting with $ are $connect, $disconnect or $default",
            )
        sub, sub_where = integ.websocket_routes[key], f"{where}.websocketRoutes.{key}"
        if sub.type != "http":
            _fail(
                f"{sub_where}.type",
                f'must be "http" (each message is POSTed to the route\'s uri), got {sub.type!r}',
            )
        _only_fields(sub, WS_ROUTE_FIELDS, sub_where, "a WebSocket API route")
        _integration(sub, [], sub_where, False)  # uri and timeout as any http integration; no path params


def _http_target(integ: resources_pb2.Integration, params: list[str], where: str, has_greedy: bool) -> None:
    """The uri and parameter mappings of an http or function integration."""
    uri = integ.uri
    if not uri:
        _fail(f"{where}.uri", "required for http integrations")
    if not uri.startswith("http://"):
        _fail(f"{where}.uri", f"must start with http:// (got {uri!r})")
    rest = uri[len("http://") :]
    authority = rest.split("/", 1)[0]
    if not authority:
        _fail(f"{where}.uri", f"has no host: {uri!r}")
    plain = STAGE_VAR_REF_RE.sub("x", authority)
    host, _, port = plain.rpartition(":") if ":" in plain else (plain, "", "")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        _fail(f"{where}.uri", f"invalid port in {uri!r}")
    if not HOST_RE.match(host):
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            _fail(f"{where}.uri", f"invalid host in {uri!r}")
    mapped = {
        k.rsplit(".", 1)[1] for k in integ.request_parameters if k.startswith("integration.request.path.")
    }
    for ref in URI_PARAM_RE.findall(STAGE_VAR_REF_RE.sub("", uri)):
        if ref == "proxy" and has_greedy:
            continue
        if ref not in params and ref not in mapped:  # integration.request.path.NAME sets {NAME} too
            _fail(
                f"{where}.uri",
                f"references {{{ref}}}: neither a parameter of the route path nor integration.request.path.{ref}",
            )
    _request_parameters(integ, params, where)
    try:
        compile_transform(integ, _AnyVariables())
    except ValueError as exc:
        _fail(where, str(exc))


def _request_parameters(integ: resources_pb2.Integration, params: list[str], where: str) -> None:
    for key, value in integ.request_parameters.items():
        if not MAPPING_KEY_RE.match(key):
            _fail(
                f"{where}.requestParameters",
                f"invalid key {key!r} (integration.request.header|querystring|path.NAME)",
            )
        if not MAPPING_VALUE_RE.match(value):
            _fail(
                f"{where}.requestParameters.{key}",
                f"invalid value {value!r} (method.request.path|querystring|header.NAME, "
                "context.stage|requestId|httpMethod|resourcePath, stageVariables.NAME or 'literal')",
            )
        if value.startswith("method.request.path."):
            name = value.rsplit(".", 1)[1]
            if name not in params:
                _fail(
                    f"{where}.requestParameters.{key}",
                    f"path parameter {name!r} is not in the route path",
                )


class _AnyVariables(dict[str, str]):
    """Stage variables are per stage: at apply time any name may be defined later."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def _with_template_language(
    integ: resources_pb2.Integration, spec: resources_pb2.ApiSpec, where: str
) -> resources_pb2.Integration:
    """The integration with its templates' language resolved (its own, else the Api's), so that
    `_integration` checks them in that language (a VTL template that does not parse is refused)."""
    for value, field in (
        (spec.template_language, "spec.templateLanguage"),
        (integ.template_language, f"{where}.templateLanguage"),
    ):
        if value not in ("", "jinja", "vtl"):
            _fail(field, f'must be "jinja" or "vtl", got {value!r}')
    if integ.template_language or not spec.template_language:
        return integ
    resolved = resources_pb2.Integration()
    resolved.CopyFrom(integ)
    resolved.template_language = spec.template_language
    return resolved


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
