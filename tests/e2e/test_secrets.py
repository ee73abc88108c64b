"""Secrets across real processes (etcd, control, a sidecar, a backend, the CLI): a declared secret
stage variable never shows in `meshgate get -o yaml` or /config_dump yet reaches the backend; the
read-back document applies as unchanged; etcd holds no bare sha256 of the API key, which still works
(403 without, 200 with); the persisted snapshot is 0600 in a 0700 directory."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

from meshgate.control.etcd_local import LocalEtcd

from .harness import http_get_json, mesh
from .test_request_phase import cli, status, wait

DB_PASSWORD = "db-pa55-0f-the-e2e"
KEY = "e2e-partner-key-0123456789"

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - method: GET
      path: /pets/{{id}}
      apiKeyRequired: true
      integration:
        type: http
        uri: "http://127.0.0.1:{backend}/pets/{{id}}"
        requestParameters: {{integration.request.header.X-User-Db: stageVariables.db_pass}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec:
  api: pets
  variables: {{db_pass: {password}, region: eu}}
  secretVariables: [db_pass]
---
apiVersion: meshgate.io/v1
kind: UsagePlan
metadata: {{name: gold}}
spec: {{apis: [pets/prod]}}
---
apiVersion: meshgate.io/v1
kind: ApiKey
metadata: {{name: partner}}
spec: {{usagePlan: gold, value: {key}}}
"""


def test_secret_variables_and_api_keys_across_processes(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        backend = m.start_backend("v1")
        cfg = tmp_path / "pets.yaml"
        cfg.write_text(CONFIG.format(backend=backend, password=DB_PASSWORD, key=KEY))
        out = cli(m, "apply", "-f", str(cfg))
        assert out.returncode == 0, out.stderr
        assert cli(m, "deploy", "pets", "--stage", "prod").returncode == 0

        # etcd: no key, no bare sha256 of it (hex or raw)
        etcd_dump = subprocess.run(
            ["etcdctl", f"--endpoints={etcd.endpoint}", "get", "--prefix", m.prefix],
            capture_output=True,
            timeout=10,
        ).stdout
        digest = hashlib.sha256(KEY.encode())
        assert b"apikeys" in etcd_dump and KEY.encode() not in etcd_dump
        assert digest.hexdigest().encode() not in etcd_dump and digest.digest() not in etcd_dump

        # meshgate get: the secret is write-only; the read-back applies as unchanged
        got = cli(m, "get", "stage", "prod", "--api", "pets", "-o", "yaml")
        assert got.returncode == 0, got.stderr
        assert DB_PASSWORD not in got.stdout and "[redacted]" in got.stdout and "region: eu" in got.stdout
        keys_out = cli(m, "get", "apikey", "partner", "-o", "json")
        assert keys_out.returncode == 0 and digest.hexdigest() not in keys_out.stdout
        back = tmp_path / "back.yaml"
        back.write_text(got.stdout + "---\n" + keys_out.stdout)
        again = cli(m, "apply", "-f", str(back))
        assert again.returncode == 0 and "configured" not in again.stdout, again.stdout + again.stderr

        sc = m.start_sidecar(state_dir=tmp_path / "state")
        wait(lambda: status(sc.port, "/prod/pets/1", {"x-api-key": KEY})[0] == 200, what="key works")
        assert status(sc.port, "/prod/pets/1")[0] == 403
        assert status(sc.port, "/prod/pets/1", {"x-api-key": KEY + "x"})[0] == 403
        code, _, body = status(sc.port, "/prod/pets/1", {"x-api-key": KEY})
        assert (
            code == 200
            and {k.lower(): v for k, v in json.loads(body)["headers"].items()}.get("x-user-db") == DB_PASSWORD
        )

        # /config_dump: redacted by the declaration (db_pass does not look like a secret by name)
        code, dump = http_get_json(sc.admin_port, "/config_dump")
        text = json.dumps(dump)
        assert code == 200 and DB_PASSWORD not in text and digest.hexdigest() not in text
        assert dump["stages"][0]["stage"]["spec"]["variables"] == {"db_pass": "[redacted]", "region": "eu"}

        # the persisted snapshot: owner-only file in an owner-only directory
        state = tmp_path / "state"
        assert stat.S_IMODE((state / "snapshot.pb").stat().st_mode) == 0o600
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
