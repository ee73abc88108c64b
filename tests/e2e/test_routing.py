"""Stage routing the user's way (README "Configuring an API"): a canary set with `meshgate canary set
--sticky-header/--sticky-cookie`, a Stage's `hosts` mapping and an Api's `basePath`, applied with
`meshgate apply -f`, deployed, served by a sidecar fed by control from etcd, to two sample backends."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Mesh, Sidecar, mesh, wait_until

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /pets/{{id}}
      integration: {{type: http, uri: "http://${{stageVariables.backend}}/pets/{{id}}"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets, variables: {{backend: "127.0.0.1:{v1}"}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: web}}
spec: {{api: pets, variables: {{backend: "127.0.0.1:{v2}"}}, hosts: [pets.example.com]}}
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: shop}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  basePath: shop
  routes:
    - {{method: GET, path: "/items/{{id}}", integration: {{type: http, uri: "http://127.0.0.1:{v2}/pets/{{id}}"}}}}
    - {{method: GET, path: "/admin/{{id}}", ports: [8081], integration: {{type: http, uri: "http://127.0.0.1:{v2}/pets/{{id}}"}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: live}}
spec: {{api: shop}}
"""


@dataclass
class Routed:
    mesh: Mesh
    sc: Sidecar


def get(sc: Sidecar, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body) if body else None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def routed(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("e2e-routing")) as m:
        m.start_control()
        v1, v2 = m.start_backend("v1"), m.start_backend("v2")
        m.apply(CONFIG.format(v1=v1, v2=v2))
        m.cli("deploy", "pets", "--stage", "prod")
        m.cli("deploy", "pets", "--stage", "web")
        m.cli("deploy", "shop", "--stage", "live")
        m.cli(
            "canary",
            "set",
            "pets",
            "--stage",
            "prod",
            "--percent",
            "50",
            "--sticky-header",
            "x-user",
            "--sticky-cookie",
            "user",
            "--var",
            f"backend=127.0.0.1:{v2}",
        )
        sc = m.start_sidecar(extra=NO_DRAIN)
        wait_until(lambda: get(sc, "/shop/live/items/1")[0] == 200, what="the last deployment served")
        wait_until(
            lambda: any(get(sc, "/prod/pets/1")[1].get("x-meshgate-canary") == "1" for _ in range(20)),
            what="canary traffic",
        )
        yield Routed(m, sc)


def _side(sc: Sidecar, headers: dict[str, str]) -> str:
    status, head, body = get(sc, "/prod/pets/1", headers)
    assert status == 200, body
    # the canary's stage-variable override picked the backend; the header says canary
    assert (head.get("x-meshgate-canary") == "1") == (body["service"] == "v2"), (head, body)
    return str(body["service"])


@pytest.mark.parametrize("how", ["header", "cookie"])
def test_the_canary_is_sticky(routed: Routed, how: str) -> None:
    sides: Counter[str] = Counter()
    for i in range(30):
        headers = {"x-user": f"u{i}"} if how == "header" else {"Cookie": f"theme=dark; user=u{i}"}
        seen = {_side(routed.sc, headers) for _ in range(4)}
        assert len(seen) == 1, f"{how} u{i} was served by {seen}"
        sides[seen.pop()] += 1
    assert sides["v1"] and sides["v2"], sides  # 50 %: thirty users land on both sides


def test_the_sticky_header_wins_over_the_cookie(routed: Routed) -> None:
    by_header = {i: _side(routed.sc, {"x-user": f"u{i}"}) for i in range(20)}
    for i, side in by_header.items():
        assert _side(routed.sc, {"x-user": f"u{i}", "Cookie": f"user=other{i}"}) == side


def test_a_host_mapping_serves_its_stage_without_a_prefix(routed: Routed) -> None:
    status, _, body = get(routed.sc, "/pets/3", {"Host": "pets.example.com"})
    assert status == 200 and body["service"] == "v2" and body["data"]["id"] == 3
    status, _, body = get(routed.sc, "/pets/3", {"Host": "pets.example.com:8080"})
    assert status == 200 and body["service"] == "v2"
    assert get(routed.sc, "/pets/3", {"Host": "other.example.com"})[0] == 404


def test_base_path_comes_before_the_stage(routed: Routed) -> None:
    status, _, body = get(routed.sc, "/shop/live/items/2")
    assert status == 200 and body["data"]["id"] == 2 and body["service"] == "v2"
    assert get(routed.sc, "/live/items/2")[0] == 404


def test_a_route_bound_to_an_app_port_is_not_served_elsewhere(routed: Routed) -> None:
    """`ports: [8081]`: served only to connections redirected from the app's port 8081 (the
    network-namespace test shows that side); a request made to the sidecar's own port gets 404."""
    status, _, body = get(routed.sc, "/shop/live/admin/2")
    assert status == 404
    conn = http.client.HTTPConnection("127.0.0.1", routed.sc.admin_port, timeout=5)
    conn.request("GET", f"/stats?filter=errors.recent.{body['requestId']}")
    stats = conn.getresponse().read().decode()
    conn.close()
    assert "served on port(s) [8081] only" in stats, stats  # the route arrived; the port kept it out
    assert get(routed.sc, "/shop/live/items/2")[0] == 200
