"""The control plane's TLS across real processes, the user's way: `meshgate control` makes its CA,
bootstrap token and the CLI's credential; `meshgate apply`/`get` use that credential by default; a
sidecar gets its certificate with the token and rotates it under load without a failed request or a
moment in which control does not list it, and without loading grpcio or cryptography."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from pathlib import Path

from meshgate.control.etcd_local import LocalEtcd
from meshgate.sidecar.credentials import default_state_dir
from meshgate.v1 import control_pb2

from .harness import Mesh, http_get_json, mesh, meshgate

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {body: '"ok"'}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: pets}
"""


def cli(m: Mesh, *args: str, port: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate("--control", f"127.0.0.1:{port or m.control_port}", *args),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_cli_needs_a_credential(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        out = cli(m, "--credentials", str(tmp_path / "none"), "get", "stages")
        assert (
            out.returncode == 1
            and out.stderr.startswith("error: no credentials")
            and "Traceback" not in out.stderr
        )
        ca = default_state_dir() / "ca.crt"
        out = cli(m, "--ca-file", str(ca), "--token", "guessed", "get", "stages", port=m.token_port)
        assert out.returncode == 1 and "unauthenticated" in out.stderr.lower(), out.stderr
        assert cli(m, "get", "stages").returncode == 0  # the local admin credential, found by default


def test_a_sidecar_rotates_its_certificate_under_load(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control(extra=("--cert-hours", "0.0008"))  # ~2.9 s certificates: renewed every ~1.9 s
        cfg = tmp_path / "pets.yaml"
        cfg.write_text(CONFIG)
        assert cli(m, "apply", "-f", str(cfg)).returncode == 0
        assert cli(m, "deploy", "pets", "--stage", "prod").returncode == 0
        sc = m.start_sidecar()
        failures: list[str] = []
        served = [0]
        stop = threading.Event()

        def load() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
            while not stop.is_set():
                try:
                    conn.request("GET", "/prod/health")
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200:
                        failures.append(f"{resp.status} {body[:80]!r}")
                    served[0] += 1
                except OSError as exc:
                    failures.append(repr(exc))
                    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        listed: list[int] = []
        stub = m.stub()
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            resp = stub.ListSidecars(control_pb2.ListSidecarsRequest(), timeout=5)
            listed.append(sum(1 for s in resp.sidecars if s.node.id == "sc-1"))
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        _, stats = http_get_json(sc.admin_port, "/stats?format=json")
        values = {s["name"]: s["value"] for s in stats["stats"]}
        assert values["config.certificate_renewals"] >= 2, values
        assert failures == [] and served[0] > 100
        assert set(listed) == {1}  # make before break: control never lost it
        node = next(s.node for s in resp.sidecars if s.node.id == "sc-1")
        assert node.identity == "spiffe://cluster.local/ns/default/sa/default"
        # each key and CSR was made by a child process (sidecar/keygen.py) and the config stream is
        # the sidecar's own gRPC client: neither cryptography nor grpcio is in the sidecar's memory
        assert sc.proc.popen is not None
        maps = Path(f"/proc/{sc.proc.popen.pid}/maps").read_text()
        assert "cryptography" not in maps and "grpc/_cython" not in maps
