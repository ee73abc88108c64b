"""Authorizers: JWT with a JWKS cache, and request/token authorizer services with a result cache.

Decisions are values (`AuthResult`); only fetching keys or calling an
authorizer service needs I/O, and concurrent requests share one call.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    from meshgate.sidecar.context import RequestContext

log = logging.getLogger("meshgate.sidecar.auth")

ALLOWED_JWT_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})


@dataclass(frozen=True, slots=True)
class AuthResult:
    """allow (status 0) with what to pass to the integration, or a refusal with its status."""

    status: int = 0
    reason: str = ""
    principal: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    response_headers: tuple[tuple[bytes, bytes], ...] = ()
    values: Mapping[str, str] = field(default_factory=dict)  # for context.authorizer.* mappings


SessionFactory = Callable[[], "aiohttp.ClientSession"]


# ---------------------------------------------------------------------------- JWT


class JwksCache:
    """Keys of one JWKS URI. Re-fetched on an unknown kid at most once per cooldown;
    an empty or failed fetch never replaces the last good keys."""

    def __init__(
        self, uri: str, session: SessionFactory, cooldown_s: float = 30.0, refresh_s: float = 3600.0
    ) -> None:
        self.uri = uri
        self._session = session
        self.cooldown_s = cooldown_s
        self.refresh_s = refresh_s
        self.keys: dict[str, Any] = {}
        self.fetched_at = 0.0
        self.last_attempt = -1e9
        self.fetches = 0
        self._inflight: asyncio.Future[None] | None = None

    def lookup(self, kid: str) -> Any | None:
        return self.keys.get(kid)

    def needs_fetch(self, kid: str) -> bool:
        now = time.monotonic()
        if now - self.last_attempt < self.cooldown_s:
            return False
        return kid not in self.keys or now - self.fetched_at > self.refresh_s

    async def refresh(self) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        import aiohttp  # loaded with the first JWKS fetch, not with the sidecar

        loop = asyncio.get_running_loop()
        self._inflight = loop.create_future()
        self.last_attempt = time.monotonic()
        self.fetches += 1
        try:
            async with self._session().get(self.uri, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                doc = await resp.json(content_type=None)
            keys: dict[str, Any] = {}
            for jwk in doc.get("keys", []) if isinstance(doc, dict) else []:
                try:
                    parsed = _jwt().PyJWK.from_dict(jwk)
                except (
                    _jwt().exceptions.PyJWKError,
                    _jwt().exceptions.InvalidKeyError,
                    KeyError,
                    ValueError,
                ) as exc:
                    log.warning("JWKS %s: skipping a key: %s", self.uri, exc)
                    continue
                keys[str(jwk.get("kid", ""))] = parsed
            if not keys:
                raise ValueError("no usable keys")
            self.keys = keys
            self.fetched_at = time.monotonic()
        except Exception as exc:
            log.warning("JWKS %s fetch failed (%s); keeping %d known keys", self.uri, exc, len(self.keys))
        finally:
            fut, self._inflight = self._inflight, None
            fut.set_result(None)


@dataclass
class JwtAuthorizer:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    jwks: JwksCache
    header: str = "authorization"
    leeway_s: int = 60
    algorithms: frozenset[str] = frozenset({"RS256", "ES256"})
    claims_to_headers: tuple[tuple[str, bytes], ...] = ()
    cache_ttl_s: float = 60.0
    cache_max: int = 10000
    # token -> (monotonic expiry, verified result, granted scopes): signatures are checked once per token
    _verified: dict[str, tuple[float, AuthResult, frozenset[str]]] = field(default_factory=dict)

    def authorize(
        self, headers: Mapping[str, str], scopes: tuple[str, ...]
    ) -> AuthResult | Awaitable[AuthResult]:
        raw = headers.get(self.header)
        if not raw:
            return AuthResult(
                401,
                f"missing {self.header} header (authorizer {self.name!r})",
                response_headers=_www("missing token"),
            )
        hit = self._verified.get(raw)  # keyed by the header value: no parsing for a known token
        if hit is not None:
            if hit[0] > time.monotonic():
                return self._scoped(hit[1], hit[2], scopes)
            del self._verified[raw]
        token = raw[7:].strip() if raw[:7].lower() == "bearer " else raw.strip()
        try:
            header = _jwt().get_unverified_header(token)
        except _jwt().exceptions.DecodeError as exc:
            return AuthResult(401, f"malformed JWT: {exc}", response_headers=_www("invalid_token"))
        alg = header.get("alg")
        if alg not in self.algorithms:
            return AuthResult(
                401, f"JWT algorithm {alg!r} not accepted", response_headers=_www("invalid_token")
            )
        kid = str(header.get("kid", ""))
        if self.jwks.lookup(kid) is None and self.jwks.needs_fetch(kid):
            return self._fetch_then(token, kid, alg, scopes, raw)
        return self._verify(token, kid, alg, scopes, raw)

    async def _fetch_then(
        self, token: str, kid: str, alg: str, scopes: tuple[str, ...], raw: str
    ) -> AuthResult:
        await self.jwks.refresh()
        return self._verify(token, kid, alg, scopes, raw)

    def _verify(self, token: str, kid: str, alg: str, scopes: tuple[str, ...], raw: str = "") -> AuthResult:
        key = self.jwks.lookup(kid)
        if key is None:
            why = "no signing keys available" if not self.jwks.keys else f"unknown signing key {kid!r}"
            return AuthResult(401, f"JWT rejected: {why}", response_headers=_www("invalid_token"))
        try:
            claims = _jwt().decode(
                token,
                key.key,
                algorithms=[alg],
                audience=list(self.audiences) or None,
                issuer=self.issuer or None,
                leeway=self.leeway_s,
                options={"require": ["exp"], "verify_aud": bool(self.audiences)},
            )
        except _jwt().exceptions.PyJWTError as exc:
            return AuthResult(401, f"JWT rejected: {exc}", response_headers=_www("invalid_token"))
        granted = claims.get("scope", claims.get("scp", ""))
        have = frozenset(str(x) for x in (granted.split() if isinstance(granted, str) else granted or []))
        principal = str(claims.get("sub", ""))
        out = [(b"x-meshgate-principal", principal.encode("utf-8", "replace"))]
        values = {"principalId": principal}
        for name, value in claims.items():
            values[f"claims.{name}"] = (
                value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            )
        for claim, hname in self.claims_to_headers:
            if claim in claims:
                out.append((hname, values[f"claims.{claim}"].encode("utf-8", "replace")))
        result = AuthResult(0, principal=principal, headers=tuple(out), values=values)
        ttl = min(self.cache_ttl_s, float(claims["exp"]) - time.time())
        if ttl > 0:
            if len(self._verified) >= self.cache_max:
                self._verified.clear()
            self._verified[raw or token] = (time.monotonic() + ttl, result, have)
        return self._scoped(result, have, scopes)

    @staticmethod
    def _scoped(result: AuthResult, have: frozenset[str], scopes: tuple[str, ...]) -> AuthResult:
        if scopes:
            missing = [s for s in scopes if s not in have]
            if missing:
                return AuthResult(403, f"JWT lacks required scope(s): {', '.join(missing)}")
        return result


def _www(error: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"www-authenticate", f'Bearer error="{error}"'.encode()),)


# ---------------------------------------------------------------------------- request / token


@dataclass(frozen=True, slots=True)
class Policy:
    principal: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    context: tuple[tuple[str, str], ...]

    def evaluate(self, arn: str) -> bool:
        """IAM-style: an explicit Deny wins, then any Allow, else deny."""
        if any(fnmatch.fnmatchcase(arn, pattern) for pattern in self.deny):
            return False
        return any(fnmatch.fnmatchcase(arn, pattern) for pattern in self.allow)


class InvalidAuthorizerResponse(ValueError):
    pass


def method_arn(req: RequestContext) -> str:
    """AWS's methodArn structure under meshgate's partition:
    arn:meshgate:execute-api:{namespace}:{accountId}:{api}/{stage}/{METHOD}/{path} (the path
    stage-relative and normalised, as routing matched it). Policies are evaluated against it."""
    from meshgate.sidecar.function import ACCOUNT_ID

    ns, _, name = req.api.partition("/")
    return f"arn:meshgate:execute-api:{ns}:{ACCOUNT_ID}:{name}/{req.stage}/{req.method}{req.stage_path}"


def authorizer_event(kind: str, token: str, req: RequestContext) -> dict[str, Any]:
    """API Gateway's Lambda authorizer input: TOKEN {type, authorizationToken, methodArn}, or
    REQUEST with the request's headers, query, path parameters, stage variables and the REST
    requestContext (empty parts are `{}`, as in AWS's example input)."""
    if kind == "token":
        return {"type": "TOKEN", "authorizationToken": token, "methodArn": method_arn(req)}
    from meshgate.sidecar import function  # the event shapes live with the proxy events

    parts = function.rest_request_parts(req)
    return {
        "type": "REQUEST",
        "methodArn": method_arn(req),
        "resource": req.resource,
        "path": req.stage_path,
        "httpMethod": req.method,
        **{k: v or {} for k, v in parts.items()},
        "pathParameters": function.path_parameters(req),
        "stageVariables": dict(req.stage_variables),
        "requestContext": function.rest_request_context(req, time.time(), req.headers.get("user-agent")),
    }


def parse_policy(doc: object) -> Policy:
    """The Lambda-authorizer output document -> Policy, or InvalidAuthorizerResponse."""
    if not isinstance(doc, dict):
        raise InvalidAuthorizerResponse("response is not a JSON object")
    principal = doc.get("principalId")
    if not isinstance(principal, str) or not principal:
        raise InvalidAuthorizerResponse("principalId missing")
    pd = doc.get("policyDocument")
    if not isinstance(pd, dict):
        raise InvalidAuthorizerResponse("policyDocument missing")
    statements = pd.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise InvalidAuthorizerResponse("policyDocument.Statement missing")
    allow: list[str] = []
    deny: list[str] = []
    for i, st in enumerate(statements):
        if not isinstance(st, dict):
            raise InvalidAuthorizerResponse(f"Statement[{i}] is not an object")
        effect = st.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise InvalidAuthorizerResponse(f"Statement[{i}].Effect must be Allow or Deny")
        action = st.get("Action", "execute-api:Invoke")
        actions = [action] if isinstance(action, str) else action
        if not isinstance(actions, list) or not any(
            a in ("execute-api:Invoke", "execute-api:*", "*") for a in actions
        ):
            continue
        res = st.get("Resource")
        resources = [res] if isinstance(res, str) else res
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise InvalidAuthorizerResponse(f"Statement[{i}].Resource must be a string or list of strings")
        (allow if effect == "Allow" else deny).extend(resources)
    ctx = doc.get("context") or {}
    if not isinstance(ctx, dict) or not all(isinstance(v, str | int | float | bool) for v in ctx.values()):
        raise InvalidAuthorizerResponse("context must be a flat object of strings, numbers or booleans")
    context = tuple(
        sorted((str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in ctx.items())
    )
    return Policy(principal, tuple(allow), tuple(deny), context)


@dataclass
class RequestAuthorizer:
    """An in-cluster authorizer service (the Lambda authorizer of API Gateway) with a result cache."""

    name: str
    kind: str  # "token" | "request"
    uri: str
    sources: tuple[tuple[str, str], ...]  # (kind, name): header|query|stage|sourceIp
    ttl_s: float
    timeout_s: float
    session: SessionFactory
    calls: int = 0
    _cache: dict[tuple[str, ...], tuple[float, Policy | None]] = field(default_factory=dict)
    _inflight: dict[tuple[str, ...], asyncio.Future[Policy | None]] = field(default_factory=dict)

    def identity(self, req: RequestContext) -> tuple[str, ...] | None:
        values = []
        for kind, name in self.sources:
            if kind == "header":
                v = req.headers.get(name)
            elif kind == "query":
                v = req.query_params().get(name)
            elif kind == "stage":
                v = req.stage_variables.get(name)
            else:
                v = req.source_ip
            if not v:
                return None
            values.append(v)
        return tuple(values)

    def authorize(self, req: RequestContext) -> AuthResult | Awaitable[AuthResult]:
        ident = self.identity(req)
        if ident is None:
            what = ", ".join(f"{k} {n}" for k, n in self.sources)
            return AuthResult(401, f"identity source missing ({what}) for authorizer {self.name!r}")
        if self.ttl_s > 0:
            hit = self._cache.get(ident)
            if hit is not None and hit[0] > time.monotonic():
                return self._decide(hit[1], req)
        return self._call_shared(ident, req)

    async def _call_shared(self, ident: tuple[str, ...], req: RequestContext) -> AuthResult:
        fut = self._inflight.get(ident)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[ident] = fut
            try:
                policy = await self._call(ident, req)
            except AuthorizerError as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters re-raise it below
                del self._inflight[ident]
                return AuthResult(exc.status, exc.reason)
            if self.ttl_s > 0:
                self._cache[ident] = (time.monotonic() + self.ttl_s, policy)
                if len(self._cache) > 10000:
                    self._prune()
            del self._inflight[ident]
            fut.set_result(policy)
        else:
            try:
                policy = await asyncio.shield(fut)
            except AuthorizerError as exc:
                return AuthResult(exc.status, exc.reason)
        return self._decide(policy, req)

    def _prune(self) -> None:
        now = time.monotonic()
        for k in [k for k, (exp, _) in self._cache.items() if exp <= now]:
            del self._cache[k]

    async def _call(self, ident: tuple[str, ...], req: RequestContext) -> Policy | None:
        """None = the service said 401 Unauthorized."""
        import aiohttp  # loaded with the first authorizer call, not with the sidecar

        self.calls += 1
        event = authorizer_event(self.kind, ident[0] if self.kind == "token" else "", req)
        try:
            async with self.session().post(
                self.uri,
                json=event,
                headers=req.trace_headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AuthorizerError(
                500, f"authorizer {self.name!r} unreachable: {type(exc).__name__} {exc}".strip()
            ) from None
        if status == 401:
            return None
        if status != 200:
            raise AuthorizerError(500, f"authorizer {self.name!r} answered HTTP {status}")
        try:
            return parse_policy(json.loads(body))
        except (ValueError, InvalidAuthorizerResponse) as exc:
            raise AuthorizerError(
                502, f"authorizer {self.name!r} returned an invalid document: {exc}"
            ) from None

    def _decide(self, policy: Policy | None, req: RequestContext) -> AuthResult:
        if policy is None:
            return AuthResult(401, f"authorizer {self.name!r}: Unauthorized")
        if not policy.evaluate(method_arn(req)):
            return AuthResult(
                403, f"authorizer {self.name!r} denied {req.method} {req.stage_path} for {policy.principal}"
            )
        hdrs = [(b"x-meshgate-principal", policy.principal.encode("utf-8", "replace"))]
        for k, v in policy.context:
            hdrs.append(
                (
                    b"x-meshgate-authorizer-" + k.lower().encode("latin-1", "replace"),
                    v.encode("utf-8", "replace"),
                )
            )
        values = {"principalId": policy.principal, **dict(policy.context)}
        return AuthResult(0, principal=policy.principal, headers=tuple(hdrs), values=values)


class AuthorizerError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_PYJWT: Any = None


def _jwt() -> Any:
    """PyJWT, loaded with the first JWT authorizer that verifies a token (or parses a JWKS)."""
    global _PYJWT
    if _PYJWT is None:
        import jwt

        _PYJWT = jwt
    return _PYJWT
