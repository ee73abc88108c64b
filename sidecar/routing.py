"""The route table: compiled once per snapshot, matched per request with no I/O.

Stage by path prefix `/{stage}` (or `/{basePath}/{stage}`) or by a host
mapping; then method + path template (literal > `{param}` > greedy
`{proxy+}`, `ANY`). Each route carries its filter chain and its integration;
a miss is a value (404/405/500/503) carrying the Api's own miss chain.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from meshgate.sidecar import respond
from meshgate.sidecar.canary import CanaryChooser
from meshgate.sidecar.filters.policy import in_networks, parse_networks
from meshgate.sidecar.integrations import (
    CompileError,
    Integration,
    RouteError,
    RouteSpec,
    compile_integration,
)
from meshgate.sidecar.integrations.http import HttpIntegration  # (the one type with a transform)
from meshgate.sidecar.pipeline import EMPTY_CHAIN, Chain, ChainBuilder, StageFilters
from meshgate.sidecar.responses import ApiResponses, compile_responses
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.wsapi import NO_IDS, ConnectionIds
from meshgate.v1 import control_pb2, resources_pb2

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext

__all__ = ["EMPTY_TABLE", "CompileError", "Miss", "Route", "RouteTable", "TableHolder", "compile_snapshot"]


@dataclass(frozen=True, slots=True)
class Route:
    """One route of one deployment, compiled for one stage (stage variables substituted)."""

    api: str  # namespace/name
    stage: str
    deployment_id: int
    canary: bool
    method: str
    resource: str  # the path template, /pets/{id}
    stage_variables: Mapping[str, str]
    chain: Chain
    integration: Integration | None  # None: `error` says why the route cannot be called
    responses: ApiResponses | None = None  # the Api's gateway-response overrides
    trace_ratio: float = 0.0  # the stage's tracing sample ratio
    access_log: str = ""  # the stage's access log format ("" = off, "json" = JSON lines)
    error: str = ""
    error_detail: bool = False  # the stage gives error reasons to every caller, not only the cluster's
    ports: frozenset[int] = frozenset()  # served only on these app ports (empty: every port)
    needs_body: bool = field(init=False, default=False)
    headers: bytes = field(init=False, default=b"")  # the gateway's own response headers for this route

    def __post_init__(self) -> None:
        integ = self.integration
        object.__setattr__(self, "needs_body", integ is not None and integ.needs_body)
        object.__setattr__(self, "headers", respond.route_headers(self.deployment_id, self.canary))

    @property
    def key(self) -> str:
        return f"{self.method} {self.resource}"


@dataclass(frozen=True, slots=True)
class Miss:
    status: int
    reason: str
    allow: str = ""
    responses: ApiResponses | None = None
    chain: Chain = EMPTY_CHAIN  # the Api's own steps (private endpoint, policy, CORS) when the Api is known


@dataclass(slots=True)
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    param: tuple[str, _Node] | None = None
    greedy: tuple[str, dict[str, Route]] | None = None
    methods: dict[str, Route] = field(default_factory=dict)


def _lookup(
    node: _Node, segs: list[str], i: int, params: dict[str, str], tail_at: list[int] | None = None
) -> dict[str, Route] | None:
    """Depth-first match with backtracking: literal, then {param}, then {proxy+} (whose first segment's
    index goes into `tail_at`)."""
    if i == len(segs):
        return node.methods or None
    seg = segs[i]
    child = node.literal.get(seg)
    if child is not None:
        found = _lookup(child, segs, i + 1, params, tail_at)
        if found is not None:
            return found
    if node.param is not None and seg:
        name, child = node.param
        found = _lookup(child, segs, i + 1, params, tail_at)
        if found is not None:
            params[name] = seg
            return found
    if node.greedy is not None:
        name, methods = node.greedy
        params[name] = "/".join(segs[i:])
        if tail_at is not None:
            tail_at.append(i)
        return methods
    return None


@dataclass(slots=True)
class _Side:
    """One deployment of a stage (the base or the canary): its route trie and the Api's miss chains."""

    root: _Node
    deployment_id: int
    responses: ApiResponses | None = None
    not_found: Chain = EMPTY_CHAIN
    not_allowed: Chain = EMPTY_CHAIN


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


