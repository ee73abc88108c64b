"""The stage cache through the user's path: `meshgate apply -f` of an Api and three Stages with caches
(`prod` encrypted with `invalidation: require_authorization`, `strict` with `fail`, `loose` with
`ignore`), `meshgate deploy`, sidecar processes fed by control from etcd, and a real client:

- the encrypted cache's key comes from the sidecar's `--cache-key-file` and, on another sidecar, from
  `MESHGATE_CACHE_KEY`: both serve the second GET from the cache; a sidecar with neither NACKs the
  snapshot naming the missing key (`meshgate get sidecars` shows it), one with a key that is not 32
  bytes exits at start;
- `Cache-Control: max-age=0` invalidates only for an authorized caller under
  `require_authorization` (others get the cached answer), is a 403 under `fail`, changes nothing under
  `ignore`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, AioServer, Mesh, Sidecar, http_request, mesh, meshgate, wait_until

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  authorizers:
    - {{name: tokens, type: token, uri: "http://127.0.0.1:{authz}/token", resultTtlSeconds: 0}}
  routes:
    - method: GET
      path: /pets/{{id}}
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/pets/{{id}}"}}
    - method: GET
      path: /mine/{{id}}
      authorizer: tokens
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/pets/{{id}}"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec:
  api: pets
  cache: {{enabled: true, ttlSeconds: 300, encrypted: true, invalidation: require_authorization}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: strict}}
spec: {{api: pets, cache: {{enabled: true, invalidation: fail}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: loose}}
spec: {{api: pets, cache: {{enabled: true, invalidation: ignore}}}}
"""


@dataclass
class Env:
    mesh: Mesh
    from_file: Sidecar
    from_env: Sidecar


@pytest.fixture(scope="module")
def env(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cache")

    async def token(request: web.Request) -> web.Response:
        event = await request.json()
        effect = "Allow" if event["authorizationToken"] == "admin" else "Deny"
        statement = {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
        return web.json_response({"principalId": "ops", "policyDocument": {"Statement": [statement]}})

    app = web.Application()
    app.router.add_post("/token", token)
    with AioServer(app) as authz, mesh(etcd.endpoint, tmp) as m:
        m.start_control()
        backend = m.start_backend("v1")
        m.apply(CONFIG.format(authz=authz.port, backend=backend))
        for stage in ("prod", "strict", "loose"):
            m.cli("deploy", "pets", "--stage", stage)
        key_file = tmp / "cache.key"
        key_file.write_text(secrets.token_hex(32))  # hex; load_key also takes raw and base64
        key_file.chmod(0o600)
        from_file = m.start_sidecar("sc-file", extra=("--cache-key-file", str(key_file), *NO_DRAIN))
        os.environ["MESHGATE_CACHE_KEY"] = secrets.token_urlsafe(32)[:32]  # 32 raw bytes
        try:
            from_env = m.start_sidecar("sc-env", extra=NO_DRAIN)
        finally:
            del os.environ["MESHGATE_CACHE_KEY"]
        yield Env(m, from_file, from_env)


def get(sc: Sidecar, path: str, **headers: str) -> tuple[int, str, int]:
    """status, x-meshgate-cache, the backend's served counter (the same number = the same answer)."""
    code, h, body = http_request(sc.port, "GET", path, headers)
    return code, h.get("x-meshgate-cache", ""), int(json.loads(body).get("served", -1))


@pytest.mark.parametrize("which", ["from_file", "from_env"])
def test_encrypted_cache_with_the_key_from_a_file_or_the_environment(env: Env, which: str) -> None:
    sc: Sidecar = getattr(env, which)
    path = f"/prod/pets/1?who={which}"
    code, state, first = get(sc, path)
    assert (code, state) == (200, "miss")
    assert get(sc, path) == (200, "hit", first)


def test_no_cache_key_is_a_nack_naming_it(env: Env) -> None:
    sc = env.mesh.start_sidecar("sc-nokey", wait_ready=False, extra=NO_DRAIN)

    def nack() -> Any:
        out = env.mesh.cli("get", "sidecars", "-o", "json")
        doc = json.loads(out.stdout)
        rows = doc if isinstance(doc, list) else doc.get("items", doc.get("sidecars", []))
        return next((r for r in rows if "sc-nokey" in json.dumps(r) and "cache key" in json.dumps(r)), None)

    row = wait_until(nack, timeout=15, what="the NACK of sc-nokey")
    assert "wants an encrypted cache" in json.dumps(row), row
    assert http_request(sc.admin_port, "GET", "/ready")[0] != 200


def test_a_cache_key_that_is_not_32_bytes_stops_the_sidecar(env: Env, tmp_path: Any) -> None:
    bad = tmp_path / "short.key"
    bad.write_text("too-short")
    out = subprocess.run(
        meshgate("sidecar", "--control", "127.0.0.1:1", "--cache-key-file", str(bad)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "cache key must be 32 bytes" in out.stderr, out.stderr


def test_max_age_0_require_authorization(env: Env) -> None:
    sc = env.from_file
    _, _, first = get(sc, "/prod/pets/2")
    # an unauthorized caller may not invalidate: the cached answer comes back
    assert get(sc, "/prod/pets/2", **{"Cache-Control": "max-age=0"}) == (200, "ignored-invalidation", first)
    # an authorized caller invalidates: the backend answers again, and that answer is cached
    _, _, mine = get(sc, "/prod/mine/2", Authorization="admin")
    assert get(sc, "/prod/mine/2", Authorization="admin") == (200, "hit", mine)
    code, state, fresh = get(sc, "/prod/mine/2", Authorization="admin", **{"Cache-Control": "max-age=0"})
    assert (code, state) == (200, "invalidated") and fresh > mine
    assert get(sc, "/prod/mine/2", Authorization="admin") == (200, "hit", fresh)


def test_max_age_0_fail_and_ignore(env: Env) -> None:
    sc = env.from_file
    _, _, first = get(sc, "/strict/pets/3")
    code, h, _ = http_request(sc.port, "GET", "/strict/pets/3", {"Cache-Control": "max-age=0"})
    assert code == 403 and "x-meshgate-cache" not in h
    assert get(sc, "/strict/pets/3") == (200, "hit", first)
    _, _, first = get(sc, "/loose/pets/3")
    assert get(sc, "/loose/pets/3", **{"Cache-Control": "max-age=0"}) == (200, "hit", first)
