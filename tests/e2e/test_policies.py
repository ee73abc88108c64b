"""Resource policies and private endpoints the user's way (README "The request phase"): Apis with
`resourcePolicy.allowCidrs/denyCidrs` and `endpointType: private`, applied with `meshgate apply -f`,
served by a sidecar fed by a `meshgate control --cluster-cidr ...` process. The test client is on
loopback: outside the cluster networks under control's defaults, inside with `--cluster-cidr
127.0.0.0/8`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from meshgate.control.etcd_local import LocalEtcd

from .harness import NO_DRAIN, Mesh, Sidecar, http_get_json, mesh, wait_until

MOCK = "integration: {type: mock, mock: {status: 200, body: '{\"ok\": true}'}}"

POLICIES = f"""
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: denied}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  resourcePolicy: {{allowCidrs: [127.0.0.0/8], denyCidrs: [127.0.0.1/32]}}   # a deny wins
  routes: [{{method: GET, path: /x, {MOCK}}}]
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: allowed}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  resourcePolicy: {{allowCidrs: [127.0.0.0/8]}}
  routes: [{{method: GET, path: /x, {MOCK}}}]
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: elsewhere}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  resourcePolicy: {{allowCidrs: [10.0.0.0/8]}}
  routes: [{{method: GET, path: /x, {MOCK}}}]
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: internal}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  endpointType: private
  routes: [{{method: GET, path: /x, {MOCK}}}]
---
{{apiVersion: meshgate.io/v1, kind: Stage, metadata: {{name: denied}}, spec: {{api: denied}}}}
---
{{apiVersion: meshgate.io/v1, kind: Stage, metadata: {{name: allowed}}, spec: {{api: allowed}}}}
---
{{apiVersion: meshgate.io/v1, kind: Stage, metadata: {{name: elsewhere}}, spec: {{api: elsewhere}}}}
---
{{apiVersion: meshgate.io/v1, kind: Stage, metadata: {{name: internal}}, spec: {{api: internal}}}}
"""

PRIVATE_HTTP = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: backend}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  endpointType: private
  routes:
    - {{method: GET, path: "/pets/{{id}}", integration: {{type: http, uri: "http://{host}:{port}/pets/{{id}}"}}}}
---
{{apiVersion: meshgate.io/v1, kind: Stage, metadata: {{name: backend}}, spec: {{api: backend}}}}
"""


def _serve(m: Mesh, apis: list[str], probe: str) -> Sidecar:
    for api in apis:
        m.cli("deploy", api, "--stage", api)
    sc = m.start_sidecar(extra=NO_DRAIN)
    wait_until(lambda: sc.get(probe)[0] != 404, what=f"{probe} served")
    return sc


@pytest.fixture(scope="module")
def outside(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Sidecar]]:
    """control's default cluster networks (10/8, 172.16/12, 192.168/16, fd00::/8): loopback is outside."""
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("e2e-policy-out")) as m:
        m.start_control()
        m.apply(POLICIES)
        yield m, _serve(m, ["denied", "allowed", "elsewhere", "internal"], "/internal/x")


@pytest.fixture(scope="module")
def inside(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Sidecar]]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("e2e-policy-in")) as m:
        m.start_control(extra=("--cluster-cidr", "127.0.0.0/8"))
        backend = m.start_backend("v1")
        m.apply(POLICIES)
        m.apply(PRIVATE_HTTP.format(host="127.0.0.1", port=backend))
        yield m, _serve(m, ["denied", "internal", "backend"], "/backend/pets/1")


def test_resource_policy_allow_and_deny(outside: tuple[Mesh, Sidecar]) -> None:
    _, sc = outside
    assert sc.get("/allowed/x") == (200, {"ok": True})
    status, body = sc.get("/denied/x")
    assert status == 403 and set(body) == {"message", "requestId"}  # outsiders get no reason
    assert sc.get("/elsewhere/x")[0] == 403


def test_a_private_api_refuses_callers_outside_the_cluster_networks(outside: tuple[Mesh, Sidecar]) -> None:
    _, sc = outside
    status, body = sc.get("/internal/x")
    assert status == 403 and set(body) == {"message", "requestId"}


def test_a_private_api_with_an_http_integration_outside_the_cluster_is_refused_at_apply(
    outside: tuple[Mesh, Sidecar],
) -> None:
    m, _ = outside
    # loopback (the pod itself) and in-cluster names are allowed; a documentation address is not
    out = m.apply(PRIVATE_HTTP.format(host="203.0.113.5", port=80), check=False)
    assert out.returncode != 0 and "spec.routes[0].integration.uri" in out.stderr, out.stderr
    assert "203.0.113.5 is outside the cluster networks" in out.stderr
    assert "backend" not in m.cli("get", "apis").stdout  # nothing written


def test_inside_the_cluster_networks_a_private_api_serves(inside: tuple[Mesh, Sidecar]) -> None:
    _, sc = inside
    assert sc.get("/internal/x") == (200, {"ok": True})
    status, body = sc.get("/backend/pets/1")
    assert status == 200 and body["service"] == "v1"
    # the resource policy still applies to callers inside the mesh; insiders get the reason
    status, body = http_get_json(sc.port, "/denied/x")
    assert status == 403 and body["reason"]
