"""The request phase through the real listener: policies, private endpoints, JWT and request
authorizers (real JWKS and authorizer servers on loopback), API keys, throttling, quotas, the cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from meshgate.sidecar.filters.authorizer import AuthorizerFilter
from meshgate.sidecar.routing import compile_snapshot
from meshgate.sidecar.runtime import Runtime

from .conftest import Backends, Gateway, LoopThread, bundle, call, http_route, mock_route, read_request
from .conftest import snapshot as make_snapshot


class Aux:
    """aiohttp servers (JWKS, authorizer) in the gateway's loop thread, with call counters."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.runners: list[web.AppRunner] = []
        self.calls: dict[str, int] = {}

    def serve(self, routes: dict[str, Any]) -> int:
        async def go() -> int:
            app = web.Application()
            for path, handler in routes.items():
                app.router.add_route("*", path, handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        return self.lt.run(go())

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def stop(self) -> None:
        async def go() -> None:
            for r in self.runners:
                await r.cleanup()

        self.lt.run(go())


@pytest.fixture
def aux(lt: LoopThread) -> Iterator[Aux]:
    a = Aux(lt)
    yield a
    a.stop()


def rt(gateway: Gateway, **kw: Any) -> Runtime:
    """A Runtime closed with the gateway (it owns an HTTP client session)."""
    runtime = Runtime(**kw)
    gateway.on_stop.append(runtime.close)
    return runtime


def start(gateway: Gateway, snap: Any, runtime: Runtime | None = None) -> Runtime:
    runtime = runtime or rt(gateway)
    gateway.start(snap, runtime=runtime)
    return runtime


HELLO = mock_route("GET", "/hello", '{"hi": 1}')


# ------------------------------------------------------------------ source policies


def test_resource_policy_deny_wins_and_private_endpoint(gateway: Gateway) -> None:
    snap = make_snapshot(
        _api_bundle([HELLO], resourcePolicy={"allowCidrs": ["127.0.0.0/8"], "denyCidrs": ["127.0.0.1/32"]})
    )
    start(gateway, snap)
    status, _, body = call(gateway.port, "/prod/hello")
    assert status == 403 and "denies source 127.0.0.1" in json.loads(body)["reason"]

    private = _api_bundle([HELLO], endpointType="private")
    snap = make_snapshot(private, cluster_cidrs=("10.0.0.0/8",))
    gateway.holder.table = compile_snapshot(snap, rt(gateway))
    status, _, body = call(gateway.port, "/prod/hello")
    assert status == 403 and "reason" not in json.loads(body)  # an outsider is told nothing more
    private["stage"]["spec"]["errorDetail"] = True
    snap = make_snapshot(private, cluster_cidrs=("10.0.0.0/8",))
    gateway.holder.table = compile_snapshot(snap, rt(gateway))
    status, _, body = call(gateway.port, "/prod/hello")
    assert status == 403 and "outside the cluster networks" in json.loads(body)["reason"]
    snap.cluster_cidrs.append("127.0.0.0/8")
    gateway.holder.table = compile_snapshot(snap, rt(gateway))
    assert call(gateway.port, "/prod/hello")[0] == 200


def test_private_endpoint_never_calls_the_integration(gateway: Gateway, backends: Backends) -> None:
    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port = backends.start(backend)
    snap = make_snapshot(
        _api_bundle([http_route("GET", "/x", f"http://127.0.0.1:{port}/x")], endpointType="private"),
        cluster_cidrs=("10.96.0.0/12",),
    )
    start(gateway, snap)
    assert call(gateway.port, "/prod/x")[0] == 403
    assert backends.accepted == 0


# ------------------------------------------------------------------ JWT


class Idp:
    def __init__(self, aux: Aux) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.up = True
        self.empty = False
        self.aux = aux

        async def jwks(request: web.Request) -> web.Response:
            aux.count("jwks")
            if not self.up:
                return web.Response(status=503)
            if self.empty:
                return web.json_response({"keys": []})
            keys = []
            for kid, key in (("r1", self.rsa), ("e1", self.ec)):
                jwk = json.loads(
                    jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())
                    if kid == "r1"
                    else jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())
                )  # type: ignore[arg-type]
                jwk["kid"] = kid
                keys.append(jwk)
            return web.json_response({"keys": keys})

        self.port = aux.serve({"/jwks": jwks})
        self.uri = f"http://127.0.0.1:{self.port}/jwks"

    def token(self, kid: str = "r1", alg: str = "RS256", key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": "https://idp.test",
            "aud": "pets",
            "sub": "user-1",
            "exp": now + 300,
            "iat": now,
            **claims,
        }
        signer = key or (self.rsa if alg.startswith("RS") else self.ec)
        return jwt.encode(body, signer, algorithm=alg, headers={"kid": kid})


