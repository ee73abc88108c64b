"""End to end on real etcd, real control and sidecar processes, real sockets.

apply -> deploy -> request through the sidecar; rollback; canary split and
promote; control outages; NACK of a config the sidecar cannot apply.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.resources import load_documents
from meshgate.v1 import control_pb2, resources_pb2

from .harness import Mesh, http_get_json, mesh, meshgate

PETS_YAML = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /pets/{{id}}
      integration:
        type: http
        uri: http://${{stageVariables.backend}}/pets/{{id}}
    - method: GET
      path: /health
      integration: {{type: mock, mock: {{status: 200, body: '{{"ok": true}}'}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets, variables: {{backend: "127.0.0.1:{prod}"}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: dev}}
spec: {{api: pets, variables: {{backend: "127.0.0.1:{dev}"}}}}
"""


def _apply_yaml(m: Mesh, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
    path.write_text(text)
    return subprocess.run(
        meshgate("--control", f"127.0.0.1:{m.control_port}", "apply", "-f", str(path)),
        capture_output=True,
        text=True,
        timeout=30,
    )


def _deploy(m: Mesh, stage: str, **kw: object) -> control_pb2.DeployResponse:
    return m.stub().Deploy(
        control_pb2.DeployRequest(namespace="default", api="pets", stage=stage, **kw), timeout=10
    )


def _served_by(sc_port: int, path: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", sc_port, timeout=5)
    for _ in range(n):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        seen[json.loads(body)["service"]] += 1
    conn.close()
    return seen


def _wait_until(pred, timeout: float = 10.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}")


def _sticky_canary_applied(admin_port: int, stage: str, header: str) -> bool:
    """The sidecar's applied snapshot (/config_dump) has the stage's canary, sticky by `header`."""
    code, dump = http_get_json(admin_port, "/config_dump")
    for bundle in dump.get("stages", []) if code == 200 else []:
        if bundle["stage"]["metadata"]["name"] == stage:
            canary = bundle["stage"]["spec"].get("canary", {})
            return canary.get("stickyHeader") == header and "canaryDeployment" in bundle
    return False


@pytest.fixture
def pets(etcd: LocalEtcd, tmp_path: Path):  # type: ignore[no-untyped-def]
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        v1 = m.start_backend("v1")
        v2 = m.start_backend("v2")
        proc = _apply_yaml(m, tmp_path, PETS_YAML.format(prod=v1, dev=v2))
        assert proc.returncode == 0, proc.stderr
        _deploy(m, "prod")
        _deploy(m, "dev")
        m.backends = {"v1": v1, "v2": v2}  # type: ignore[attr-defined]
        yield m


def test_apply_deploy_serves_prod_and_dev_on_different_backends(pets: Mesh) -> None:
    sc = pets.start_sidecar()
    status, body = sc.get("/prod/pets/1")
    assert status == 200 and body["service"] == "v1" and body["data"]["id"] == 1
    status, body = sc.get("/dev/pets/2")
    assert status == 200 and body["service"] == "v2" and body["data"]["id"] == 2
    assert body["headers"]["X-Forwarded-Proto"] == "http"
    assert body["headers"]["X-Forwarded-For"] == "127.0.0.1"
    status, body = sc.get("/prod/health")
    assert (status, body) == (200, {"ok": True})
    status, body = sc.get("/qa/pets/1")
    # loopback is outside control's default cluster networks: the message and request id only
    assert status == 404 and body["requestId"] and set(body) == {"message", "requestId"}


def test_rollback_changes_what_is_served_without_restart(pets: Mesh, tmp_path: Path) -> None:
    sc = pets.start_sidecar()
    assert sc.get("/prod/health") == (200, {"ok": True})
    # Deployment 2 of prod changes the mock; rollback returns to deployment 1.
    changed = PETS_YAML.format(prod=pets.backends["v1"], dev=pets.backends["v2"]).replace(  # type: ignore[attr-defined]
        "'{\"ok\": true}'", '\'{"ok": "v2"}\''
    )
    assert _apply_yaml(pets, tmp_path, changed).returncode == 0
    dep = _deploy(pets, "prod")
    _wait_until(lambda: sc.get("/prod/health") == (200, {"ok": "v2"}), what="deployment 2 served")
    assert sc.get("/dev/health") == (200, {"ok": True})  # dev still on its own deployment
    pets.stub().Rollback(
        control_pb2.RollbackRequest(namespace="default", api="pets", stage="prod"), timeout=10
    )
    _wait_until(lambda: sc.get("/prod/health") == (200, {"ok": True}), what="rollback served")
    assert dep.deployment >= 2
    assert sc.proc.popen is not None and sc.proc.popen.poll() is None  # same process throughout


def test_canary_split_and_promote(pets: Mesh) -> None:
    sc = pets.start_sidecar()
    stub = pets.stub()
    v2 = pets.backends["v2"]  # type: ignore[attr-defined]
    canary = resources_pb2.CanarySettings(percent=20, variables={"backend": f"127.0.0.1:{v2}"})
    stub.SetCanary(
        control_pb2.CanaryRequest(namespace="default", api="pets", stage="prod", canary=canary), timeout=10
    )
    _wait_until(lambda: _served_by(sc.port, "/prod/pets/1", 50)["v2"] > 0, what="canary traffic")
    seen = _served_by(sc.port, "/prod/pets/1", 2000)
    share = seen["v2"] / 2000
    assert 0.15 <= share <= 0.25, seen
    stub.PromoteCanary(control_pb2.CanaryRequest(namespace="default", api="pets", stage="prod"), timeout=10)
    _wait_until(lambda: _served_by(sc.port, "/prod/pets/1", 20)["v1"] == 0, what="promotion")
    assert _served_by(sc.port, "/prod/pets/1", 200)["v2"] == 200


def test_sticky_canary_by_header(pets: Mesh) -> None:
    sc = pets.start_sidecar()
    v2 = pets.backends["v2"]  # type: ignore[attr-defined]
    canary = resources_pb2.CanarySettings(
        percent=50, sticky_header="x-user", variables={"backend": f"127.0.0.1:{v2}"}
    )
    pets.stub().SetCanary(
        control_pb2.CanaryRequest(namespace="default", api="pets", stage="prod", canary=canary), timeout=10
    )
    _wait_until(lambda: _sticky_canary_applied(sc.admin_port, "prod", "x-user"), what="canary applied")
    sides = set()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
        services = set()
        for _ in range(10):
            conn.request("GET", "/prod/pets/1", headers={"x-user": user})
            services.add(json.loads(conn.getresponse().read())["service"])
        conn.close()
        assert len(services) == 1, (user, services)
        sides |= services
    assert sides == {"v1", "v2"}


def test_control_outage_sidecar_keeps_serving_and_catches_up(pets: Mesh, tmp_path: Path) -> None:
    sc = pets.start_sidecar()
    assert sc.get("/prod/pets/1")[1]["service"] == "v1"
    control = pets.procs[0]
    control.stop()
    # Control down: the running sidecar keeps serving.
    assert sc.get("/prod/pets/1")[1]["service"] == "v1"
    # Sidecar restarted while control is down: serves its persisted snapshot.
    sc.proc.stop()
    sc2 = pets.start_sidecar(node_id="sc-1", state_dir=sc.state_dir, port=sc.port)
    assert sc2.get("/prod/pets/1")[1]["service"] == "v1"
    # Control back: the sidecar reconnects and picks up a change made meanwhile.
    pets.start_control(port=pets.control_port)
    changed = PETS_YAML.format(prod=pets.backends["v2"], dev=pets.backends["v2"])  # type: ignore[attr-defined]
    assert _apply_yaml(pets, tmp_path, changed).returncode == 0
    _wait_until(
        lambda: sc2.get("/prod/pets/1")[1].get("service") == "v2",
        timeout=20,
        what="sidecar catching up after control restart",
    )


def test_invalid_resource_refused_and_etcd_unchanged(pets: Mesh, tmp_path: Path) -> None:
    before = pets.stub().Get(control_pb2.GetRequest(kind="Api", namespace="default"), timeout=10)
    bad = PETS_YAML.format(prod=1, dev=2).replace("path: /health", "path: health")
    proc = _apply_yaml(pets, tmp_path, bad)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "routes[1].path" in err[0], proc.stderr
    after = pets.stub().Get(control_pb2.GetRequest(kind="Api", namespace="default"), timeout=10)
    assert after == before


def test_snapshot_sidecar_cannot_apply_is_nacked_and_old_config_kept(pets: Mesh, tmp_path: Path) -> None:
    sc = pets.start_sidecar()
    assert sc.get("/prod/health") == (200, {"ok": True})
    # A second Api bound to the same sidecar claiming the same stage prefix /prod:
    # valid on its own, but this sidecar cannot serve both -> NACK.
    other = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: other}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {status: 200, body: '"other"'}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: other}
