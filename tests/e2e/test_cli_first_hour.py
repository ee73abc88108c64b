"""Issue 15 (a newcomer's first hour), the CLI's part, through the real `meshgate` CLI and a real
control process on etcd: kubectl habits (`-n`/`-o` before or after the subcommand, `-o json|yaml`
always a List but for `get KIND NAME`, one error style, a closed pipe is quiet), no silent creation
(`--create-stage`; a stage whose variables leave an integration URI unresolved is refused at apply
and at deploy), every error of a document set at once, AGE from creation, APPLY LATENCY from the
sidecar's connection, and the NACK log line naming what the sidecar keeps."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.resources import load_documents
from meshgate.v1 import control_pb2

from .harness import Mesh, mesh, meshgate, wait_until

ORDERS = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  routes:
    - {method: GET, path: /orders, integration: {type: mock, mock: {body: '[]'}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod, namespace: shop}
spec: {api: orders}
"""
# an Api whose integration URI takes its host from a stage variable, and a stage applied first
BACKEND = """
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: pets}
---
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  routes:
    - {method: GET, path: /pets, integration: {type: http, uri: "http://${stageVariables.backend}/pets"}}
    - {method: GET, path: /health, integration: {type: mock}}
"""
GRPC_CODES = ("invalid_argument:", "not_found:", "failed_precondition:", "aborted:", "internal:")