def jwt_snapshot(idp: Idp, backend_port: int) -> Any:
    routes = [
        {**http_route("GET", "/pets", f"http://127.0.0.1:{backend_port}/pets"), "authorizer": "cognito"},
        {
            **mock_route("GET", "/admin", '"admin"'),
            "authorizer": "cognito",
            "authorizationScopes": ["pets/admin"],
        },
    ]
    return make_snapshot(
        _api_bundle(
            routes,
            authorizers=[
                {
                    "name": "cognito",
                    "type": "jwt",
                    "issuer": "https://idp.test",
                    "audiences": ["pets"],
                    "jwksUri": idp.uri,
                    "claimsToHeaders": {"email": "x-user-email", "sub": "x-user-sub"},
                }
            ],
        )
    )


async def echo_headers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        _, headers, _ = await read_request(r)
        body = json.dumps({k.decode(): v.decode() for k, v in headers.items()}).encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await w.drain()


def test_jwt_authorizer(gateway: Gateway, backends: Backends, aux: Aux) -> None:
    idp = Idp(aux)
    start(gateway, jwt_snapshot(idp, backends.start(echo_headers)))
    port = gateway.port
    status, headers, body = call(port, "/prod/pets")
    assert (
        status == 401
        and "missing authorization" in json.loads(body)["reason"]
        and "www-authenticate" in headers
    )
    status, _, body = call(
        port, "/prod/pets", headers={"Authorization": f"Bearer {idp.token(email='a@b.c')}"}
    )
    seen = json.loads(body)
    assert status == 200 and seen["x-user-email"] == "a@b.c" and seen["x-meshgate-principal"] == "user-1"
    assert call(port, "/prod/pets", headers={"Authorization": idp.token(kid="e1", alg="ES256")})[0] == 200
    for bad, why in (
        (idp.token(exp=int(time.time()) - 3600), "expired"),
        (idp.token(aud="other"), "audience"),
        (idp.token(iss="https://evil"), "issuer"),
        (idp.token(key=idp.other), "Signature verification failed"),
        (
            jwt.encode(
                {"sub": "x", "exp": int(time.time()) + 60},
                "s3cret" * 8,
                algorithm="HS256",
                headers={"kid": "r1"},
            ),
            "algorithm 'HS256'",
        ),
        (jwt.encode({"sub": "x"}, None, algorithm="none"), "algorithm 'none'"),  # type: ignore[arg-type]
        ("not-a-jwt", "malformed JWT"),
    ):
        status, _, body = call(port, "/prod/pets", headers={"Authorization": f"Bearer {bad}"})
        assert status == 401 and why.lower() in json.loads(body)["reason"].lower(), (why, body)
    # scopes: 403 without, 200 with
    assert call(port, "/prod/admin", headers={"Authorization": idp.token(scope="pets/read")})[0] == 403
    assert (
        call(port, "/prod/admin", headers={"Authorization": idp.token(scope="pets/read pets/admin")})[0]
        == 200
    )
    # clock skew: nbf slightly in the future is accepted within the default 60 s leeway
    assert call(port, "/prod/pets", headers={"Authorization": idp.token(nbf=int(time.time()) + 30)})[0] == 200


