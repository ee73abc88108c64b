"""The request phase across real processes: a stage limit shared by 3 sidecars, API keys applied with
the CLI, the stage cache and its flush through control, a private Api refused at validation."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from meshgate.control.etcd_local import LocalEtcd

from .harness import Mesh, Sidecar, http_get_json, mesh, meshgate

KEY = "demo-key-0123456789abcdef"

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - {{method: GET, path: /limited, integration: {{type: mock, mock: {{body: '"ok"'}}}}}}
    - method: GET
      path: /pets/{{id}}
      throttling: {{rateLimit: 1000, burstLimit: 1000}}
      integration: {{type: http, uri: "http://127.0.0.1:{backend}/pets/{{id}}"}}
    - method: GET
      path: /keyed
      apiKeyRequired: true
      integration: {{type: mock, mock: {{body: '"keyed"'}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec:
  api: pets
  throttling: {{rateLimit: 0.01, burstLimit: 6}}
  cache: {{enabled: true, ttlSeconds: 300}}
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: gold}}
spec: {{apis: [pets/prod], throttle: {{rateLimit: 300, burstLimit: 300}}, quota: {{limit: 2, period: DAY}}}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: ci}}
spec: {{usagePlan: gold, value: {key}}}
"""


def cli(m: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate("--control", f"127.0.0.1:{m.control_port}", *args),
        capture_output=True,
        text=True,
        timeout=30,
    )


def status(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def replicas_applied(sc: Sidecar, n: int) -> bool:
    code, dump = http_get_json(sc.admin_port, "/config_dump")
    stages: list[dict[str, Any]] = dump.get("stages", []) if code == 200 else []
    return bool(stages) and stages[0].get("replicas") == n and "deployment" in stages[0]


def wait(pred: Any, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


def test_stage_limit_cache_keys_and_flush_across_processes(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control(extra=("--cluster-cidr", "127.0.0.0/8"))  # errors carry their reason
        backend = m.start_backend("v1")
        cfg = tmp_path / "pets.yaml"
        cfg.write_text(CONFIG.format(backend=backend, key=KEY))
        out = cli(m, "apply", "-f", str(cfg))
        assert out.returncode == 0, out.stderr
        assert (
            KEY
            not in (
                etcd_dump := subprocess.run(
                    ["etcdctl", f"--endpoints={etcd.endpoint}", "get", "--prefix", m.prefix],
                    capture_output=True,
                    timeout=10,
                ).stdout.decode("latin-1")
            )
            and "apikeys" in etcd_dump
        )  # stored hashed, never in clear
        assert cli(m, "deploy", "pets", "--stage", "prod").returncode == 0
        sidecars = [m.start_sidecar(node_id=f"sc-{i}") for i in range(3)]
        for sc in sidecars:
            wait(lambda sc=sc: replicas_applied(sc, 3), what="3 replicas known")

        # the stage limit (burst 6) holds across the three sidecars: 2 each
        codes = [status(sc.port, "/prod/limited")[0] for sc in sidecars for _ in range(3)]
        assert codes.count(200) == 6 and codes.count(429) == 3, codes

        # API key + daily quota of 2 (divided across 3 replicas: 1 each). The key's plan has a
        # throttle of its own, so sidecar 0's stage bucket, empty by now, is not what refuses.
        sc = sidecars[0]
        assert status(sc.port, "/prod/keyed")[0] == 403
        assert status(sc.port, "/prod/keyed", {"x-api-key": KEY})[0] == 200
        code, headers, body = status(sc.port, "/prod/keyed", {"x-api-key": KEY})
        assert code == 429 and int(headers["retry-after"]) >= 1, body
        assert "quota of usage plan gold exhausted for this day" in json.loads(body)["reason"], body

        # the cache: second identical GET served without the backend; flush through control
        s1, h1, b1 = status(sidecars[1].port, "/prod/pets/1")
        s2, h2, b2 = status(sidecars[1].port, "/prod/pets/1")
        assert (s1, s2) == (200, 200) and h1["x-meshgate-cache"] == "miss" and h2["x-meshgate-cache"] == "hit"
        assert json.loads(b1)["served"] == json.loads(b2)["served"]
        flushed = cli(m, "cache", "flush", "pets", "--stage", "prod")
        assert flushed.returncode == 0 and "epoch 1" in flushed.stdout, flushed.stderr
        wait(
            lambda: status(sidecars[1].port, "/prod/pets/1")[1].get("x-meshgate-cache") == "miss",
            what="flush applied",
        )


def test_private_api_integration_outside_cluster_is_refused(etcd: LocalEtcd, tmp_path: Path) -> None:
    doc = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: internal}
spec:
  endpointType: private
  routes:
    - {method: GET, path: /x, integration: {type: http, uri: "http://8.8.8.8/x"}}
"""
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        cfg = tmp_path / "private.yaml"
        cfg.write_text(doc)
        out = cli(m, "apply", "-f", str(cfg))
        assert out.returncode == 1 and "8.8.8.8 is outside the cluster networks" in out.stderr
        cfg.write_text(doc.replace("8.8.8.8", "orders.shop.svc.cluster.local"))
        assert cli(m, "apply", "-f", str(cfg)).returncode == 0
