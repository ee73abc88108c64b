"""The JWT authorizer through the user's path: `meshgate apply -f` of an Api with a `type: jwt`
authorizer whose `jwksUri` is a JWKS served by the test, `meshgate deploy`, a sidecar process fed by
control from etcd, and real clients with tokens signed by the test's RSA key: 401 without a token and
with a bad one (wrong key, wrong audience, expired), 200 with a good one, a missing scope 403, and
`claimsToHeaders` reaching the backend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, AioServer, Sidecar, http_request, mesh

ISSUER = "https://idp.example.com"

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  authorizers:
    - name: cognito
      type: jwt
      issuer: {issuer}
      audiences: [orders]
      jwksUri: http://127.0.0.1:{jwks}/.well-known/jwks.json
      claimsToHeaders: {{email: x-user-email}}
  routes:
    - method: GET
      path: /orders/{{id}}
      authorizer: cognito
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/orders/{{id}}"}}
    - method: POST
      path: /orders
      authorizer: cognito
      authorizationScopes: [orders/write]
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/orders"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: orders}}
"""


@dataclass
class Env:
    sidecar: Sidecar
    key: rsa.RSAPrivateKey
    jwks_fetches: list[float]


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fetches: list[float] = []

    async def jwks(request: web.Request) -> web.Response:
        fetches.append(time.monotonic())
        return web.json_response({"keys": [_jwk(key, "k1")]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    with AioServer(app) as idp, mesh(etcd.endpoint, tmp_path_factory.mktemp("jwt")) as m:
        m.start_control()
        backend = m.start_backend("v1")
        m.apply(CONFIG.format(issuer=ISSUER, jwks=idp.port, backend=backend))
        m.cli("deploy", "orders", "--stage", "prod")
        yield Env(m.start_sidecar(extra=NO_DRAIN), key, fetches)


def token(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "orders", "sub": "user-1", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def call(env: Env, method: str, path: str, tok: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {tok}"} if tok is not None else {}
    return http_request(env.sidecar.port, method, path, headers, b"{}" if method == "POST" else None)


def test_no_token_or_a_bad_one_is_401_and_never_reaches_the_backend(env: Env) -> None:
    code, headers, body = call(env, "GET", "/prod/orders/7", None)
    assert code == 401 and json.loads(body)["message"] == "Unauthorized", body
    assert headers["www-authenticate"].startswith("Bearer")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "signed by another key": token(other),
        "another audience": token(env.key, aud="billing"),
        "another issuer": token(env.key, iss="https://evil.example.com"),
        "expired beyond the 60 s skew": token(env.key, exp=int(time.time()) - 120),
        "not a JWT": "not-a-jwt",
        "an unknown kid": token(env.key, kid="k9"),
    }
    for what, tok in bad.items():
        code, headers, body = call(env, "GET", "/prod/orders/7", tok)
        assert code == 401, (what, code, body)
        assert "service" not in json.loads(body), what  # the backend's echo never came back


def test_a_good_token_passes_with_its_claims_as_headers(env: Env) -> None:
    code, _, body = call(env, "GET", "/prod/orders/7", token(env.key, email="ann@example.com"))
    assert code == 200, body
    seen = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert seen["x-user-email"] == "ann@example.com" and seen["x-meshgate-principal"] == "user-1"
    assert env.jwks_fetches, "the sidecar fetched the JWKS from jwksUri"


def test_authorization_scopes_403_without_the_scope(env: Env) -> None:
    code, _, body = call(env, "POST", "/prod/orders", token(env.key, scope="orders/read"))
    assert code == 403 and json.loads(body)["message"] == "Forbidden", body
    code, _, body = call(env, "POST", "/prod/orders", token(env.key, scope="orders/read orders/write"))
    assert code == 200 and json.loads(body)["service"] == "v1", body
