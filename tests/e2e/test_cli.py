"""The `meshgate` CLI against a real control process and etcd: every admin subcommand a user types."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from meshgate.control.etcd_local import LocalEtcd

from .harness import Mesh, mesh, meshgate

API = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: shop}}
  routes:
    - {method: GET, path: /items, integration: {type: mock, mock: {body: '[]'}}}
"""
STAGE = """
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: shop, variables: {color: blue}}
"""


def cli(m: Mesh, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate("--control", f"127.0.0.1:{m.control_port}", *args),
        capture_output=True,
        text=True,
        timeout=30,
        input=stdin,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_admin_subcommands_end_to_end(etcd: LocalEtcd, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "1-api.yaml").write_text(API)
    (conf / "2-stage.yaml").write_text(STAGE)
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        assert (
            ok(cli(m, "apply", "-f", str(conf), "--dry-run"))
            == "api/shop created (dry run)\nstage/prod created (dry run)\n"
        )
        assert ok(cli(m, "-n", "team", "apply", "-f", str(conf))) == "api/shop created\nstage/prod created\n"
        assert ok(cli(m, "-n", "team", "apply", "-f", "-", stdin=API)) == "api/shop unchanged\n"
        assert "deployment 1 of shop now serves stage prod" in ok(
            cli(m, "-n", "team", "deploy", "shop", "--stage", "prod")
        )
        ok(cli(m, "-n", "team", "deploy", "shop", "--stage", "prod", "--description", "second"))
        table = ok(cli(m, "get", "stages"))
        assert table.splitlines()[0].split()[:4] == ["NAMESPACE", "API", "STAGE", "DEPLOYMENT"]
        assert table.splitlines()[1].split()[:4] == ["team", "shop", "prod", "2"]
        docs = yaml.safe_load(ok(cli(m, "-n", "team", "get", "deployments", "-o", "yaml")))["items"]
        assert [d["id"] for d in docs] == ["1", "2"] and docs[1]["spec"]["description"] == "second"
        stage = json.loads(ok(cli(m, "-n", "team", "get", "stage", "prod", "-o", "json")))
        assert stage["kind"] == "Stage" and stage["spec"]["deployment"] == "2"
        out = ok(
            cli(
                m,
                "-n",
                "team",
                "canary",
                "set",
                "shop",
                "--stage",
                "prod",
                "--percent",
                "25",
                "--var",
                "color=red",
            )
        )
        assert "25% of requests to canary deployment 2" in out
        assert "deployment 3 of shop now serves canary of stage prod" in ok(
            cli(m, "-n", "team", "deploy", "shop", "--stage", "prod")
        )
        ok(cli(m, "-n", "team", "canary", "promote", "shop", "--stage", "prod"))
        stage = json.loads(ok(cli(m, "-n", "team", "get", "stage", "prod", "-o", "json")))
        assert stage["spec"]["deployment"] == "3" and stage["spec"]["variables"]["color"] == "red"
        assert "rolled back to deployment 1" in ok(
            cli(m, "-n", "team", "rollback", "shop", "--stage", "prod", "--to", "1")
        )
        # errors: one line, non-zero
        for args in (
            ("-n", "team", "delete", "api", "shop"),  # still has stages
            ("-n", "team", "rollback", "shop", "--stage", "nope"),
            ("get", "widgets"),
            ("apply", "-f", str(tmp_path / "missing.yaml")),
        ):
            proc = cli(m, *args)
            assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
            assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        ok(cli(m, "-n", "team", "delete", "stage", "prod", "--api", "shop"))
        ok(cli(m, "-n", "team", "delete", "api", "shop"))
        assert ok(cli(m, "-n", "team", "get", "apis")) == ""


def test_openapi_import_and_export_through_control(etcd: LocalEtcd, tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parent.parent / "control" / "fixtures" / "petstore-openapi.yaml"
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        refused = cli(m, "import", str(spec), "--api", "store", "--fail-on-warnings")
        assert refused.returncode == 1 and "3 warning(s)" in refused.stderr and "#/paths/" in refused.stderr
        assert ok(cli(m, "get", "apis")) == ""  # nothing applied
        out = cli(m, "import", str(spec), "--api", "store")
        assert out.returncode == 0 and "api/store created (29 routes, 3 warnings)" in out.stdout, out.stderr
        # the imported integrations call http://${stageVariables.backend}/...: the stage defines it
        stage = "apiVersion: meshgate.io/v1\nkind: Stage\nmetadata: {name: prod}\nspec: {api: store, variables: {backend: 'svc:80'}}\n"
        ok(cli(m, "apply", "-f", "-", stdin=stage))
        ok(cli(m, "deploy", "store", "--stage", "prod"))
        exported = tmp_path / "exported.yaml"
        wrote = ok(cli(m, "export", "store", "--stage", "prod", "-o", str(exported)))
        doc = yaml.safe_load(exported.read_text())
        assert wrote == f"wrote {exported} ({len(doc['paths'])} paths)\n"
        methods = {"get", "put", "post", "delete", "options", "head", "patch", "x-meshgate-any-method"}
        assert sum(len(methods & set(item)) for item in doc["paths"].values()) == 29  # the 29 routes
        assert doc["info"] == {"title": "store", "version": "1"} and doc["servers"] == [{"url": "/prod"}]
        again = yaml.safe_load(ok(cli(m, "import", str(exported), "--api", "store", "--show")))
        stored = yaml.safe_load(ok(cli(m, "get", "api", "store", "-o", "yaml")))
        assert again["spec"] == stored["spec"]
        assert "api/store unchanged" in ok(cli(m, "import", str(exported), "--api", "store"))
