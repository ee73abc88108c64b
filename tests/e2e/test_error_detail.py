"""Error detail across real processes, configured the user's way (`meshgate apply`): outsiders get
API Gateway's message, a stage with `errorDetail: true` gives the reason to every caller, and the
access log and /stats keep it either way."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

from meshgate.control.etcd_local import LocalEtcd

from .harness import Mesh, http_get_json, mesh, meshgate

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: errs}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - {{method: GET, path: /down, integration: {{type: http, uri: "http://127.0.0.1:{dead}/down"}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: errs, accessLogFormat: json}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: debug}}
spec: {{api: errs, errorDetail: true}}
"""


def cli(m: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate("--control", f"127.0.0.1:{m.control_port}", *args),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_error_detail_is_for_the_mesh_and_opted_in_stages(etcd: LocalEtcd, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        cfg = tmp_path / "errs.yaml"
        cfg.write_text(CONFIG.format(dead=dead))
        out = cli(m, "apply", "-f", str(cfg))
        assert out.returncode == 0, out.stderr
        for stage in ("prod", "debug"):
            out = cli(m, "deploy", "errs", "--stage", stage)
            assert out.returncode == 0, out.stderr
        sc = m.start_sidecar()
        deadline = time.monotonic() + 20
        while sc.get("/debug/down")[0] == 404 and time.monotonic() < deadline:
            time.sleep(0.05)

        status, body = http_get_json(sc.port, "/prod/down")
        assert status == 503 and set(body) == {"message", "requestId"}, body
        assert str(dead) not in json.dumps(body)
        status, detail = http_get_json(sc.port, "/debug/down")
        assert status == 503 and f"127.0.0.1:{dead}" in detail["reason"]

        deadline = time.monotonic() + 10
        logged: list[dict[str, object]] = []
        while not logged and time.monotonic() < deadline:
            lines = [x for x in sc.proc.output().splitlines() if x.startswith("{") and body["requestId"] in x]
            logged = [json.loads(x) for x in lines]
            time.sleep(0.05)
        assert logged and f"127.0.0.1:{dead}" in str(logged[0]["error.reason"])

        conn = http.client.HTTPConnection("127.0.0.1", sc.admin_port, timeout=5)
        conn.request("GET", "/stats")
        stats = conn.getresponse().read().decode()
        (line,) = [x for x in stats.splitlines() if x.startswith(f"errors.recent.{body['requestId']}: ")]
        assert line.split(": ", 1)[1].startswith("503 default/errs/prod /down ") and str(dead) in line
        code, doc = http_get_json(sc.admin_port, "/stats?format=json")
        assert code == 200 and any(e["requestId"] == detail["requestId"] for e in doc["recentErrors"])
