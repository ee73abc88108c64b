"""Validation of a route's integration, by type: targets, mappings and templates, integration
responses, gRPC descriptors, WebSocket and WebSocket API routes."""

from __future__ import annotations

import ipaddress
import re

from meshgate.control.validation_common import (
    HOST_RE,
    MAPPING_KEY_RE,
    MAPPING_VALUE_RE,
    METHODS,
    STAGE_VAR_REF_RE,
    URI_PARAM_RE,
    _constants,
    _fail,
    _header_constants,
)
from meshgate.sidecar.transcode import TranscodeError, Transcoder
from meshgate.sidecar.transform import compile_transform
from meshgate.sidecar.transform_responses import compile_pattern, compile_response
from meshgate.v1 import resources_pb2

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