def _insert(root: _Node, route: Route, api: str) -> None:
    node = root
    segs = _split_path(route.resource)
    path = route.resource
    for i, seg in enumerate(segs):
        if seg.startswith("{") and seg.endswith("+}"):
            if i != len(segs) - 1:
                raise CompileError(f"route {path}: greedy parameter must be last")
            name = seg[1:-2]
            if node.greedy is None:
                node.greedy = (name, {})
            elif node.greedy[0] != name:
                raise CompileError(f"route {path}: conflicting greedy parameter names")
            methods = node.greedy[1]
            break
        if seg.startswith("{") and seg.endswith("}"):
            name = seg[1:-1]
            if node.param is None:
                node.param = (name, _Node())
            elif node.param[0] != name:
                raise CompileError(
                    f"route {path} of {api}: parameter {{{name}}} conflicts with "
                    f"{{{node.param[0]}}} at the same position"
                )
            node = node.param[1]
        else:
            node = node.literal.setdefault(unquote(seg), _Node())
    else:
        methods = node.methods
    if route.method in methods:
        raise CompileError(f"route {route.method} {path} of {api} is defined twice")
    methods[route.method] = route


def _build_side(
    deployment: resources_pb2.Deployment,
    *,
    stage: str,
    api: str,
    canary: bool,
    variables: Mapping[str, str],
    filters: StageFilters,
    trace_ratio: float = 0.0,
    access_log: str = "",
    error_detail: bool = False,
) -> _Side:
    spec = deployment.spec.api_spec
    responses = compile_responses(spec)
    api_filters = filters.api_filters(spec, responses)
    side = _Side(
        _Node(),
        deployment.id,
        responses,
        filters.miss_chain(api_filters, preflight=False),
        filters.miss_chain(api_filters, preflight=True),
    )
    binary = tuple(spec.binary_media_types)
    for r in spec.routes:
        where = f"route {r.method} {r.path} of {api} (stage {stage!r})"
        rspec = RouteSpec(r, stage, api, variables, binary, filters.runtime, spec.template_language)
        error = ""
        integration: Integration | None = None
        try:
            integration = compile_integration(rspec)
        except RouteError as exc:
            error = str(exc)
        transform = integration.transform if isinstance(integration, HttpIntegration) else None
        try:
            chain = filters.route_chain(spec, r, api_filters, transform)
        except (ValueError, KeyError) as exc:
            raise CompileError(f"{where}: {exc}") from None
        route = Route(
            api,
            stage,
            deployment.id,
            canary,
            r.method.upper(),
            r.path,
            variables,
            chain,
            integration,
            responses,
            trace_ratio,
            access_log,
            error,
            error_detail,
            frozenset(r.ports),
        )
        _insert(side.root, route, api)
    return side


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
        self.connection_ids = NO_IDS  # @connections: the shared id key and the owners control lists

    def shows_reason(self, route: Route | None, source_ip: str) -> bool:
        """Whether an error's reason (upstream address, failing step) may go to this caller: one inside
        the cluster networks, or any caller of a stage with `errorDetail: true`."""
        return (route is not None and route.error_detail) or in_networks(source_ip, self.cluster_nets)

    @property
    def stage_count(self) -> int:
        return len({id(s) for s in self._prefixes.values()} | {id(s) for s in self._hosts.values()})

    def resolve_grpc(self, ctx: RequestContext) -> Route | Miss:
        """A gRPC call with neither a host mapping nor x-meshgate-stage: the one stage serving gRPC."""
        method_path = ctx.path
        if len(self._grpc_stages) != 1:
            if not self._grpc_stages:
                return Miss(404, f"no gRPC routes on this sidecar for {method_path}")
            names = ", ".join(sorted(s.name for s in self._grpc_stages))
            return Miss(404, f"several stages serve gRPC ({names}): send x-meshgate-stage metadata")
        st = self._grpc_stages[0]
        params: dict[str, str] = {}
        methods = _lookup(st.base.root, _split_path(method_path), 0, params) or {}
        route = methods.get("POST") or methods.get("ANY")
        if route is None:
            return Miss(404, f"no route for gRPC method {method_path} in stage {st.name!r}")
        if route.ports and ctx.port not in route.ports:
            return Miss(404, f"gRPC method {method_path} is served on port(s) {sorted(route.ports)} only")
        ctx.params = params
        ctx.stage_path = method_path
        return route

    def resolve(self, ctx: RequestContext) -> Route | Miss:
        """Match the request; the route's parameters, stage-relative path and canary choice go into `ctx`."""
        if self._empty_reason:
            return Miss(503, self._empty_reason)
        path = ctx.path
        stage: _Stage | None = None
        rest = path
        if self._hosts:
            host = ctx.host
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
            and stage.chooser.is_canary(ctx.headers, ctx.request_id)
        ):
            side = stage.canary
        segs = _split_path(rest)
        params: dict[str, str] = {}
        if "%" in rest:
            raw = segs
            segs = [unquote(s) for s in segs]
            tail_at: list[int] = []
            methods = _lookup(side.root, segs, 0, params, tail_at)
            if tail_at:  # a greedy value is forwarded as it came (normalised): %2F stays one segment
                ctx.raw_tail = "/".join(raw[tail_at[0] :])
        else:
            methods = _lookup(side.root, segs, 0, params)
        ctx.stage_path = rest
        method = ctx.method
        if methods is None:
            reason = f"no route for {method} {rest} in stage {stage.name!r}"
            return Miss(404, reason, responses=side.responses, chain=side.not_found)
        route = methods.get(method) or methods.get("ANY")
        if route is None:
            if method == "HEAD" and "GET" in methods:
                route = methods["GET"]
            else:
                reason = f"method {method} not allowed for {rest} in stage {stage.name!r}"
                allow = ", ".join(sorted(m for m in methods))
                return Miss(405, reason, allow, responses=side.responses, chain=side.not_allowed)
        if route.ports and ctx.port not in route.ports:
            reason = f"{route.key} in stage {stage.name!r} is served on port(s) {sorted(route.ports)} only"
            return Miss(404, reason, responses=side.responses, chain=side.not_found)
        if route.error:
            return Miss(500, route.error, responses=side.responses)
        ctx.params = params
        return route