def test_jwks_unknown_kid_cooldown_and_last_good_keys(gateway: Gateway, backends: Backends, aux: Aux) -> None:
    idp = Idp(aux)
    start(gateway, jwt_snapshot(idp, backends.start(echo_headers)))
    port = gateway.port
    assert call(port, "/prod/pets", headers={"Authorization": idp.token()})[0] == 200
    fetches = aux.calls["jwks"]
    # a flood of tokens with unknown kids: at most one re-fetch per cooldown
    for i in range(30):
        assert (
            call(port, "/prod/pets", headers={"Authorization": idp.token(kid=f"forged-{i}", key=idp.other)})[
                0
            ]
            == 401
        )
    assert aux.calls["jwks"] <= fetches + 1
    # the IdP goes down or serves no keys: the last good keys keep working
    idp.up = False
    assert call(port, "/prod/pets", headers={"Authorization": idp.token()})[0] == 200


def test_jwt_fails_closed_without_keys(gateway: Gateway, backends: Backends, aux: Aux) -> None:
    idp = Idp(aux)
    idp.empty = True
    start(gateway, jwt_snapshot(idp, backends.start(echo_headers)))
    status, _, body = call(gateway.port, "/prod/pets", headers={"Authorization": idp.token()})
    assert status == 401 and "no signing keys" in json.loads(body)["reason"]


# ------------------------------------------------------------------ request authorizer


def authorizer_service(aux: Aux, delay: float = 0.0, mode: str = "ok") -> int:
    async def handler(request: web.Request) -> web.Response:
        aux.count("authorizer")
        event = await request.json()
        await asyncio.sleep(delay)
        if mode == "invalid":
            return web.json_response({"principal": "x"})
        headers = {k.lower(): v for k, v in event.get("headers", {}).items()}  # the client's case
        token = event.get("authorizationToken") or headers.get("x-token", "")
        if token == "unauthorized":
            return web.Response(status=401)
        effect = "Allow" if token.startswith("good") else "Deny"
        return web.json_response(
            {
                "principalId": f"user-{token}",
                "policyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Action": "execute-api:Invoke",
                            "Effect": effect,
                            "Resource": [
                                "arn:meshgate:execute-api:default:000000000000:pets/prod/GET/pets*",
                                "arn:meshgate:execute-api:default:000000000000:pets/prod/GET/items/*",
                            ],
                        },
                        {
                            "Action": "execute-api:Invoke",
                            "Effect": "Deny",
                            "Resource": "arn:meshgate:execute-api:*/*/GET/pets/secret",
                        },
                    ],
                },
                "context": {"tier": "gold", "admin": False},
            }
        )

    return aux.serve({"/authorize": handler})


def request_auth_snapshot(
    auth_port: int, backend_port: int, kind: str = "token", ttl: int | None = None
) -> Any:
    conf: dict[str, Any] = {"name": "custom", "type": kind, "uri": f"http://127.0.0.1:{auth_port}/authorize"}
    conf["identitySources"] = (
        ["method.request.header.Authorization"]
        if kind == "token"
        else ["method.request.header.X-Token", "method.request.querystring.tenant"]
    )
    if ttl is not None:
        conf["resultTtlSeconds"] = ttl
    routes = [
        {**http_route("GET", "/pets", f"http://127.0.0.1:{backend_port}/pets"), "authorizer": "custom"},
        {
            **http_route("GET", "/pets/{id}", f"http://127.0.0.1:{backend_port}/pets/{{id}}"),
            "authorizer": "custom",
        },
    ]
    return make_snapshot(_api_bundle(routes, authorizers=[conf]))


def test_token_authorizer_policy_cache_and_context(gateway: Gateway, backends: Backends, aux: Aux) -> None:
    start(gateway, request_auth_snapshot(authorizer_service(aux), backends.start(echo_headers)))
    port = gateway.port
    assert call(port, "/prod/pets")[0] == 401  # identity source missing: the authorizer is not called
    assert aux.calls.get("authorizer", 0) == 0
    status, _, body = call(port, "/prod/pets", headers={"Authorization": "good-1"})
    seen = json.loads(body)
    assert status == 200 and seen["x-meshgate-principal"] == "user-good-1"
    assert seen["x-meshgate-authorizer-tier"] == "gold" and seen["x-meshgate-authorizer-admin"] == "false"
    for _ in range(5):
        assert call(port, "/prod/pets/7", headers={"Authorization": "good-1"})[0] == 200
    status, _, body = call(port, "/prod/pets/secret", headers={"Authorization": "good-1"})
    assert (
        status == 403 and "denied" in json.loads(body)["reason"]
    )  # explicit Deny wins, from the cached policy
    assert aux.calls["authorizer"] == 1  # one call per identity within the TTL
    assert call(port, "/prod/pets", headers={"Authorization": "bad-2"})[0] == 403
    assert call(port, "/prod/pets", headers={"Authorization": "bad-2"})[0] == 403
    assert aux.calls["authorizer"] == 2  # denies are cached too
    assert call(port, "/prod/pets", headers={"Authorization": "unauthorized"})[0] == 401


