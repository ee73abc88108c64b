"""The idle sidecar's memory, split into private (RssAnon) and file-backed (shared across the pods
of a node), in the three ways it runs:

- 100 plain HTTP routes from a snapshot file;
- the bench's feature snapshot (templates, a JSON Schema model, an encrypted cache) with 100 routes;
- 100 plain HTTP routes from a real control service over mTLS (etcd + `meshgate control`): what an
  injected pod runs (its certificate from a child process, its config stream on its own gRPC client).

Usage: python bench/footprint.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import run as b
from google.protobuf import json_format

ROUTES = 100


def status(pid: int) -> dict[str, float]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def plain_snapshot(work: Path) -> Path:
    from sidecar.conftest import bundle, http_route, snapshot

    routes = [http_route("GET", f"/r{i}/{{id}}", f"http://127.0.0.1:9/r{i}/{{id}}") for i in range(ROUTES)]
    path = work / "plain.json"
    path.write_text(json_format.MessageToJson(snapshot(bundle(routes))))
    return path


def from_file(snap: Path, work: Path) -> dict[str, float]:
    admin = b.free_port()
    proc = b.start(
        b.sidecar_cmd(snap, b.free_port(), admin, "--state-dir", str(work / snap.stem)), work / "fp.log"
    )
    try:
        b.wait_http(f"http://127.0.0.1:{admin}/ready")
        time.sleep(1.0)
        return status(proc.pid)
    finally:
        b.stop(proc)


def from_control(work: Path) -> dict[str, float]:
    from e2e.harness import NO_DRAIN, mesh
    from meshgate.control.etcd_local import LocalEtcd

    routes = "\n".join(
        f"    - {{method: GET, path: '/r{i}/{{id}}', integration: {{type: http, uri: 'http://127.0.0.1:9/r{i}/{{id}}'}}}}"
        for i in range(ROUTES)
    )
    config = f"""
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
{routes}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets}}
"""
    with LocalEtcd() as etcd, mesh(etcd.endpoint, work / "mesh") as m:
        m.start_control()
        m.apply(config)
        m.cli("deploy", "pets", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)
        time.sleep(1.0)
        assert sc.proc.popen is not None
        return status(sc.proc.popen.pid)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="meshgate-footprint-") as t:
        work = Path(t)
        (work / "mesh").mkdir()
        features = work / "features.json"
        features.write_text(json_format.MessageToJson(b.bench_snapshot(9, extra_routes=ROUTES - 2)))
        rows = {
            f"{ROUTES} plain routes, snapshot file": from_file(plain_snapshot(work), work),
            f"{ROUTES} routes with the bench's features, file": from_file(features, work),
            f"{ROUTES} plain routes, from control (mTLS)": from_control(work),
        }
    print(f"{'idle sidecar (MiB)':46s} {'RSS':>6s} {'private':>8s} {'file-backed':>12s}")
    for name, m in rows.items():
        print(f"{name:46s} {m['VmRSS']:6.1f} {m['RssAnon']:8.1f} {m['RssFile']:12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
