"""The request pipeline's order, written once, and the filter chains compiled per route from a snapshot.

    policy -> cors -> authorizer -> api_key -> throttle -> validation -> cache -> transform

Request side in that order (the first refusal wins); the response side runs
the other way: transform -> cache store -> CORS headers -> gateway-response
mapping -> telemetry. The HTTP/1.1 listener, the WebSocket upgrade and the
gRPC listener all run the same `Chain` objects.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshgate.sidecar.authorizers import JwtAuthorizer, RequestAuthorizer
from meshgate.sidecar.cache import ResponseCache
from meshgate.sidecar.errors import GatewayError
from meshgate.sidecar.filters import Answer, Decision, Filter, Pending
from meshgate.sidecar.filters.api_key import ApiKeyFilter, KeyInfo, api_key_mac
from meshgate.sidecar.filters.authorizer import AuthorizerFilter
from meshgate.sidecar.filters.cache import CacheFilter
from meshgate.sidecar.filters.cors import CorsFilter
from meshgate.sidecar.filters.policy import PolicyFilter, parse_networks
from meshgate.sidecar.filters.throttle import ThrottleFilter
from meshgate.sidecar.filters.transform import TransformFilter
from meshgate.sidecar.filters.validation import BodyModelFilter, RequiredParamsFilter
from meshgate.sidecar.responses import ApiResponses
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.throttle import DEFAULT_BURST, DEFAULT_RATE, Limit
from meshgate.sidecar.transform import Transform
from meshgate.sidecar.validation import BodyModel
from meshgate.v1 import control_pb2, resources_pb2

if TYPE_CHECKING:
    from meshgate.sidecar.context import RequestContext
    from meshgate.sidecar.metrics import Metrics

ORDER = ("policy", "cors", "authorizer", "api_key", "throttle", "validation", "cache", "transform")
_RANK = {name: i for i, name in enumerate(ORDER)}


class Suspend:
    """The chain stopped before filter `pos`: it needs the whole request body (`awaitable` None), or
    filter `pos` must await I/O (its Pending's awaitable) before its decision is known."""

    __slots__ = ("awaitable", "pos")

    def __init__(self, pos: int, awaitable: Awaitable[Decision] | None) -> None:
        self.pos = pos
        self.awaitable = awaitable


@dataclass(frozen=True, slots=True)
class Chain:
    """One route's filters, in ORDER, built once per snapshot."""

    filters: tuple[Filter, ...]
    transform: TransformFilter | None = None  # the transform filter, when it has a response side
    spanned: bool = False  # more than a token bucket: traced as a "request phase" span
    has_authorizer: bool = False

    @classmethod
    def of(cls, filters: list[Filter]) -> Chain:
        ordered = tuple(sorted(filters, key=lambda f: _RANK[f.name]))  # stable: same-step filters keep order
        # the response side only where there is response work (header mapping, a response template)
        transform = next((f for f in ordered if isinstance(f, TransformFilter) and f.on_response), None)
        # the old "fast path": a bucket, CORS, a body model or a transform alone get no phase span
        spanned = any(not isinstance(f, _UNSPANNED) for f in ordered)
        authorizer = any(f.name == "authorizer" for f in ordered)
        return cls(ordered, transform, spanned, authorizer)

    @property
    def needs_body(self) -> bool:
        return any(f.needs_body for f in self.filters)

    def run(self, ctx: RequestContext, start: int = 0) -> GatewayError | Answer | Suspend | None:
        """Run filters from `start` until one decides: its refusal or answer, a `Suspend` (wait for the
        body, or for I/O), or None when every filter let the request through."""
        pos = start
        for f in self.filters[start:] if start else self.filters:
            if f.needs_body and not ctx.body_complete:
                return Suspend(pos, None)
            decision = f.request(ctx)
            if decision is not None:
                if isinstance(decision, Pending):
                    return Suspend(pos, decision.awaitable)
                return decision
            pos += 1
        return None

    async def run_to_end(self, ctx: RequestContext) -> GatewayError | Answer | None:
        """The whole chain for a caller that may await (the gRPC listener): its final decision.
        The body is never waited for here: the caller has it (or it is a stream of messages)."""
        decision = self.run(ctx)
        while isinstance(decision, Suspend):
            if decision.awaitable is None:
                return None  # a body wait: not on this path
            pos = decision.pos
            decided = await decision.awaitable
            decision = self.run(ctx, pos + 1) if decided is None else decided  # type: ignore[assignment]
        return decision

    def begin_span(self, ctx: RequestContext) -> None:
        """The "request phase" span, for a sampled request whose chain does more than a bucket."""
        if ctx.trace is not None and self.spanned:
            ctx.trace.start_child("request phase", **{"meshgate.authorizer": self.has_authorizer})

    def end_span(
        self, ctx: RequestContext, decision: Decision, metrics: Metrics | None, key: tuple[str, str, str]
    ) -> None:
        """The request phase is over: its span ends, the authorizer's latency is recorded."""
        span = ctx.trace
        if span is not None and self.spanned and span.child is not None:
            if ctx.cache_header:
                span.child.set_attribute("meshgate.cache", ctx.cache_header.decode())
            span.end_child(decision.reason if isinstance(decision, GatewayError) else "")
        if ctx.authorizer_s and metrics is not None:
            metrics.authorizer_latency[key].observe(ctx.authorizer_s)


EMPTY_CHAIN = Chain(())
_UNSPANNED = (ThrottleFilter, TransformFilter, CorsFilter, BodyModelFilter)


def _limit(rate: float, burst: int) -> Limit | None:
    if rate <= 0:
        return None
    return Limit(rate, burst or max(1, math.ceil(rate)))


def _hex(value: str) -> bytes | None:
    try:
        return bytes.fromhex(value) if value else None
    except ValueError:
        return None


def identity_source(spec: str) -> tuple[str, str]:
    """An API Gateway identity source -> (kind, name)."""
    for prefix, kind in (
        ("method.request.header.", "header"),
        ("method.request.querystring.", "query"),
        ("stageVariables.", "stage"),
    ):
        if spec.startswith(prefix):
            name = spec[len(prefix) :]
            return kind, name.lower() if kind == "header" else name
    if spec in ("context.sourceIp", "context.identity.sourceIp"):
        return "ip", ""
    raise ValueError(f"unsupported identity source {spec!r}")


@dataclass
class StageFilters:
    """What every route of one stage shares: keys, limits, the cache; builds each route's chain."""

    runtime: Runtime
    api: str
    stage: str
    keys: Mapping[bytes, KeyInfo]
    stage_limit: Limit
    replicas: int
    cache: ResponseCache | None
    cache_methods: frozenset[str]
    invalidation: str
    builder: ChainBuilder = field(repr=False)

    def api_filters(self, spec: resources_pb2.ApiSpec, responses: ApiResponses | None) -> list[Filter]:
        """The Api-wide steps (policy, CORS): they run for misses of the Api's paths too."""
        out: list[Filter] = []
        pol = spec.resource_policy
        policy = PolicyFilter(
            self.api,
            parse_networks(pol.allow_cidrs),
            parse_networks(pol.deny_cidrs),
            self.builder.cluster if spec.endpoint_type == "private" else None,
            spec.escaped_slashes_action == "REJECT_REQUEST",
        )
        if policy.active:
            out.append(policy)
        if responses is not None and responses.cors is not None:
            out.append(CorsFilter(responses.cors))
        return out

    def miss_chain(self, api_filters: list[Filter], preflight: bool) -> Chain:
        """The chain for a path of this Api with no such route (404) or no such method (405): only the
        Api-wide steps; a preflight is answered only where the path exists."""
        filters = [
            CorsFilter(f.policy, preflight_ok=preflight) if isinstance(f, CorsFilter) else f
            for f in api_filters
        ]
        return Chain.of(filters)

    def route_chain(
        self,
        spec: resources_pb2.ApiSpec,
        route: resources_pb2.Route,
        api_filters: list[Filter],
        transform: Transform | None,
    ) -> Chain:
        route_key = f"{route.method.upper()} {route.path}"
        filters: list[Filter] = list(api_filters)
        if route.authorizer:
            conf = next((a for a in spec.authorizers if a.name == route.authorizer), None)
            if conf is None:
                raise ValueError(f"authorizer {route.authorizer!r} is not declared")
            filters.append(
                AuthorizerFilter(self.builder.authorizer(self.api, conf), tuple(route.authorization_scopes))
            )
        if route.api_key_required:
            filters.append(ApiKeyFilter(self.keys, self.builder.api_key_hash_key))
        filters.append(self._throttle(route, route_key))
        if route.required_parameters:
            filters.append(RequiredParamsFilter(tuple(identity_source(p) for p in route.required_parameters)))
        if route.request_model:
            model = next((m for m in spec.models if m.name == route.request_model), None)
            if model is None:
                raise ValueError(f"model {route.request_model!r} is not declared")
            filters.append(
                BodyModelFilter(BodyModel.compile(model.name, model.content_type, model.schema_json))
            )
        if self.cache is not None:
            params = tuple(identity_source(p) for p in route.cache_key_parameters)
            # RFC 9111 §3.5: an authorized response is the caller's unless the route says it is shared
            per_caller = (bool(route.authorizer) or route.api_key_required) and not route.cache_shared
            filters.append(
                CacheFilter(
                    self.cache,
                    self.api,
                    self.stage,
                    self.cache_methods,
                    params,
                    self.invalidation,
                    per_caller,
                )
            )
        if transform is not None:
            filters.append(TransformFilter.of(transform))
        return Chain.of(filters)

    def _throttle(self, route: resources_pb2.Route, route_key: str) -> ThrottleFilter:
        limiter = self.runtime.limiter
        route_limit = _limit(route.throttling.rate_limit, route.throttling.burst_limit)
        if route_limit is not None:
            bucket = limiter.bucket(
                f"route/{self.api}/{self.stage}/{route_key}", route_limit.divided(self.replicas)
            )
            scope = f"route {route_key}"
        else:
            bucket = limiter.bucket(f"stage/{self.api}/{self.stage}", self.stage_limit)
            scope = f"stage {self.stage}"
        return ThrottleFilter(
            bucket, scope, limiter, self.runtime.quotas, self.api, self.stage, self.replicas
        )


class ChainBuilder:
    """Compiles the filter chains of every route of a snapshot against a Runtime."""

    def __init__(self, snapshot: control_pb2.Snapshot, runtime: Runtime) -> None:
        self.runtime = runtime
        self.cluster = parse_networks(snapshot.cluster_cidrs)
        plans = {(p.metadata.namespace or "default", p.metadata.name): p for p in snapshot.usage_plans}
        # without control's key (a control from before keyed hashes) a key of this snapshot's own
        # lets the old bare-sha256 entries work with the same one HMAC per request
        self.api_key_hash_key = bytes(snapshot.api_key_hash_key) or secrets.token_bytes(32)
        # (namespace, api, stage or "*") -> {api_key_mac of the key: KeyInfo}
        self.keys: dict[tuple[str, str, str], dict[bytes, KeyInfo]] = {}
        for k in snapshot.api_keys:
            ns = k.metadata.namespace or "default"
            plan = plans.get((ns, k.spec.usage_plan))
            mac = self._mac(k.spec, bool(snapshot.api_key_hash_key))
            if plan is None or not k.spec.enabled or mac is None:
                continue
            q = plan.spec.quota
            info = KeyInfo(
                k.metadata.name,
                plan.metadata.name,
                _limit(plan.spec.throttle.rate_limit, plan.spec.throttle.burst_limit),
                int(q.limit),
                q.period or "DAY",
            )
            for ref in plan.spec.apis:
                api, _, stage = ref.partition("/")
                self.keys.setdefault((ns, api, stage or "*"), {})[mac] = info

    def _mac(self, spec: resources_pb2.ApiKeySpec, keyed: bool) -> bytes | None:
        """The key's api_key_mac: control's value_hmac, or computed here from an old bare sha256."""
        if spec.value_hmac:
            return _hex(spec.value_hmac) if keyed else None
        sha = _hex(spec.value_sha256)
        return api_key_mac(self.api_key_hash_key, sha) if sha is not None else None

    def for_stage(self, bundle: control_pb2.StageBundle) -> StageFilters:
        ns = bundle.api.metadata.namespace or "default"
        api_name = bundle.api.metadata.name
        api = f"{ns}/{api_name}"
        stage = bundle.stage.metadata.name
        spec = bundle.stage.spec
        replicas = max(1, bundle.replicas)
        keys = {**self.keys.get((ns, api_name, "*"), {}), **self.keys.get((ns, api_name, stage), {})}
        keys = {
            h: KeyInfo(i.name, i.plan, i.limit.divided(replicas) if i.limit else None, i.quota, i.period)
            for h, i in keys.items()
        }
        stage_limit = (
            _limit(spec.throttling.rate_limit, spec.throttling.burst_limit)
            or Limit(DEFAULT_RATE, DEFAULT_BURST)
        ).divided(replicas)
        cache: ResponseCache | None = None
        c = spec.cache
        if c.enabled:
            if c.encrypted and self.runtime.cache_key is None:
                raise ValueError(
                    f"stage {stage!r} of {api} wants an encrypted cache but this sidecar has no cache key "
                    "(--cache-key-file or MESHGATE_CACHE_KEY)"
                )
            ttl = c.ttl_seconds if c.HasField("ttl_seconds") else 300
            capacity = c.capacity_bytes or 64 * 1024 * 1024
            config = (capacity, ttl, c.encrypted, c.flush_epoch)
            cache = self.runtime.stage_cache((api, stage), config, capacity, ttl, c.encrypted)
        return StageFilters(
            runtime=self.runtime,
            api=api,
            stage=stage,
            keys=keys,
            stage_limit=stage_limit,
            replicas=replicas,
            cache=cache,
            cache_methods=frozenset(m.upper() for m in c.methods) or frozenset({"GET"}),
            invalidation=c.invalidation or "require_authorization",
            builder=self,
        )

    def authorizer(self, api: str, conf: resources_pb2.Authorizer) -> JwtAuthorizer | RequestAuthorizer:
        if conf.type == "jwt":
            return self._jwt(conf)
        if conf.type not in ("request", "token"):
            raise ValueError(f"authorizer {conf.name!r}: unsupported type {conf.type!r}")
        if not conf.uri:
            raise ValueError(f"authorizer {conf.name!r} has no uri")
        sources = tuple(identity_source(x) for x in conf.identity_sources) or (("header", "authorization"),)
        if conf.type == "token" and (len(sources) != 1 or sources[0][0] != "header"):
            raise ValueError(f"token authorizer {conf.name!r} takes exactly one header identity source")
        ttl = min(3600, conf.result_ttl_seconds) if conf.HasField("result_ttl_seconds") else 300
        timeout = (conf.timeout_ms or 5000) / 1000
        key = (api, conf.name, conf.type, conf.uri, sources, ttl, timeout)
        return self.runtime.request_authorizer(
            key,
            lambda: RequestAuthorizer(
                conf.name, conf.type, conf.uri, sources, float(ttl), timeout, self.runtime.session
            ),
        )

    def _jwt(self, conf: resources_pb2.Authorizer) -> JwtAuthorizer:
        header = "authorization"
        if conf.identity_sources:
            kind, header = identity_source(conf.identity_sources[0])
            if kind != "header":
                raise ValueError(f"jwt authorizer {conf.name!r}: the token must come from a header")
        if not conf.jwks_uri:
            raise ValueError(f"jwt authorizer {conf.name!r} has no jwksUri")
        algs = frozenset(conf.algorithms) or frozenset({"RS256", "ES256"})
        bad = [a for a in algs if a.upper().startswith("HS") or a.lower() == "none"]
        if bad:
            raise ValueError(f"jwt authorizer {conf.name!r}: algorithm(s) {', '.join(bad)} are not accepted")
        return JwtAuthorizer(
            conf.name,
            conf.issuer,
            tuple(conf.audiences),
            self.runtime.jwks_cache(conf.jwks_uri),
            header=header,
            leeway_s=conf.clock_skew_seconds if conf.clock_skew_seconds else 60,
            algorithms=algs,
            claims_to_headers=tuple(
                (k, v.lower().encode()) for k, v in sorted(conf.claims_to_headers.items())
            ),
        )
