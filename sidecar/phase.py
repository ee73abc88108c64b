"""The request phase, compiled per route: resource policy and private endpoint -> authorizer ->
API key -> throttling and quota -> cache lookup. Steps run in that order; the first refusal wins.

`Runtime` is the state that outlives snapshots (token buckets, quotas, JWKS and
authorizer caches, response caches, the outbound HTTP session).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from meshgate.sidecar.authorizers import AuthRequest, AuthResult, JwksCache, JwtAuthorizer, RequestAuthorizer
from meshgate.sidecar.cache import CachedResponse, ResponseCache
from meshgate.sidecar.telemetry import RequestSpan
from meshgate.sidecar.throttle import DEFAULT_BURST, DEFAULT_RATE, Limit, Limiter, QuotaStore, TokenBucket
from meshgate.sidecar.validation import BodyModel, missing_parameters
from meshgate.v1 import control_pb2, resources_pb2

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Any) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def in_networks(ip: str, nets: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in nets)


@dataclass(slots=True)
class PhaseResult:
    status: int = 0
    reason: str = ""
    response_headers: tuple[tuple[bytes, bytes], ...] = ()
    set_headers: tuple[tuple[bytes, bytes], ...] = ()
    cached: CachedResponse | None = None
    cache: ResponseCache | None = None
    store_key: bytes | None = None
    cache_header: bytes = b""
    auth_values: Mapping[str, str] = field(default_factory=dict)
    gw_type: str = ""  # gateway response type when refused (default: by status)
    errors: tuple[dict[str, str], ...] = ()  # validation details for the error body
    authorizer_s: float = 0.0  # time the authorizer took (0: no authorizer)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    plan: str
    limit: Limit | None
    quota: int
    period: str


@dataclass
class Runtime:
    """Long-lived request-phase state, shared by every snapshot this sidecar applies."""

    state_dir: Path | None = None
    cache_key: bytes | None = None
    limiter: Limiter = field(default_factory=Limiter)
    quotas: QuotaStore = field(default_factory=lambda: QuotaStore(None))
    jwks: dict[str, JwksCache] = field(default_factory=dict)
    authorizers: dict[tuple[Any, ...], RequestAuthorizer] = field(default_factory=dict)
    caches: dict[tuple[str, str], tuple[tuple[Any, ...], ResponseCache]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        if self.state_dir is not None:
            self.quotas = QuotaStore(self.state_dir / "quotas.json")

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30), raise_for_status=False
            )
        return self._session

    def jwks_cache(self, uri: str) -> JwksCache:
        cache = self.jwks.get(uri)
        if cache is None:
            cache = self.jwks[uri] = JwksCache(uri, self.session)
        return cache

    def request_authorizer(self, key: tuple[Any, ...], make: Any) -> RequestAuthorizer:
        """Same config -> same object, so the result cache survives new snapshots."""
        auth = self.authorizers.get(key)
        if auth is None:
            auth = self.authorizers[key] = make()
        return auth

    def stage_cache(
        self, stage_key: tuple[str, str], config: tuple[Any, ...], capacity: int, ttl: float, encrypted: bool
    ) -> ResponseCache:
        entry = self.caches.get(stage_key)
        if entry is not None and entry[0] == config:
            return entry[1]
        cache = ResponseCache(capacity, ttl, self.cache_key if encrypted else None)
        self.caches[stage_key] = (config, cache)
        return cache

    async def close(self) -> None:
        self.quotas.save()
        if self._session is not None:
            await self._session.close()


@dataclass
class RoutePhase:
    api: str
    stage: str
    route: str  # "GET /pets/{id}"
    resource: str
    stage_variables: Mapping[str, str]
    runtime: Runtime
    allow_nets: tuple[Network, ...] = ()
    deny_nets: tuple[Network, ...] = ()
    private_nets: tuple[Network, ...] | None = None
    authorizer: JwtAuthorizer | RequestAuthorizer | None = None
    scopes: tuple[str, ...] = ()
    api_key_required: bool = False
    keys: Mapping[str, KeyInfo] = field(default_factory=dict)
    stage_limit: Limit = field(
        default_factory=lambda: Limit(DEFAULT_RATE, DEFAULT_BURST)
    )  # this replica's share
    route_limit: Limit | None = None
    replicas: int = 1
    stage_bucket: str = ""
    route_bucket: str = ""
    required: tuple[tuple[str, str], ...] = ()  # (query|header, name) that must be present
    body_model: BodyModel | None = None  # JSON body validated before the integration is called
    fast: bool = field(init=False, default=False)  # only the stage/route bucket to check
    bucket: TokenBucket = field(init=False)
    bucket_scope: str = field(init=False, default="")

    def __post_init__(self) -> None:
        limiter = self.runtime.limiter
        if self.route_limit is not None:
            self.bucket = limiter.bucket(self.route_bucket, self.route_limit)
            self.bucket_scope = f"route {self.route}"
        else:
            self.bucket = limiter.bucket(self.stage_bucket, self.stage_limit)
            self.bucket_scope = f"stage {self.stage}"
        self.fast = not (
            self.allow_nets
            or self.deny_nets
            or self.private_nets is not None
            or self.authorizer is not None
            or self.api_key_required
            or self.cache is not None
            or self.required
        )  # a body model alone keeps the fast path: the body is validated once it is all here (proceed)

    def throttled(self) -> PhaseResult | None:
        """The fast path: a route whose only request-phase step is its token bucket."""
        wait = self.bucket.take(time.monotonic())
        if wait:
            return PhaseResult(
                429,
                f"throttled by the {self.bucket_scope} limit",
                ((b"retry-after", b"%d" % math.ceil(wait)),),
            )
        return None

    cache: ResponseCache | None = None
    cache_methods: frozenset[str] = frozenset({"GET"})
    cache_params: tuple[tuple[str, str], ...] = ()
    invalidation: str = "require_authorization"

    def run(self, req: AuthRequest, trace: RequestSpan | None = None) -> PhaseResult | Awaitable[PhaseResult]:
        """The steps in order; `trace` (sampled requests only) gets authorizer and cache spans."""
        ip = req.source_ip
        if self.private_nets is not None and not in_networks(ip, self.private_nets):
            return PhaseResult(403, f"private API {self.api}: source {ip} is outside the cluster networks")
        if self.deny_nets and in_networks(ip, self.deny_nets):
            return PhaseResult(403, f"resource policy of {self.api} denies source {ip}")
        if self.allow_nets and not in_networks(ip, self.allow_nets):
            return PhaseResult(403, f"resource policy of {self.api} does not allow source {ip}")
        authorizer = self.authorizer
        if authorizer is None:
            return self._after_auth(req, None, trace)
        t0 = time.monotonic()
        span = None
        if trace is not None:
            kind = "jwt" if isinstance(authorizer, JwtAuthorizer) else authorizer.kind
            attrs = {"meshgate.authorizer.name": authorizer.name, "meshgate.authorizer.type": kind}
            span = trace.start_sub("authorizer", attrs)
            if kind != "jwt":
                req.trace_headers = trace.carrier(span)  # the authorizer service joins the trace
        if isinstance(authorizer, JwtAuthorizer):
            res = authorizer.authorize(req.headers, self.scopes)
        else:
            res = authorizer.authorize(req)
        if isinstance(res, AuthResult):
            return self._authorized(req, res, t0, trace, span, True)
        return self._await_auth(req, res, t0, trace, span)

    async def _await_auth(
        self,
        req: AuthRequest,
        pending: Awaitable[AuthResult],
        t0: float,
        trace: RequestSpan | None,
        span: Any,
    ) -> PhaseResult:
        return self._authorized(req, await pending, t0, trace, span, False)

    def _authorized(
        self,
        req: AuthRequest,
        auth: AuthResult,
        t0: float,
        trace: RequestSpan | None,
        span: Any,
        cached: bool,
    ) -> PhaseResult:
        elapsed = time.monotonic() - t0
        if span is not None:
            # cached: answered without a call (a cached result, known JWKS keys, or a missing identity)
            attrs: dict[str, Any] = {
                "meshgate.authorizer.cached": cached,
                "meshgate.authorizer.status": auth.status,
            }
            if auth.principal:
                attrs["enduser.id"] = auth.principal
            RequestSpan.end_sub(span, auth.reason if auth.status else "", attrs)
        r = self._after_auth(req, auth, trace)
        r.authorizer_s = elapsed
        return r

    def _after_auth(
        self, req: AuthRequest, auth: AuthResult | None, trace: RequestSpan | None
    ) -> PhaseResult:
        if auth is not None and auth.status:
            kind = {500: "AUTHORIZER_CONFIGURATION_ERROR", 502: "AUTHORIZER_FAILURE"}.get(auth.status, "")
            return PhaseResult(auth.status, auth.reason, auth.response_headers, gw_type=kind)
        set_headers = auth.headers if auth is not None else ()
        values = auth.values if auth is not None else {}
        key: KeyInfo | None = None
        if self.api_key_required:
            value = req.headers.get("x-api-key")
            if not value:
                return PhaseResult(
                    403, "API key required: x-api-key header missing", gw_type="INVALID_API_KEY"
                )
            key = self.keys.get(hashlib.sha256(value.encode()).hexdigest())
            if key is None:
                return PhaseResult(403, "API key not valid for this stage", gw_type="INVALID_API_KEY")
        limiter = self.runtime.limiter
        if key is not None and key.limit is not None:
            wait = limiter.take(f"key/{self.api}/{self.stage}/{key.name}", key.limit)
            scope = f"usage plan {key.plan}"
        else:
            wait = self.bucket.take(time.monotonic())
            scope = self.bucket_scope
        if wait:
            return PhaseResult(
                429, f"throttled by the {scope} limit", ((b"retry-after", b"%d" % math.ceil(wait)),)
            )
        if key is not None and key.quota:
            share = math.ceil(key.quota / max(1, self.replicas))
            wait = self.runtime.quotas.take(f"{self.api}/{key.plan}/{key.name}", share, key.period)
            if wait:
                return PhaseResult(
                    429,
                    f"quota of usage plan {key.plan} exhausted for this {key.period.lower()}",
                    ((b"retry-after", b"%d" % math.ceil(wait)),),
                    gw_type="QUOTA_EXCEEDED",
                )
        if self.required:
            bad = missing_parameters(self.required, req.headers, req.query_params())
            if bad is not None:
                return PhaseResult(bad.status, bad.reason, gw_type=bad.gw_type, errors=bad.errors)
        if self.cache is None or req.method not in self.cache_methods:
            return PhaseResult(auth_values=values, set_headers=set_headers)
        ckey = self.cache_key(req)
        cache_control = req.headers.get("cache-control", "")
        if "max-age=0" in cache_control.replace(" ", "") and self.invalidation != "ignore":
            authorized = auth is not None
            if authorized:
                self.cache.invalidate(ckey)
                if trace is not None:
                    RequestSpan.end_sub(trace.start_sub("cache", self._cache_attrs("invalidated")))
                return PhaseResult(
                    set_headers=set_headers, cache=self.cache, store_key=ckey, cache_header=b"invalidated"
                )
            if self.invalidation == "fail":
                return PhaseResult(403, "cache invalidation needs an authorized request")
            return PhaseResult(
                auth_values=values,
                set_headers=set_headers,
                cached=self._lookup(ckey, trace),
                cache=self.cache,
                store_key=ckey,
                cache_header=b"ignored-invalidation",
            )
        hit = self._lookup(ckey, trace)
        if hit is not None:
            return PhaseResult(auth_values=values, set_headers=set_headers, cached=hit, cache_header=b"hit")
        return PhaseResult(
            auth_values=values,
            set_headers=set_headers,
            cache=self.cache,
            store_key=ckey,
            cache_header=b"miss",
        )

    def _lookup(self, ckey: bytes, trace: RequestSpan | None) -> CachedResponse | None:
        cache = self.cache
        assert cache is not None
        if trace is None:
            return cache.get(ckey)
        span = trace.start_sub("cache", self._cache_attrs(""))
        hit = cache.get(ckey)
        RequestSpan.end_sub(span, attrs={"meshgate.cache.result": "miss" if hit is None else "hit"})
        return hit

    def _cache_attrs(self, result: str) -> dict[str, Any]:
        cache = self.cache
        assert cache is not None
        attrs: dict[str, Any] = {
            "meshgate.cache.encrypted": cache.encrypted,
            "meshgate.cache.ttl_s": cache.ttl_s,
            "meshgate.cache.entries": len(cache),
        }
        if result:
            attrs["meshgate.cache.result"] = result
        return attrs

    def cache_key(self, req: AuthRequest) -> bytes:
        parts = [req.method, self.api, self.stage, req.path]
        for kind, name in self.cache_params:
            if kind == "query":
                parts.append(f"q:{name}={req.query_params().get(name, '')}")
            else:
                parts.append(f"h:{name}={req.headers.get(name, '')}")
        return "\n".join(parts).encode("utf-8", "replace")


PhaseFactory = Callable[[resources_pb2.ApiSpec, resources_pb2.Route, Mapping[str, str]], RoutePhase | None]


def _limit(rate: float, burst: int) -> Limit | None:
    if rate <= 0:
        return None
    return Limit(rate, burst or max(1, math.ceil(rate)))


def _source(spec: str) -> tuple[str, str]:
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


class PhaseBuilder:
    """Compiles the request phase of every route of a snapshot against a Runtime."""

    def __init__(self, snapshot: control_pb2.Snapshot, runtime: Runtime) -> None:
        self.runtime = runtime
        self.cluster = parse_networks(snapshot.cluster_cidrs)
        plans = {(p.metadata.namespace or "default", p.metadata.name): p for p in snapshot.usage_plans}
        # (namespace, api, stage or "*") -> {sha256: KeyInfo}
        self.keys: dict[tuple[str, str, str], dict[str, KeyInfo]] = {}
        for k in snapshot.api_keys:
            ns = k.metadata.namespace or "default"
            plan = plans.get((ns, k.spec.usage_plan))
            if plan is None or not k.spec.enabled:
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
                self.keys.setdefault((ns, api, stage or "*"), {})[k.spec.value_sha256] = info

    def for_stage(self, bundle: control_pb2.StageBundle) -> PhaseFactory:
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
        methods = frozenset(m.upper() for m in c.methods) or frozenset({"GET"})
        invalidation = c.invalidation or "require_authorization"
        cluster = self.cluster
        runtime = self.runtime

        def factory(
            api_spec: resources_pb2.ApiSpec, route: resources_pb2.Route, variables: Mapping[str, str]
        ) -> RoutePhase:
            route_key = f"{route.method.upper()} {route.path}"
            authorizer: JwtAuthorizer | RequestAuthorizer | None = None
            if route.authorizer:
                conf = next((a for a in api_spec.authorizers if a.name == route.authorizer), None)
                if conf is None:
                    raise ValueError(f"authorizer {route.authorizer!r} is not declared")
                authorizer = self._authorizer(api, conf)
            required = tuple(_source(p) for p in route.required_parameters)
            body_model = None
            if route.request_model:
                model = next((m for m in api_spec.models if m.name == route.request_model), None)
                if model is None:
                    raise ValueError(f"model {route.request_model!r} is not declared")
                body_model = BodyModel.compile(model.name, model.content_type, model.schema_json)
            params: list[tuple[str, str]] = []
            for p in route.cache_key_parameters:
                kind, name = _source(p)
                params.append((kind, name))
            private = api_spec.endpoint_type == "private"
            pol = api_spec.resource_policy
            return RoutePhase(
                api=api,
                stage=stage,
                route=route_key,
                resource=route.path,
                stage_variables=variables,
                runtime=runtime,
                allow_nets=parse_networks(pol.allow_cidrs),
                deny_nets=parse_networks(pol.deny_cidrs),
                private_nets=cluster if private else None,
                authorizer=authorizer,
                scopes=tuple(route.authorization_scopes),
                api_key_required=route.api_key_required,
                keys=keys,
                stage_limit=stage_limit,
                route_limit=(
                    r.divided(replicas)
                    if (r := _limit(route.throttling.rate_limit, route.throttling.burst_limit))
                    else None
                ),
                replicas=replicas,
                stage_bucket=f"stage/{api}/{stage}",
                route_bucket=f"route/{api}/{stage}/{route_key}",
                cache=cache,
                cache_methods=methods,
                cache_params=tuple(params),
                invalidation=invalidation,
                required=required,
                body_model=body_model,
            )

        return factory

    def _authorizer(self, api: str, conf: resources_pb2.Authorizer) -> JwtAuthorizer | RequestAuthorizer:
        if conf.type == "jwt":
            header = "authorization"
            if conf.identity_sources:
                kind, header = _source(conf.identity_sources[0])
                if kind != "header":
                    raise ValueError(f"jwt authorizer {conf.name!r}: the token must come from a header")
            if not conf.jwks_uri:
                raise ValueError(f"jwt authorizer {conf.name!r} has no jwksUri")
            algs = frozenset(conf.algorithms) or frozenset({"RS256", "ES256"})
            bad = [a for a in algs if a.upper().startswith("HS") or a.lower() == "none"]
            if bad:
                raise ValueError(
                    f"jwt authorizer {conf.name!r}: algorithm(s) {', '.join(bad)} are not accepted"
                )
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
        if conf.type not in ("request", "token"):
            raise ValueError(f"authorizer {conf.name!r}: unsupported type {conf.type!r}")
        if not conf.uri:
            raise ValueError(f"authorizer {conf.name!r} has no uri")
        sources = tuple(_source(x) for x in conf.identity_sources) or (("header", "authorization"),)
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