def test_concurrent_requests_share_one_authorizer_call(
    gateway: Gateway, backends: Backends, aux: Aux
) -> None:
    start(gateway, request_auth_snapshot(authorizer_service(aux, delay=0.3), backends.start(echo_headers)))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(
                lambda _: call(gateway.port, "/prod/pets", headers={"Authorization": "good-9"})[0], range(10)
            )
        )
    assert results == [200] * 10 and aux.calls["authorizer"] == 1


def test_request_authorizer_ttl_zero_and_errors(gateway: Gateway, backends: Backends, aux: Aux) -> None:
    backend = backends.start(echo_headers)
    start(gateway, request_auth_snapshot(authorizer_service(aux), backend, kind="request", ttl=0))
    port = gateway.port
    assert call(port, "/prod/pets?tenant=a", headers={"X-Token": "good"})[0] == 200
    assert call(port, "/prod/pets?tenant=a", headers={"X-Token": "good"})[0] == 200
    assert aux.calls["authorizer"] == 2  # TTL 0: no caching
    assert call(port, "/prod/pets", headers={"X-Token": "good"})[0] == 401  # tenant query source missing
    # invalid document -> 502, never an allow
    gateway.holder.table = compile_snapshot(
        request_auth_snapshot(authorizer_service(aux, mode="invalid"), backend), rt(gateway)
    )
    status, _, body = call(port, "/prod/pets", headers={"Authorization": "good"})
    assert status == 502 and "invalid document" in json.loads(body)["reason"]
    # unreachable -> 500
    gateway.holder.table = compile_snapshot(request_auth_snapshot(1, backend), rt(gateway))
    status, _, body = call(port, "/prod/pets", headers={"Authorization": "good"})
    assert status == 500 and "unreachable" in json.loads(body)["reason"]


# ------------------------------------------------------------------ API keys, throttling, quotas


KEY = "k-" + "a" * 30


def keyed_snapshot(rate: float = 0, burst: int = 0, quota: int = 0, route_rate: float = 0) -> Any:
    route = {**mock_route("GET", "/hello", '"hi"'), "apiKeyRequired": True}
    if route_rate:
        route["throttling"] = {"rateLimit": route_rate, "burstLimit": 1}
    snap = make_snapshot(_api_bundle([route, mock_route("GET", "/open", '"open"')]))
    plan: dict[str, Any] = {
        "metadata": {"name": "gold", "namespace": "default"},
        "spec": {"apis": ["pets/prod"]},
    }
    if rate:
        plan["spec"]["throttle"] = {"rateLimit": rate, "burstLimit": burst}
    if quota:
        plan["spec"]["quota"] = {"limit": quota, "period": "DAY"}
    from google.protobuf import json_format
    from meshgate.v1 import resources_pb2

    snap.usage_plans.append(json_format.ParseDict(plan, resources_pb2.UsagePlan()))
    snap.api_keys.append(
        json_format.ParseDict(
            {
                "metadata": {"name": "ci", "namespace": "default"},
                "spec": {
                    "usagePlan": "gold",
                    "valueSha256": hashlib.sha256(KEY.encode()).hexdigest(),
                    "enabled": True,
                },
            },
            resources_pb2.ApiKey(),
        )
    )
    return snap


def test_api_keys(gateway: Gateway) -> None:
    start(gateway, keyed_snapshot())
    assert call(gateway.port, "/prod/hello")[0] == 403
    assert call(gateway.port, "/prod/hello", headers={"x-api-key": "wrong"})[0] == 403
    assert call(gateway.port, "/prod/hello", headers={"x-api-key": KEY})[0] == 200
    assert call(gateway.port, "/prod/open")[0] == 200


