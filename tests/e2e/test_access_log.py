"""Access logs the user's way (README "Observability"): Stages with `accessLogFormat: json` and with a
`$context` format, applied with `meshgate apply -f` and deployed; each request through the sidecar
process is one line on its stdout, a failed request's line carries the error fields, and a stage
without a format logs nothing."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from meshgate.control.etcd_local import LocalEtcd, free_port

from .harness import NO_DRAIN, Sidecar, mesh, wait_until

TEXT_FORMAT = (
    "$context.requestId $context.httpMethod $context.resourcePath $context.status $context.responseLatency"
)

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {{name: pets}}
spec:
  selector: {{matchLabels: {{app: pets}}}}
  routes:
    - {{method: GET, path: "/pets/{{id}}", integration: {{type: http, uri: "http://127.0.0.1:{v1}/pets/{{id}}"}}}}
    - {{method: GET, path: /down, integration: {{type: http, uri: "http://127.0.0.1:{dead}/down"}}}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: prod}}
spec: {{api: pets, accessLogFormat: json}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: text}}
spec: {{api: pets, accessLogFormat: "{fmt}"}}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {{name: quiet}}
spec: {{api: pets}}
"""


@pytest.fixture(scope="module")
def sidecar(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with mesh(etcd.endpoint, tmp_path_factory.mktemp("e2e-access-log")) as m:
        m.start_control()
        v1 = m.start_backend("v1")
        m.apply(CONFIG.format(v1=v1, dead=free_port(), fmt=TEXT_FORMAT))
        for stage in ("prod", "text", "quiet"):
            m.cli("deploy", "pets", "--stage", stage)
        sc = m.start_sidecar(extra=NO_DRAIN)
        wait_until(lambda: sc.get("/quiet/pets/1")[0] == 200, what="the stages served")
        wait_until(lambda: sc.get("/text/pets/1")[0] == 200, what="the stages served")
        yield sc


def get(sc: Sidecar, path: str) -> tuple[int, str]:
    """(status, x-meshgate-request-id) of a GET through the sidecar."""
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-meshgate-request-id") or ""
    finally:
        conn.close()


def lines_with(sc: Sidecar, request_id: str) -> list[str]:
    """Access-log lines of one request on the sidecar's stdout (its log file also holds stderr)."""
    return [
        x
        for x in sc.proc.output().splitlines()
        if (x.startswith("{") and request_id in x) or x.startswith(request_id + " ")
    ]


def json_line(sc: Sidecar, request_id: str) -> dict[str, Any]:
    (line,) = wait_until(lambda: lines_with(sc, request_id), what=f"the access-log line of {request_id}")
    return dict(json.loads(line))


def test_a_json_access_log_line_per_request(sidecar: Sidecar) -> None:
    status, rid = get(sidecar, "/prod/pets/2")
    assert status == 200
    entry = json_line(sidecar, rid)
    assert entry["requestId"] == rid and entry["httpMethod"] == "GET" and entry["status"] == 200
    assert (
        entry["stage"] == "prod" and entry["resourcePath"] == "/pets/{id}" and entry["path"] == "/prod/pets/2"
    )
    assert entry["identity.sourceIp"] == "127.0.0.1" and entry["responseLatency"] >= 0
    assert entry["deploymentId"] >= 1


def test_a_failed_request_logs_the_error_fields(sidecar: Sidecar) -> None:
    status, body = sidecar.get("/prod/down")
    assert status == 503
    entry = json_line(sidecar, body["requestId"])
    assert entry["status"] == 503 and entry["error.responseType"] == "INTEGRATION_FAILURE"
    assert entry["error.message"] == "Service unavailable"
    # the reason is logged even though this caller (outside the cluster networks) was not told it
    assert "reason" not in body and str(entry["error.reason"]).startswith(
        "upstream connect refused (127.0.0.1:"
    )


def test_a_context_format(sidecar: Sidecar) -> None:
    status, rid = get(sidecar, "/text/pets/3")
    assert status == 200
    (line,) = wait_until(lambda: lines_with(sidecar, rid), what="the formatted line")
    fields = line.split(" ")
    assert fields[:4] == [rid, "GET", "/pets/{id}", "200"] and float(fields[4]) >= 0, line


def test_a_stage_without_a_format_logs_nothing(sidecar: Sidecar) -> None:
    _, quiet = get(sidecar, "/quiet/pets/1")
    _, marker = get(sidecar, "/prod/pets/1")  # logged after the quiet one: its line marks "written by now"
    json_line(sidecar, marker)
    assert lines_with(sidecar, quiet) == []