"""
    assert _apply_yaml(pets, tmp_path, other).returncode == 0
    pets.stub().Deploy(control_pb2.DeployRequest(namespace="default", api="other", stage="prod"), timeout=10)

    def nacked() -> bool:
        resp = pets.stub().ListSidecars(control_pb2.ListSidecarsRequest(), timeout=5)
        return any(s.node.id == "sc-1" and s.last_nack_error for s in resp.sidecars)

    _wait_until(nacked, what="NACK recorded")
    resp = pets.stub().ListSidecars(control_pb2.ListSidecarsRequest(), timeout=5)
    status = next(s for s in resp.sidecars if s.node.id == "sc-1")
    assert "prod" in status.last_nack_error
    assert status.node.advertise == f"127.0.0.1:{sc.port}"  # where @connections calls are forwarded
    assert status.acked_version and status.acked_version != status.last_nack_version
    assert sc.get("/prod/health") == (200, {"ok": True})
    cli = subprocess.run(
        meshgate("--control", f"127.0.0.1:{pets.control_port}", "get", "sidecars"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0 and "sc-1" in cli.stdout


def test_gateway_errors_through_the_sidecar_process(pets: Mesh) -> None:
    sc = pets.start_sidecar()
    pets.procs[1].stop()  # backend v1 (prod) down
    status, body = sc.get("/prod/pets/1")
    assert status == 503 and body["message"] == "Service unavailable" and "reason" not in body
    status, body = sc.get("/prod/nothing/here")
    assert status == 404
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
    conn.request("POST", "/prod/pets/1", body=b"x" * (10 * 1024 * 1024 + 1))
    resp = conn.getresponse()
    assert resp.status == 413
    with socket.create_connection(("127.0.0.1", sc.port), timeout=5) as s:
        s.sendall(b"GET /prod/pets/1 HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 400")
        assert b"x-meshgate-request-id" in data.lower()
        s.settimeout(5)
        assert s.recv(65536) == b""  # connection closed after 400


def test_unreachable_control_cli_error_is_one_line(tmp_path: Path) -> None:
    from meshgate.control.etcd_local import free_port

    proc = subprocess.run(
        meshgate("--control", f"127.0.0.1:{free_port()}", "--timeout", "2", "get", "apis"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_load_documents_reads_demo_sample() -> None:
    from meshgate.control.demo import SAMPLE

    kinds = [r.WhichOneof("kind") for r in load_documents(SAMPLE)]
    assert kinds == ["api", "stage", "stage"]