def test_throttling_most_specific_limit_and_retry_after(gateway: Gateway) -> None:
    start(gateway, keyed_snapshot(rate=1, burst=3))
    codes = [call(gateway.port, "/prod/hello", headers={"x-api-key": KEY})[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    status, headers, body = call(gateway.port, "/prod/hello", headers={"x-api-key": KEY})
    assert status == 429 and headers["retry-after"] == "1" and "usage plan gold" in json.loads(body)["reason"]
    assert call(gateway.port, "/prod/open")[0] == 200  # the stage default (10000/5000) still has room
    # a stage limit applies to routes without a more specific one
    snap = make_snapshot(bundle([HELLO]))
    snap.stages[0].stage.spec.throttling.rate_limit = 1
    snap.stages[0].stage.spec.throttling.burst_limit = 2
    gateway.holder.table = compile_snapshot(snap, rt(gateway))
    assert [call(gateway.port, "/prod/hello")[0] for _ in range(3)] == [200, 200, 429]


def test_stage_limit_is_shared_by_replicas(gateway: Gateway) -> None:
    snap = make_snapshot(bundle([HELLO]))
    snap.stages[0].stage.spec.throttling.rate_limit = 0.5
    snap.stages[0].stage.spec.throttling.burst_limit = 6
    snap.stages[0].replicas = 3  # three sidecars serve the stage: each gets a third of the burst
    start(gateway, snap)
    assert [call(gateway.port, "/prod/hello")[0] for _ in range(3)] == [200, 200, 429]


def test_quota_persists_across_restarts(gateway: Gateway, tmp_path: Path) -> None:
    runtime = start(gateway, keyed_snapshot(quota=3), rt(gateway, state_dir=tmp_path))
    codes = [call(gateway.port, "/prod/hello", headers={"x-api-key": KEY})[0] for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    runtime.quotas.save()
    # a restarted sidecar (new runtime, same state dir) keeps the count
    gateway.holder.table = compile_snapshot(keyed_snapshot(quota=3), rt(gateway, state_dir=tmp_path))
    status, headers, body = call(gateway.port, "/prod/hello", headers={"x-api-key": KEY})
    assert status == 429 and "quota" in json.loads(body)["reason"] and int(headers["retry-after"]) > 0


# ------------------------------------------------------------------ stage cache


def counting_backend(backends: Backends, counter: dict[str, int], size: int = 10) -> int:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            counter["n"] = counter.get("n", 0) + 1
            body = (b"%d:" % counter["n"]) + b"x" * size
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            await w.drain()

    return backends.start(handler)


def cache_snapshot(port: int, **cache: Any) -> Any:
    route = http_route("GET", "/items/{id}", f"http://127.0.0.1:{port}/items/{{id}}")
    route["cacheKeyParameters"] = ["method.request.querystring.lang"]
    post = http_route("POST", "/items/{id}", f"http://127.0.0.1:{port}/items/{{id}}")
    snap = make_snapshot(bundle([route, post]))
    c = snap.stages[0].stage.spec.cache
    c.enabled = True
    for k, v in cache.items():
        setattr(c, k, v)
    return snap


def test_cache_hit_miss_key_and_methods(gateway: Gateway, backends: Backends) -> None:
    n: dict[str, int] = {}
    start(gateway, cache_snapshot(counting_backend(backends, n)))
    port = gateway.port
    s1, h1, b1 = call(port, "/prod/items/1?lang=en&x=1")
    s2, h2, b2 = call(port, "/prod/items/1?lang=en&x=2")  # x is not part of the key
    assert (s1, s2) == (200, 200) and b1 == b2 and n["n"] == 1
    assert (
        h1["x-meshgate-cache"] == "miss"
        and h2["x-meshgate-cache"] == "hit"
        and h2["content-type"] == "text/plain"
    )
    assert call(port, "/prod/items/1?lang=fr")[1]["x-meshgate-cache"] == "miss" and n["n"] == 2
    assert call(port, "/prod/items/2")[1]["x-meshgate-cache"] == "miss" and n["n"] == 3
    call(port, "/prod/items/1?lang=en", method="POST")
    call(port, "/prod/items/1?lang=en", method="POST")
    assert n["n"] == 5  # POST is never cached


def test_cache_ttl_capacity_and_flush_epoch(gateway: Gateway, backends: Backends) -> None:
    n: dict[str, int] = {}
    port_b = counting_backend(backends, n, size=1000)
    runtime = start(gateway, cache_snapshot(port_b, ttl_seconds=1, capacity_bytes=2500))
    port = gateway.port
    call(port, "/prod/items/1")
    call(port, "/prod/items/1")
    assert n["n"] == 1
    time.sleep(1.1)
    call(port, "/prod/items/1")
    assert n["n"] == 2  # expired
    call(port, "/prod/items/2")
    call(port, "/prod/items/3")  # capacity ~2 entries of ~1 KB: item 1 is evicted
    cache = next(iter(runtime.caches.values()))[1]
    assert cache.size <= 2500 and cache.evictions >= 1
    call(port, "/prod/items/1")
    assert n["n"] == 5
    # a flush (new epoch) empties it; the same config keeps it
    gateway.holder.table = compile_snapshot(
        cache_snapshot(port_b, ttl_seconds=1, capacity_bytes=2500), runtime
    )
    call(port, "/prod/items/1")
    assert n["n"] == 5
    gateway.holder.table = compile_snapshot(
        cache_snapshot(port_b, ttl_seconds=1, capacity_bytes=2500, flush_epoch=1), runtime
    )
    call(port, "/prod/items/1")
    assert n["n"] == 6


def test_encrypted_cache_holds_ciphertext(gateway: Gateway, backends: Backends) -> None:
    n: dict[str, int] = {}
    port_b = counting_backend(backends, n)
    with pytest.raises(Exception, match="no cache key"):
        compile_snapshot(cache_snapshot(port_b, encrypted=True), rt(gateway))
    runtime = start(gateway, cache_snapshot(port_b, encrypted=True), rt(gateway, cache_key=b"k" * 32))
    body = call(gateway.port, "/prod/items/9")[2]
    assert call(gateway.port, "/prod/items/9")[2] == body and n["n"] == 1
    cache = next(iter(runtime.caches.values()))[1]
    stored = cache.raw_values()
    assert stored and all(b"xxxxxxxx" not in blob and body not in blob for blob in stored)


def test_cache_invalidation_policies(gateway: Gateway, backends: Backends) -> None:
    n: dict[str, int] = {}
    port_b = counting_backend(backends, n)
    start(gateway, cache_snapshot(port_b))  # default: require_authorization
    port = gateway.port
    call(port, "/prod/items/1")
    status, headers, _ = call(port, "/prod/items/1", headers={"Cache-Control": "max-age=0"})
    assert status == 200 and headers["x-meshgate-cache"] == "ignored-invalidation" and n["n"] == 1
    gateway.holder.table = compile_snapshot(cache_snapshot(port_b, invalidation="fail"), rt(gateway))
    call(port, "/prod/items/1")
    assert call(port, "/prod/items/1", headers={"Cache-Control": "max-age=0"})[0] == 403


def test_authorizer_values_reach_mappings_and_verified_tokens_are_cached(
    gateway: Gateway, backends: Backends, aux: Aux
) -> None:
    idp = Idp(aux)
    route = {
        **http_route(
            "GET",
            "/me",
            f"http://127.0.0.1:{backends.start(echo_headers)}/me",
            requestParameters={
                "integration.request.header.x-sub": "context.authorizer.principalId",
                "integration.request.header.x-tenant": "context.authorizer.claims.tenant",
            },
        ),
        "authorizer": "cognito",
    }
    snap = make_snapshot(
        _api_bundle(
            [route],
            authorizers=[
                {
                    "name": "cognito",
                    "type": "jwt",
                    "issuer": "https://idp.test",
                    "audiences": ["pets"],
                    "jwksUri": idp.uri,
                }
            ],
        )
    )
    runtime = start(gateway, snap)
    token = idp.token(tenant="acme")
    seen = json.loads(call(gateway.port, "/prod/me", headers={"Authorization": token})[2])
    assert seen["x-sub"] == "user-1" and seen["x-tenant"] == "acme"
    chain = next(iter(gateway.holder.table._prefixes.values())).base.root.literal["me"].methods["GET"].chain
    auth = next(f for f in chain.filters if isinstance(f, AuthorizerFilter)).authorizer
    assert token in auth._verified  # the signature is checked once per token, not per request
    assert runtime is not None


def test_authorized_cache_invalidation_refetches(gateway: Gateway, backends: Backends, aux: Aux) -> None:
    n: dict[str, int] = {}
    snap = cache_snapshot(counting_backend(backends, n))
    spec = snap.stages[0].deployment.spec.api_spec
    auth = spec.authorizers.add(
        name="custom", type="token", uri=f"http://127.0.0.1:{authorizer_service(aux)}/authorize"
    )
    auth.identity_sources.append("method.request.header.Authorization")
    spec.routes[0].authorizer = "custom"
    start(gateway, snap)
    port = gateway.port
    creds = {"Authorization": "good-1"}
    call(port, "/prod/items/1", headers=creds)
    assert call(port, "/prod/items/1", headers=creds)[1]["x-meshgate-cache"] == "hit" and n["n"] == 1
    status, headers, _ = call(port, "/prod/items/1", headers={**creds, "Cache-Control": "max-age=0"})
    assert status == 200 and headers["x-meshgate-cache"] == "invalidated" and n["n"] == 2
    assert call(port, "/prod/items/1", headers=creds)[1]["x-meshgate-cache"] == "hit" and n["n"] == 2


def test_disabled_api_key_is_refused(gateway: Gateway) -> None:
    snap = keyed_snapshot()
    snap.api_keys[0].spec.enabled = False
    start(gateway, snap)
    assert call(gateway.port, "/prod/hello", headers={"x-api-key": KEY})[0] == 403


def _api_bundle(routes: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return bundle(routes, api_spec=spec)


def test_route_path_not_the_integration_path_names_the_request(
    gateway: Gateway, backends: Backends, aux: Aux
) -> None:
    """A route /items/{id} whose integration URI is http://b/items (the id goes in a header): the
    authorizer's methodArn and event path, the deny message and the cache key all use the request's
    stage-relative path, never the upstream path (every id used to share one cache entry)."""
    events: list[dict[str, Any]] = []

    async def authorizer(request: web.Request) -> web.Response:
        event = await request.json()
        events.append(event)
        allowed = "arn:meshgate:execute-api:default:000000000000:pets/prod/GET/items/*"
        effect = "Deny" if event["path"] == "/items/secret" else "Allow"
        doc = {"Version": "2012-10-17", "Statement": [{"Action": "*", "Effect": effect, "Resource": allowed}]}
        return web.json_response({"principalId": "ann", "policyDocument": doc})

    auth_port = aux.serve({"/authorize": authorizer})
    n: dict[str, int] = {}
    route = http_route(
        "GET",
        "/items/{id}",
        f"http://127.0.0.1:{counting_backend(backends, n)}/items",
        requestParameters={"integration.request.header.x-item": "method.request.path.id"},
    )
    route["authorizer"] = "custom"
    conf = {
        "name": "custom",
        "type": "request",
        "uri": f"http://127.0.0.1:{auth_port}/authorize",
        "identitySources": ["method.request.header.X-Token"],
        "resultTtlSeconds": 0,
    }
    snap = make_snapshot(_api_bundle([route], authorizers=[conf]))
    snap.stages[0].stage.spec.cache.enabled = True
    start(gateway, snap)
    token = {"X-Token": "t"}
    s1, h1, b1 = call(gateway.port, "/prod/items/7", headers=token)
    s2, h2, b2 = call(gateway.port, "/prod/items/8", headers=token)
    assert (s1, s2) == (200, 200) and h1["x-meshgate-cache"] == h2["x-meshgate-cache"] == "miss"
    assert b1 != b2 and n["n"] == 2
    assert call(gateway.port, "/prod/items/8", headers=token)[1]["x-meshgate-cache"] == "hit"
    assert events[0]["methodArn"] == "arn:meshgate:execute-api:default:000000000000:pets/prod/GET/items/7"
    assert (events[0]["path"], events[0]["resource"]) == ("/items/7", "/items/{id}")
    status, _, body = call(gateway.port, "/prod/items/secret", headers=token)
    assert status == 403 and "denied GET /items/secret for ann" in json.loads(body)["reason"]


def test_cached_responses_of_an_authorized_route_are_per_principal(
    gateway: Gateway, backends: Backends, aux: Aux
) -> None:
    """RFC 9111 §3.5: a shared cache must not hand one user's response to another."""
    idp = Idp(aux)
    snap = jwt_snapshot(idp, backends.start(echo_headers))
    snap.stages[0].stage.spec.cache.enabled = True
    start(gateway, snap)
    alice, bob = idp.token(sub="alice"), idp.token(sub="bob")
    s1, h1, b1 = call(gateway.port, "/prod/pets", headers={"Authorization": alice})
    s2, h2, b2 = call(gateway.port, "/prod/pets", headers={"Authorization": bob})
    assert (s1, s2) == (200, 200) and h1["x-meshgate-cache"] == h2["x-meshgate-cache"] == "miss"
    assert json.loads(b1)["x-user-sub"] == "alice" and json.loads(b2)["x-user-sub"] == "bob"
    s3, h3, b3 = call(gateway.port, "/prod/pets", headers={"Authorization": alice})
    assert s3 == 200 and h3["x-meshgate-cache"] == "hit" and json.loads(b3)["x-user-sub"] == "alice"


def test_responses_a_shared_cache_must_not_store_are_not_stored(gateway: Gateway, backends: Backends) -> None:
    """Set-Cookie, Cache-Control private/no-store/no-cache and Vary: * keep a response out of the cache;
    client-sent X-Forwarded-Host (and kin) never reach the backend of a cached route."""
    answers = {
        b"/items/1": b"Set-Cookie: sid=alice\r\n",
        b"/items/2": b"Cache-Control: no-cache\r\n",
        b"/items/3": b"Vary: *\r\n",
        b"/items/4": b"Cache-Control: Private\r\n",
        b"/items/5": b"",
    }
    seen: list[dict[bytes, bytes]] = []

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            line, headers, _ = await read_request(r)
            seen.append(headers)
            extra = answers[line.split()[1]]
            w.write(b"HTTP/1.1 200 OK\r\n%bContent-Length: 2\r\n\r\nok" % extra)
            await w.drain()

    start(gateway, cache_snapshot(backends.start(backend)))
    for i in range(1, 6):
        call(gateway.port, f"/prod/items/{i}")
        _, headers, _ = call(gateway.port, f"/prod/items/{i}", headers={"X-Forwarded-Host": "evil.example"})
        assert headers["x-meshgate-cache"] == ("hit" if i == 5 else "miss"), i
    assert len(seen) == 9 and all(b"x-forwarded-host" not in h for h in seen)


def test_an_authorizer_context_value_with_cr_lf_reaches_no_backend(
    gateway: Gateway, backends: Backends, aux: Aux
) -> None:
    """An authorizer's context becomes x-meshgate-authorizer-* headers: a value that would split the
    integration request is a 400, for HTTP and WebSocket routes alike, and nothing goes upstream."""
    hits: list[int] = []

    async def authorizer(request: web.Request) -> web.Response:
        doc = {"Version": "2012-10-17", "Statement": [{"Action": "*", "Effect": "Allow", "Resource": "*"}]}
        context = {"tier": "gold\r\nX-Admin: yes"}
        return web.json_response({"principalId": "ann", "policyDocument": doc, "context": context})

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        hits.append(1)
        w.close()

    auth_port = aux.serve({"/authorize": authorizer})
    port = backends.start(backend)
    conf = {"name": "custom", "type": "token", "uri": f"http://127.0.0.1:{auth_port}/authorize"}
    routes = [
        {**http_route("GET", "/pets", f"http://127.0.0.1:{port}/pets"), "authorizer": "custom"},
        {
            "method": "GET",
            "path": "/chat",
            "authorizer": "custom",
            "integration": {"type": "websocket", "uri": f"ws://127.0.0.1:{port}/chat"},
        },
    ]
    start(gateway, make_snapshot(_api_bundle(routes, authorizers=[conf])))
    status, _, body = call(gateway.port, "/prod/pets", headers={"Authorization": "t"})
    assert status == 400 and "invalid integration request" in json.loads(body)["reason"]
    upgrade = {
        "Authorization": "t",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert call(gateway.port, "/prod/chat", headers=upgrade)[0] == 400
    assert hits == []