def cli(m: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return m.cli(*args, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The error lines of a refused command: exit 1, each line `error: ...`, no gRPC code names."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), proc.stderr
    assert not any(code in proc.stderr for code in GRPC_CODES) and "Traceback" not in proc.stderr
    return [line.removeprefix("error: ") for line in lines]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_namespace_and_output_go_before_or_after_the_subcommand(etcd: LocalEtcd, tmp_path: Path) -> None:
    orders = write(tmp_path, "orders.yaml", ORDERS.replace("namespace: shop", "namespace: ''"))
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        assert ok(cli(m, "apply", "-f", orders, "-n", "shop")) == "api/orders created\nstage/prod created\n"
        # examples/request-phase.yaml's own line, and the two other places -n can stand
        assert "deployment 1 of orders now serves stage prod" in ok(
            cli(m, "deploy", "orders", "--stage", "prod", "-n", "shop")
        )
        ok(cli(m, "-n", "shop", "deploy", "orders", "--stage", "prod"))
        ok(cli(m, "deploy", "--namespace", "shop", "orders", "--stage", "prod"))
        table = ok(cli(m, "get", "stages", "-n", "shop")).splitlines()
        assert table[1].split()[:4] == ["shop", "orders", "prod", "3"]

        def as_json(*args: str) -> Any:
            return json.loads(ok(cli(m, *args)))

        # a list is a List with 0, 1 or many items, before or after the subcommand, json or yaml
        for args in (
            ("get", "stages", "-n", "shop", "-o", "json"),
            ("-o", "json", "-n", "shop", "get", "stages"),
        ):
            one = as_json(*args)
            assert (one["apiVersion"], one["kind"], len(one["items"])) == ("v1", "List", 1), one
            assert one["items"][0]["kind"] == "Stage"
        assert as_json("get", "stages", "-n", "nowhere", "-o", "json") == {
            "apiVersion": "v1",
            "kind": "List",
            "items": [],
        }
        many = yaml.safe_load(ok(cli(m, "get", "deployments", "-n", "shop", "-o", "yaml")))
        assert many["kind"] == "List" and [d["id"] for d in many["items"]] == ["1", "2", "3"]
        assert as_json("get", "sidecars", "-o", "json") == {"apiVersion": "v1", "kind": "List", "items": []}
        # get KIND NAME: the one object
        stage = as_json("get", "stage", "prod", "-n", "shop", "-o", "json")
        assert stage["kind"] == "Stage" and stage["spec"]["deployment"] == "3"
        assert yaml.safe_load(ok(cli(m, "-o", "yaml", "get", "api", "orders", "-n", "shop")))["kind"] == "Api"


def test_errors_have_one_style_field_path_first(etcd: LocalEtcd, tmp_path: Path) -> None:
    bad_type = write(tmp_path, "bad.yaml", ORDERS.replace("type: mock, mock: {body: '[]'}", "type: lambda"))
    ghost = write(tmp_path, "ghost.yaml", ORDERS.split("---")[1].replace("api: orders", "api: ghost"))
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        # control's refusals: the message alone, no `not_found:` in front
        assert refused(cli(m, "-n", "shop", "deploy", "nope", "--stage", "prod")) == [
            "Api shop/nope does not exist"
        ]
        # found by the CLI: the field first, every integration type named, then where it is
        assert refused(cli(m, "apply", "-f", bad_type)) == [
            'spec.routes[0].integration.type: must be "http", "function", "websocket", "websocket_api", '
            f'"grpc" or "mock", got \'lambda\' ({bad_type} document 1, Api shop/orders)'
        ]
        # found by control (a reference to an Api that does not exist): the same shape
        assert refused(cli(m, "apply", "-f", ghost)) == [
            f"spec.api: Api shop/ghost does not exist ({ghost} document 1, Stage shop/prod)"
        ]
        assert refused(cli(m, "-n", "shop", "canary", "set", "orders", "--stage", "prod")) == [
            "--percent: required to set a canary"
        ]
        assert refused(cli(m, "-n", "shop", "rollback", "orders", "--stage", "prod")) == [
            "stage prod of Api shop/orders does not exist"
        ]


def test_a_reader_that_leaves_early_gets_no_broken_pipe_error(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(ORDERS)
        # `meshgate get stages | head -0`: the reader is gone before the first write
        proc = subprocess.Popen(
            meshgate("--control", f"127.0.0.1:{m.control_port}", "get", "stages"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=30)
        assert stderr == "" and proc.returncode == 141  # as a process that SIGPIPE ended (kubectl)


def test_deploying_to_a_stage_that_does_not_exist_needs_create_stage(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(ORDERS)
        (line,) = refused(cli(m, "-n", "shop", "deploy", "orders", "--stage", "nosuchstage"))
        assert (
            line.startswith("stage nosuchstage of Api shop/orders does not exist")
            and "--create-stage" in line
        )
        assert "nosuchstage" not in ok(cli(m, "-n", "shop", "get", "stages"))
        assert ok(cli(m, "-n", "shop", "get", "deployments")) == ""  # nothing made, not even a deployment
        out = ok(cli(m, "-n", "shop", "deploy", "orders", "--stage", "nosuchstage", "--create-stage"))
        assert "deployment 1 of orders now serves stage nosuchstage" in out


def test_a_stage_that_leaves_an_integration_uri_unresolved_is_refused(
    etcd: LocalEtcd, tmp_path: Path
) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        # the Stage before its Api, neither deployed: nothing is served yet, nothing is missing
        assert ok(m.apply(BACKEND)) == "stage/prod created\napi/pets created\n"
        # deploy: the new deployment would call http://${stageVariables.backend}/pets -> refused
        assert refused(cli(m, "deploy", "pets", "--stage", "prod")) == [
            "spec.variables.backend: undefined, and deployment 1 uses ${stageVariables.backend} in "
            "GET /pets (spec.routes[0].integration.uri) (Stage default/prod)"
        ]
        (line,) = refused(cli(m, "deploy", "pets", "--stage", "dev", "--create-stage"))
        assert line.startswith("spec.variables.backend: undefined") and "(Stage default/dev)" in line
        assert ok(cli(m, "get", "deployments")) == ""
        with_backend = BACKEND.replace(
            "spec: {api: pets}", "spec: {api: pets, variables: {backend: 'svc:80'}}"
        )
        m.apply(with_backend)
        assert "deployment 1 of pets now serves stage prod" in ok(cli(m, "deploy", "pets", "--stage", "prod"))
        # apply: dropping the variable a served deployment needs is refused, naming it and the route
        (line,) = refused(m.apply(BACKEND, check=False))
        assert line.startswith("spec.variables.backend: undefined, and deployment 1 uses")
        assert line.endswith("document 1, Stage default/prod)") and "GET /pets" in line
        # a canary's overrides count for the canary only: the new route's variable is the canary's
        two = BACKEND.replace(
            "    - {method: GET, path: /health",
            '    - {method: GET, path: /v2, integration: {type: http, uri: "http://${stageVariables.v2}/"}}\n'
            "    - {method: GET, path: /health",
        ).split("---")[1]
        m.apply(two)
        (line,) = refused(cli(m, "deploy", "pets", "--stage", "prod"))  # (a refused deploy uses no id)
        assert line.startswith("spec.variables.v2: undefined, and deployment 2 uses ${stageVariables.v2}")
        ok(cli(m, "canary", "set", "pets", "--stage", "prod", "--percent", "10", "--var", "v2=svc2:80"))
        assert "deployment 2 of pets now serves canary of stage prod" in ok(
            cli(m, "deploy", "pets", "--stage", "prod")
        )
        (line,) = refused(cli(m, "deploy", "pets", "--stage", "prod", "--skip-canary"))
        assert line.startswith("spec.variables.v2: undefined, and deployment 3 uses")
        ok(cli(m, "canary", "promote", "pets", "--stage", "prod"))  # v2 becomes the stage's own
        stage = json.loads(ok(cli(m, "get", "stage", "prod", "-o", "json")))
        assert stage["spec"]["deployment"] == "2" and stage["spec"]["variables"]["v2"] == "svc2:80"


BROKEN = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: Orders}
spec:
  authorizers: [{name: jwt, type: saml}]
  routes:
    - {method: GET, path: /a, integration: {type: lambda}}
    - {method: FETCH, path: /b, integration: {type: mock}}
    - {method: GET, path: /c, authorizer: cognito, integration: {type: mock, mock: {status: 700}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: orders, variabels: {a: b}, tracingSampleRatio: high}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: dev}
spec: {api: orders, canary: {percent: 120}, variables: {'bad-name': x}}
"""
EXPECTED = [
    ("metadata.name", 1),
    ("spec.authorizers[0].type", 1),
    ("spec.routes[0].integration.type", 1),
    ("spec.routes[1].method", 1),
    ("spec.routes[2].integration.mock.status", 1),
    ("spec.routes[2].authorizer", 1),
    ("spec.variabels", 2),
    ("spec.tracingSampleRatio", 2),
    ("spec.variables.bad-name", 3),
    ("spec.canary.percent", 3),
]


def test_every_error_of_a_document_set_at_once(etcd: LocalEtcd, tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", BROKEN)
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        lines = refused(cli(m, "apply", "-f", path))
        assert lines[-1] == "10 errors in 3 document(s); nothing was applied"
        found = [
            (re.match(r"^(\S+): ", line)[1], int(re.search(r" document (\d+), ", line)[1]))  # type: ignore[index]
            for line in lines[:-1]
        ]
        assert sorted(found) == sorted(EXPECTED), lines
        assert all(f"({path} document " in line for line in lines[:-1])
        assert ok(cli(m, "get", "apis")) == "" and ok(cli(m, "get", "stages")) == ""


def test_control_reports_every_error_as_the_cli_does(etcd: LocalEtcd, tmp_path: Path) -> None:
    """Server side: the Apply RPC (what a client other than the CLI gets) refuses the same batch with
    the same errors, field by field with each resource's index, and writes nothing."""
    from meshgate.control.errors import ERRORS_TRAILER, errors_from_trailer

    parseable = BROKEN.replace("variabels: {a: b}, tracingSampleRatio: high", "tracingSampleRatio: 2")
    path = write(tmp_path, "broken.yaml", parseable)
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        by_cli = [line.split(" (", 1)[0] for line in refused(cli(m, "apply", "-f", path))[:-1]]
        with pytest.raises(grpc.RpcError) as info:
            m.stub().Apply(control_pb2.ApplyRequest(resources=load_documents(parseable)), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        trailers = dict(info.value.trailing_metadata())
        by_control = errors_from_trailer(trailers[ERRORS_TRAILER])
        assert [f"{e.field}: {e.message}" for e in by_control] == by_cli
        assert {e.index for e in by_control} == {0, 1, 2}
        assert len(info.value.details().splitlines()) == len(by_cli)  # the status message: one a line
        # control's own checks (references between resources) come all at once too
        ghosts = ORDERS.split("---")[1] + "---" + ORDERS.split("---")[1].replace("name: prod", "name: dev")
        lines = refused(cli(m, "apply", "-f", write(tmp_path, "ghosts.yaml", ghosts)))
        assert [line.split(" (")[0] for line in lines] == [
            "spec.api: Api shop/orders does not exist",
            "spec.api: Api shop/orders does not exist",
            "2 errors in 2 document(s); nothing was applied",
        ]
        assert ok(cli(m, "get", "apis")) == ""


def test_age_counts_from_creation_not_from_the_last_update(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(ORDERS)

        def meta(kind: str, name: str) -> dict[str, Any]:
            doc = json.loads(ok(cli(m, "-n", "shop", "get", kind, name, "-o", "json")))
            return dict(doc["metadata"])

        api0, stage0 = meta("api", "orders"), meta("stage", "prod")
        assert api0["creationTimeUnixNano"] == api0["updateTimeUnixNano"]
        time.sleep(0.05)
        m.apply(
            ORDERS.replace("body: '[]'", "body: '[1]'").replace(
                "spec: {api: orders}", "spec: {api: orders, variables: {a: b}}"
            )
        )
        ok(cli(m, "-n", "shop", "deploy", "orders", "--stage", "prod"))
        api1, stage1 = meta("api", "orders"), meta("stage", "prod")
        assert int(api1["updateTimeUnixNano"]) > int(api0["updateTimeUnixNano"])
        assert int(stage1["updateTimeUnixNano"]) > int(stage0["updateTimeUnixNano"])
        assert api1["creationTimeUnixNano"] == api0["creationTimeUnixNano"]
        assert stage1["creationTimeUnixNano"] == stage0["creationTimeUnixNano"]
        assert (api1["generation"], stage1["generation"]) == ("2", "3")


def test_apply_latency_counts_from_the_sidecars_connection(etcd: LocalEtcd, tmp_path: Path) -> None:
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(ORDERS)
        ok(cli(m, "-n", "shop", "deploy", "orders", "--stage", "prod"))
        time.sleep(2.5)  # the change is 2.5 s old before the sidecar even starts
        m.start_sidecar("sc-late", labels="app=orders", namespace="shop")

        def acked() -> Any:
            out = json.loads(ok(cli(m, "get", "sidecar", "sc-late", "-o", "json")))
            return out if out.get("lastAckUnixNano") else None

        status = wait_until(acked, timeout=15, what="the ACK of sc-late")
        assert 0 <= status.get("lastApplyLatencyMs", 0) < 2000, status  # connection -> ACK, not 2.5 s+
        table = ok(cli(m, "get", "sidecars")).splitlines()
        assert table[0].split()[:2] == ["NODE", "NAMESPACE"] and table[1].startswith("sc-late")


def test_a_nack_log_line_says_what_the_sidecar_keeps(etcd: LocalEtcd, tmp_path: Path) -> None:
    encrypted = ORDERS.replace(
        "spec: {api: orders}", "spec: {api: orders, cache: {enabled: true, encrypted: true}}"
    )
    with mesh(etcd.endpoint, tmp_path) as m:
        m.start_control()
        m.apply(encrypted)
        ok(cli(m, "-n", "shop", "deploy", "orders", "--stage", "prod"))
        sc = m.start_sidecar("sc-nokey", labels="app=orders", namespace="shop", wait_ready=False)
        line = wait_until(
            lambda: next((ln for ln in sc.proc.output().splitlines() if "NACK config" in ln), None),
            timeout=15,
            what="the sidecar's NACK line",
        )
        assert line.endswith("(no config to keep: not ready yet)"), line
        assert "(keeping )" not in sc.proc.output()
