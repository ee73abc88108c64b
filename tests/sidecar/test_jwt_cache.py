"""The verified-token cache of the JWT authorizer: a token is verified once and trusted until
min(its exp, 60 s); a token already past exp (inside the leeway) is verified on every request."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from meshgate.sidecar.authorizers import JwksCache, JwtAuthorizer

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def authorizer() -> JwtAuthorizer:
    jwks = JwksCache("http://unused", lambda: None)  # type: ignore[arg-type,return-value]
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    jwks.keys = {"k1": jwt.PyJWK({**public, "kid": "k1", "alg": "RS256"})}
    jwks.last_attempt = time.monotonic()  # the key is there: no fetch
    return JwtAuthorizer("t", "https://idp", ("api",), jwks)


def bearer(exp_in: float) -> str:
    claims = {"iss": "https://idp", "aud": "api", "sub": "ann", "exp": int(time.time() + exp_in)}
    return "Bearer " + jwt.encode(claims, KEY, "RS256", headers={"kid": "k1"})


def status(auth: JwtAuthorizer, raw: str) -> Any:
    return getattr(auth.authorize({"authorization": raw}, ()), "status", None)


@pytest.mark.parametrize(("exp_in", "cached_for"), [(3600, 60.0), (20, 20.0)])
def test_a_verified_token_is_trusted_until_min_of_exp_and_60s(
    authorizer: JwtAuthorizer, monkeypatch: pytest.MonkeyPatch, exp_in: float, cached_for: float
) -> None:
    raw = bearer(exp_in)
    assert status(authorizer, raw) == 0
    expiry = authorizer._verified[raw][0] - time.monotonic()
    assert cached_for - 2 < expiry <= cached_for  # exp is whole seconds: up to a second less
    decoded: list[int] = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    assert status(authorizer, raw) == 0 and decoded == []  # the cache answered
    authorizer._verified[raw] = (time.monotonic() - 0.001, *authorizer._verified[raw][1:])  # its time is up
    assert status(authorizer, raw) == 0 and decoded == [1]  # verified again


def test_a_token_past_exp_inside_the_leeway_is_never_cached(authorizer: JwtAuthorizer) -> None:
    raw = bearer(-5)  # expired 5 s ago, inside the 60 s leeway: still valid
    assert status(authorizer, raw) == 0
    assert raw not in authorizer._verified