def compile_snapshot(snapshot: control_pb2.Snapshot, runtime: Runtime | None = None) -> RouteTable:
    """Build the route table for a snapshot, or raise CompileError naming the conflict.

    Filters bind to `runtime`'s long-lived state (buckets, caches, authorizers);
    without one, a fresh Runtime (tests, control's validation).
    """
    builder = ChainBuilder(snapshot, runtime or Runtime())
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
        try:
            filters = builder.for_stage(bundle)
        except ValueError as exc:
            raise CompileError(str(exc)) from None
        spec = bundle.stage.spec
        build = functools.partial(
            _build_side,
            stage=name,
            api=api,
            filters=filters,
            trace_ratio=spec.tracing_sample_ratio,
            access_log=spec.access_log_format,
            error_detail=spec.error_detail,
        )
        base = build(bundle.deployment, canary=False, variables=variables)
        canary_side = None
        chooser = None
        c = spec.canary
        if bundle.HasField("canary_deployment") and c.percent > 0:
            cvars = {**variables, **dict(c.variables)}
            canary_side = build(bundle.canary_deployment, canary=True, variables=cvars)
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
    table.connection_ids = ConnectionIds.from_snapshot(snapshot)
    return table


EMPTY_TABLE = RouteTable("", {}, {}, empty_reason="no configuration applied yet")


class TableHolder:
    """The one reference the listener reads per request; the config client swaps it."""

    __slots__ = ("table",)

    def __init__(self, table: RouteTable = EMPTY_TABLE) -> None:
        self.table = table
