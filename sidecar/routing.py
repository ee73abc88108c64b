"""The route table: compiled once per snapshot, matched per request with no I/O.

Stage by path prefix `/{stage}` (or `/{basePath}/{stage}`) or by a host
mapping; then method + path template (literal > `{param}` > greedy
`{proxy+}`, `ANY`). A miss is a value (404/405/500/503), not an exception.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from meshgate.sidecar.canary import CanaryChooser
from meshgate.sidecar.function import FunctionIntegration
from meshgate.sidecar.mapping import (
    MappingError,
    ParamMapping,
    RequestValues,
    compile_parameters,
    quote_param,
    substitute_stage_vars,
)
from meshgate.sidecar.phase import PhaseBuilder, PhaseFactory, RoutePhase, Runtime, parse_networks
from meshgate.sidecar.responses import ApiResponses, compile_responses
from meshgate.sidecar.transcode import TranscodeError, Transcoder
from meshgate.sidecar.transform import Transform, compile_transform
from meshgate.sidecar.websocket import WebSocketIntegration
from meshgate.sidecar.wsapi import WebSocketApi, WsRoute, compile_selection
from meshgate.v1 import control_pb2, resources_pb2

_URI_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}")


class CompileError(Exception):
    """A snapshot this sidecar cannot serve (the reason is sent back as a NACK)."""


@dataclass(slots=True)
class Target:
    """A fully resolved integration call for one request."""

    kind: str  # "http" | "mock"
    stage: str
    api: str
    deployment_id: int
    canary: bool
    method: bytes = b""
    host: str = ""
    port: int = 0
    target: bytes = b""
    set_headers: tuple[tuple[bytes, bytes], ...] = ()
    timeout_s: float = 29.0
    connect_timeout_s: float = 1.0
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    phase: RoutePhase | None = None  # request-phase steps for this route (None: nothing to check)
    late_headers: tuple[tuple[bytes, str], ...] = ()  # header <- context.authorizer.KEY
    responses: ApiResponses | None = None  # CORS and gateway-response overrides of the Api
    function: FunctionIntegration | None = None
    transform: Transform | None = None
    ws: WebSocketIntegration | None = None
    transcoder: Transcoder | None = None
    wsapi: WebSocketApi | None = None
    trace_ratio: float = 0.0  # the stage's tracing sample ratio
    access_log: str = ""  # the stage's access log format ("" = off, "json" = JSON lines)
    needs_body: bool = False  # validation, templates, functions, transcoding: the whole body first
    params: dict[str, str] | None = None
    path: str = ""  # stage-relative request path


@dataclass(frozen=True, slots=True)
class Miss:
    status: int
    reason: str
    allow: str = ""
    responses: ApiResponses | None = None


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """One route of one deployment, compiled for one stage (stage variables already substituted)."""

    kind: str
    stage: str
    api: str
    deployment_id: int
    canary: bool
    resource_path: str
    error: str = ""
    method: bytes = b""
    host: str = ""
    port: int = 80
    path_parts: tuple[tuple[int, str], ...] = ()  # (0 literal | 1 param | 2 greedy param, text)
    uri_query: str = ""
    mapping: ParamMapping = field(default_factory=ParamMapping)
    timeout_s: float = 29.0
    connect_timeout_s: float = 1.0
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    phase: RoutePhase | None = None
    responses: ApiResponses | None = None
    function: FunctionIntegration | None = None
    transform: Transform | None = None
    ws: WebSocketIntegration | None = None
    transcoder: Transcoder | None = None
    wsapi: WebSocketApi | None = None
    trace_ratio: float = 0.0
    access_log: str = ""
    static_targets: dict[str, Target] = field(default_factory=dict)
    static: bool = field(init=False, default=False)
    needs_body: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "needs_body",
            self.kind == "function"
            or self.transcoder is not None
            or (self.transform is not None and self.transform.needs_request_body)
            or (self.phase is not None and self.phase.body_model is not None),
        )
        # No path parameters or mappings: without a query string the Target never varies (a transform
        # is shared config; its query removal only applies when there is a query).
        m = self.mapping
        static = (
            self.kind == "http"
            and not self.error
            and all(kind == 0 for kind, _ in self.path_parts)
            and not (m.headers or m.query or m.path or m.late_headers)
        )
        object.__setattr__(self, "static", static)

    def build(
        self,
        method: str,
        params: dict[str, str],
        query: str,
        headers: Mapping[str, str],
        request_id: str,
        path: str = "",
    ) -> Target | Miss:
        if self.error:
            return Miss(500, self.error, responses=self.responses)
        if self.kind != "http":
            # every kind but the HTTP proxy: the same target for every request but its params and path
            return Target(
                self.kind,
                self.stage,
                self.api,
                self.deployment_id,
                self.canary,
                host=self.host,
                port=self.port,
                timeout_s=self.timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                status=self.status,
                headers=self.headers,
                body=self.body,
                phase=self.phase,
                trace_ratio=self.trace_ratio,
                access_log=self.access_log,
                responses=self.responses,
                function=self.function,
                transcoder=self.transcoder,
                ws=self.ws,
                wsapi=self.wsapi,
                needs_body=self.needs_body,
                params=params,
                path=path,
            )
        if not query and self.static:
            cached = self.static_targets.get(method)
            if cached is not None:
                return cached
        m = self.mapping
        set_headers: tuple[tuple[bytes, bytes], ...] = ()
        if m.headers or m.query or m.path:
            values = RequestValues(
                method, params, dict(parse_qsl(query, keep_blank_values=True)), headers, request_id
            )
            hs = []
            for name, src in m.headers:
                v = values.get(src)
                if v is not None:
                    hs.append((name, v.encode("latin-1", "replace")))
            set_headers = tuple(hs)
            if m.path:
                params = dict(params)
                for pname, src in m.path:
                    v = values.get(src)
                    if v is not None:
                        params[pname] = v
            if m.query:
                extra = [(name, v) for name, src in m.query if (v := values.get(src)) is not None]
                if extra:
                    query = (query + "&" if query else "") + urlencode(extra)
        parts = []
        for kind, text in self.path_parts:
            if kind == 0:
                parts.append(text)
            else:
                parts.append(quote_param(params.get(text, ""), kind == 2))
        path = "".join(parts) or "/"
        tr = self.transform
        if tr is not None and tr.remove_request_query and query:
            query = urlencode(
                [
                    (k, v)
                    for k, v in parse_qsl(query, keep_blank_values=True)
                    if k not in tr.remove_request_query
                ]
            )
        if self.uri_query:
            query = self.uri_query + ("&" + query if query else "")
        target = path + "?" + query if query else path
        built = Target(
            "http",
            self.stage,
            self.api,
            self.deployment_id,
            self.canary,
            method=self.method or method.encode(),
            host=self.host,
            port=self.port,
            target=target.encode("latin-1", "replace"),
            set_headers=set_headers,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            phase=self.phase,
            trace_ratio=self.trace_ratio,
            access_log=self.access_log,
            late_headers=m.late_headers,
            responses=self.responses,
            transform=self.transform,
            needs_body=self.needs_body,
            params=params,
            path=path,
        )
        if not query and self.static and len(self.static_targets) < 16:
            self.static_targets[method] = built  # identical for every request: build once
        return built


@dataclass(slots=True)
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    responses: ApiResponses | None = None  # set on the root: the Api's response policy
    param: tuple[str, _Node] | None = None
    greedy: tuple[str, dict[str, RoutePlan]] | None = None
    methods: dict[str, RoutePlan] = field(default_factory=dict)


def _lookup(node: _Node, segs: list[str], i: int, params: dict[str, str]) -> dict[str, RoutePlan] | None:
    """Depth-first match with backtracking: literal, then {param}, then {proxy+}."""
    if i == len(segs):
        return node.methods or None
    seg = segs[i]
    child = node.literal.get(seg)
    if child is not None:
        found = _lookup(child, segs, i + 1, params)
        if found is not None:
            return found
    if node.param is not None and seg:
        name, child = node.param
        found = _lookup(child, segs, i + 1, params)
        if found is not None:
            params[name] = seg
            return found
    if node.greedy is not None:
        name, methods = node.greedy
        params[name] = "/".join(segs[i:])
        return methods
    return None


@dataclass(slots=True)
class _Side:
    root: _Node
    deployment_id: int


@dataclass(slots=True)
class _Stage:
    name: str
    api: str
    base: _Side
    canary: _Side | None
    chooser: CanaryChooser | None
    has_grpc: bool = False


def _split_path(path: str) -> list[str]:
    if path in ("", "/"):
        return []
    return path.strip("/").split("/")


def _compile_route(
    route: resources_pb2.Route,
    *,
    stage: str,
    api: str,
    deployment_id: int,
    canary: bool,
    variables: Mapping[str, str],
    phase: RoutePhase | None = None,
    responses: ApiResponses | None = None,
    binary_media_types: Sequence[str] = (),
    trace_ratio: float = 0.0,
    access_log: str = "",
) -> RoutePlan:
    integ = route.integration

    def plan(kind: str, **kw: Any) -> RoutePlan:
        return RoutePlan(
            kind,
            stage,
            api,
            deployment_id,
            canary,
            route.path,
            phase=phase,
            responses=responses,
            trace_ratio=trace_ratio,
            access_log=access_log,
            **kw,
        )

    where = f"route {route.method} {route.path} of {api} (stage {stage!r})"
    if integ.type == "mock":
        mock = integ.mock
        headers = tuple(
            (k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
            for k, v in sorted(mock.headers.items())
        )
        if not any(k == b"content-type" for k, _ in headers) and mock.body:
            headers = ((b"content-type", b"application/json"), *headers)
        return plan("mock", status=mock.status or 200, headers=headers, body=mock.body.encode())
    if integ.type == "websocket_api":
        ws_routes: dict[str, WsRoute] = {}
        for key, sub in sorted(integ.websocket_routes.items()):
            sub_uri, missing_var = substitute_stage_vars(sub.uri, variables)
            if missing_var is not None or not sub_uri.startswith("http://"):
                raise CompileError(f"{where}: websocket route {key!r} needs an http:// uri (got {sub.uri!r})")
            ws_routes[key] = WsRoute(sub_uri, (sub.timeout_ms or 29000) / 1000)
        try:
            selection = compile_selection(integ.route_selection_expression)
        except ValueError as exc:
            raise CompileError(f"{where}: {exc}") from None
        return plan(
            "websocket_api",
            wsapi=WebSocketApi(selection, ws_routes, integ.max_message_bytes or 128 * 1024),
        )
    if integ.type not in ("http", "function", "websocket", "grpc"):
        raise CompileError(f"{where}: unsupported integration type {integ.type!r}")
    uri, missing = substitute_stage_vars(integ.uri, variables)
    if missing is not None:
        return plan(integ.type, error=f"integration uri references undefined stage variable {missing!r}")
    if integ.type == "grpc":
        target = uri.split("://", 1)[1] if "://" in uri else uri
        host, _, port_s = target.rstrip("/").rpartition(":")
        if not host or not port_s.isdigit():
            raise CompileError(f"{where}: grpc integrations take grpc://HOST:PORT, got {integ.uri!r}")
        transcoder = None
        if integ.grpc_method:
            try:
                transcoder = Transcoder.compile(integ.grpc_method, integ.descriptor_set, integ.body)
            except TranscodeError as exc:
                raise CompileError(f"{where}: {exc}") from None
        return plan(
            "grpc",
            transcoder=transcoder,
            host=host.strip("[]"),
            port=int(port_s),
            timeout_s=(integ.timeout_ms or 29000) / 1000,
            connect_timeout_s=(integ.connect_timeout_ms or 1000) / 1000,
        )
    if integ.type == "websocket":
        if not uri.startswith("ws://"):
            raise CompileError(f"{where}: websocket integrations take a ws:// URL, got {integ.uri!r}")
        return plan(
            "websocket",
            ws=WebSocketIntegration(
                uri,
                (integ.idle_timeout_ms or 600_000) / 1000,
                (integ.max_duration_ms or 7_200_000) / 1000,
                integ.max_message_bytes or 128 * 1024,
            ),
            timeout_s=(integ.timeout_ms or 29000) / 1000,
            connect_timeout_s=(integ.connect_timeout_ms or 1000) / 1000,
        )
    if integ.type == "function":
        if not uri.startswith("http://"):
            raise CompileError(f"{where}: function integrations take an http:// URL, got {integ.uri!r}")
        version = integ.payload_format_version or "1.0"
        if version not in ("1.0", "2.0"):
            raise CompileError(f"{where}: payloadFormatVersion must be 1.0 or 2.0")
        return plan(
            "function",
            function=FunctionIntegration(
                uri,
                version,
                route.path,
                f"{route.method.upper()} {route.path}",
                stage,
                dict(variables),
                tuple(binary_media_types),
            ),
            timeout_s=(integ.timeout_ms or 29000) / 1000,
        )
    if not uri.startswith("http://"):
        raise CompileError(f"{where}: only http:// integration URIs are supported, got {integ.uri!r}")
    rest = uri[len("http://") :]
    authority, slash, path_and_query = rest.partition("/")
    path_template, _, uri_query = ("/" + path_and_query if slash else "/").partition("?")
    host, colon, port_s = authority.rpartition(":")
    if not colon:
        host, port_s = authority, "80"
    host = host.strip("[]")
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        return plan("http", error=f"integration uri has an invalid host or port: {uri!r}")
    parts: list[tuple[int, str]] = []
    pos = 0
    for m in _URI_PARAM.finditer(path_template):
        if m.start() > pos:
            parts.append((0, path_template[pos : m.start()]))
        name = m.group(1)
        greedy = bool(m.group(2)) or (name == "proxy" and route.path.rstrip("/").endswith("+}"))
        parts.append((2 if greedy else 1, name))
        pos = m.end()
    if pos < len(path_template):
        parts.append((0, path_template[pos:]))
    try:
        mapping = compile_parameters(integ.request_parameters, stage, variables, route.path)
    except MappingError as exc:
        raise CompileError(f"{where}: requestParameters: {exc}") from None
    try:
        transform = compile_transform(integ, variables, tuple(binary_media_types))
    except ValueError as exc:
        raise CompileError(f"{where}: {exc}") from None
    return plan(
        "http",
        method=integ.http_method.encode() if integ.http_method and integ.http_method != "ANY" else b"",
        host=host,
        port=int(port_s),
        path_parts=tuple(parts),
        uri_query=uri_query,
        mapping=mapping,
        timeout_s=(integ.timeout_ms or 29000) / 1000,
        connect_timeout_s=(integ.connect_timeout_ms or 1000) / 1000,
        transform=transform,
    )


def _build_trie(
    deployment: resources_pb2.Deployment,
    *,
    stage: str,
    api: str,
    canary: bool,
    variables: Mapping[str, str],
    phases: PhaseFactory | None = None,
    trace_ratio: float = 0.0,
    access_log: str = "",
) -> _Node:
    root = _Node()
    spec = deployment.spec.api_spec
    responses = compile_responses(spec)
    root.responses = responses
    for route in spec.routes:
        try:
            phase = phases(spec, route, variables) if phases is not None else None
        except (ValueError, KeyError) as exc:
            raise CompileError(
                f"route {route.method} {route.path} of {api} (stage {stage!r}): {exc}"
            ) from None
        plan = _compile_route(
            route,
            stage=stage,
            api=api,
            deployment_id=deployment.id,
            canary=canary,
            variables=variables,
            phase=phase,
            responses=responses,
            binary_media_types=spec.binary_media_types,
            trace_ratio=trace_ratio,
            access_log=access_log,
        )
        node = root
        segs = _split_path(route.path)
        method = route.method.upper()
        for i, seg in enumerate(segs):
            if seg.startswith("{") and seg.endswith("+}"):
                if i != len(segs) - 1:
                    raise CompileError(f"route {route.path}: greedy parameter must be last")
                name = seg[1:-2]
                if node.greedy is None:
                    node.greedy = (name, {})
                elif node.greedy[0] != name:
                    raise CompileError(f"route {route.path}: conflicting greedy parameter names")
                methods = node.greedy[1]
                break
            if seg.startswith("{") and seg.endswith("}"):
                name = seg[1:-1]
                if node.param is None:
                    node.param = (name, _Node())
                elif node.param[0] != name:
                    raise CompileError(
                        f"route {route.path} of {api}: parameter {{{name}}} conflicts with "
                        f"{{{node.param[0]}}} at the same position"
                    )
                node = node.param[1]
            else:
                node = node.literal.setdefault(unquote(seg), _Node())
        else:
            methods = node.methods
        if method in methods:
            raise CompileError(f"route {method} {route.path} of {api} is defined twice")
        methods[method] = plan
    return root


class RouteTable:
    """Immutable once built; `resolve` is the per-request entry point."""

    def __init__(
        self,
        version: str,
        prefixes: dict[str, _Stage],
        hosts: dict[str, _Stage],
        empty_reason: str = "",
    ) -> None:
        self.version = version
        self._prefixes = prefixes
        self._hosts = hosts
        self._two_segment = any("/" in p.strip("/") for p in prefixes)
        seen: set[int] = set()
        self._grpc_stages = []
        for st in prefixes.values():
            if st.has_grpc and id(st) not in seen:
                seen.add(id(st))
                self._grpc_stages.append(st)
        self._empty_reason = empty_reason
        self._stage_names = ", ".join(sorted({s.name for s in prefixes.values()})) or "none"
        self.cluster_nets: tuple[Any, ...] = ()  # where @connections calls may come from

    @property
    def stage_count(self) -> int:
        return len({id(s) for s in self._prefixes.values()} | {id(s) for s in self._hosts.values()})

    def resolve_grpc(self, method_path: str, headers: Mapping[str, str], request_id: str) -> Target | Miss:
        """A gRPC call with neither a host mapping nor x-meshgate-stage: the one stage serving gRPC."""
        if len(self._grpc_stages) != 1:
            if not self._grpc_stages:
                return Miss(404, f"no gRPC routes on this sidecar for {method_path}")
            names = ", ".join(sorted(s.name for s in self._grpc_stages))
            return Miss(404, f"several stages serve gRPC ({names}): send x-meshgate-stage metadata")
        st = self._grpc_stages[0]
        segs = _split_path(method_path)
        params: dict[str, str] = {}
        methods = _lookup(st.base.root, segs, 0, params)
        plan = (methods or {}).get("POST") or (methods or {}).get("ANY")
        if plan is None:
            return Miss(404, f"no route for gRPC method {method_path} in stage {st.name!r}")
        return plan.build("POST", params, "", headers, request_id, method_path)

    def resolve(
        self, host: str, method: str, path: str, query: str, headers: Mapping[str, str], request_id: str
    ) -> Target | Miss:
        if self._empty_reason:
            return Miss(503, self._empty_reason)
        stage: _Stage | None = None
        rest = path
        if self._hosts:
            stage = self._hosts.get(host.rsplit(":", 1)[0].lower() if host else "")
        if stage is None:
            first, _, tail = path[1:].partition("/")
            stage = self._prefixes.get(first)
            rest = "/" + tail
            if stage is None and self._two_segment:
                second, _, tail2 = tail.partition("/")
                stage = self._prefixes.get(first + "/" + second)
                rest = "/" + tail2
            if stage is None:
                return Miss(404, f"no stage {unquote(first)!r} on this sidecar (stages: {self._stage_names})")
        side = stage.base
        if (
            stage.canary is not None
            and stage.chooser is not None
            and stage.chooser.is_canary(headers, request_id)
        ):
            side = stage.canary
        segs = _split_path(rest)
        if "%" in rest:
            segs = [unquote(s) for s in segs]
        params: dict[str, str] = {}
        methods = _lookup(side.root, segs, 0, params)
        if methods is None:
            return Miss(
                404, f"no route for {method} {rest} in stage {stage.name!r}", responses=side.root.responses
            )
        plan = methods.get(method) or methods.get("ANY")
        if plan is None:
            if method == "HEAD" and "GET" in methods:
                plan = methods["GET"]
            else:
                allow = ", ".join(sorted(m for m in methods))
                return Miss(
                    405,
                    f"method {method} not allowed for {rest} in stage {stage.name!r}",
                    allow,
                    responses=side.root.responses,
                )
        return plan.build(method, params, query, headers, request_id, rest)


def compile_snapshot(snapshot: control_pb2.Snapshot, runtime: Runtime | None = None) -> RouteTable:
    """Build the route table for a snapshot, or raise CompileError naming the conflict.

    With a `runtime`, routes get their request phase (policies, authorizers,
    API keys, throttling, cache) bound to the runtime's long-lived state.
    """
    builder = PhaseBuilder(snapshot, runtime) if runtime is not None else None
    prefixes: dict[str, _Stage] = {}
    hosts: dict[str, _Stage] = {}
    owners: dict[str, str] = {}
    for bundle in snapshot.stages:
        if not bundle.HasField("deployment") or not bundle.deployment.id:
            continue
        api_meta = bundle.api.metadata
        api = f"{api_meta.namespace or 'default'}/{api_meta.name}"
        name = bundle.stage.metadata.name
        variables = dict(bundle.stage.spec.variables)
        phases = builder.for_stage(bundle) if builder is not None else None
        spec = bundle.stage.spec
        build = functools.partial(
            _build_trie,
            stage=name,
            api=api,
            phases=phases,
            trace_ratio=spec.tracing_sample_ratio,
            access_log=spec.access_log_format,
        )
        base = _Side(build(bundle.deployment, canary=False, variables=variables), bundle.deployment.id)
        canary_side = None
        chooser = None
        c = spec.canary
        if bundle.HasField("canary_deployment") and c.percent > 0:
            cvars = {**variables, **dict(c.variables)}
            canary_side = _Side(
                build(bundle.canary_deployment, canary=True, variables=cvars), bundle.canary_deployment.id
            )
            chooser = CanaryChooser(round(c.percent * 100), c.sticky_header.lower(), c.sticky_cookie)
        st = _Stage(name, api, base, canary_side, chooser)
        st.has_grpc = any(r.integration.type == "grpc" for r in bundle.deployment.spec.api_spec.routes)
        base_path = bundle.api.spec.base_path.strip("/")
        prefix = f"{base_path}/{name}" if base_path else name
        if prefix in prefixes:
            raise CompileError(
                f"stage prefix /{prefix} is claimed by both {owners[prefix]} and {api} (stage {name!r})"
            )
        prefixes[prefix] = st
        owners[prefix] = api
        for h in bundle.stage.spec.hosts:
            h = h.lower()
            if h in hosts:
                raise CompileError(
                    f"host {h} is mapped by both stage {hosts[h].name!r} of {hosts[h].api} and {name!r} of {api}"
                )
            hosts[h] = st
    table = RouteTable(snapshot.version, prefixes, hosts)
    table.cluster_nets = parse_networks(snapshot.cluster_cidrs)
    return table


EMPTY_TABLE = RouteTable("", {}, {}, empty_reason="no configuration applied yet")


class TableHolder:
    """The one reference the listener reads per request; the config client swaps it."""

    __slots__ = ("table",)

    def __init__(self, table: RouteTable = EMPTY_TABLE) -> None:
        self.table = table
