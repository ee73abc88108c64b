"""deploy/monitoring: the Grafana dashboard asks only for what meshgate emits, and the scrape objects
find it. Every metric name and label in every query is checked against a real sidecar's /metrics and
a real control's --metrics-listen after traffic of every kind (proxy, mock, cache hit and miss, 429,
5xx, a WebSocket, a WebSocket API message, a deploy pushed and ACKed, a refused admin call); the
overlay renders offline with `kubectl kustomize`, its PodMonitor names the port injection gives the
sidecar, and its ServiceMonitor reaches control's metrics port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from meshgate.control.etcd_local import LocalEtcd, free_port
from meshgate.control.inject import InjectConfig, sidecar_container
from meshgate.control.server import build_parser
from meshgate.sidecar.credentials import default_state_dir
from meshgate.sidecar.main import build_parser as sidecar_parser
from websockets.sync.client import connect

from .harness import NO_DRAIN, http_request, mesh, wait_until

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "meshgate-dashboard.json"
# Labels Prometheus puts on every series of a PodMonitor/ServiceMonitor target.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint", "service"}
# What the dashboard must show (the list), as the metric families it reads.
REQUIRED = {
    "meshgate_requests_total",
    "meshgate_4xx_errors_total",
    "meshgate_5xx_errors_total",
    "meshgate_latency_seconds",
    "meshgate_integration_latency_seconds",
    "meshgate_cache_hits_total",
    "meshgate_cache_misses_total",
    "meshgate_throttled_requests_total",
    "meshgate_websocket_connections",
    "meshgate_config_info",
    "meshgate_config_acks_total",
    "meshgate_config_nacks_total",
    "meshgate_config_apply_latency_seconds",
    "meshgate_control_config_apply_latency_seconds",
}
# Families this test's traffic leaves without a sample (no authorizer is called), with their labels.
UNSAMPLED = {"meshgate_authorizer_latency_seconds": {"api", "stage", "route"}}

CONFIG = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - {method: GET, path: /health, integration: {type: mock, mock: {body: '"ok"'}}}
    - {method: GET, path: "/pets/{id}", integration: {type: http, uri: "http://127.0.0.1:APP/pets/{id}"}}
    - method: GET
      path: /limited
      throttling: {rateLimit: 0.001, burstLimit: 1}   # one request, then 429s
      integration: {type: mock, mock: {body: '"x"'}}
    - {method: GET, path: /down, integration: {type: http, uri: "http://127.0.0.1:DEAD/x"}}
    - {method: GET, path: /echo, integration: {type: websocket, uri: "ws://127.0.0.1:APP/echo"}}
    - method: GET
      path: /chat
      integration:
        type: websocket_api
        routeSelectionExpression: $request.body.action
        websocketRoutes:
          $default: {type: http, uri: "http://127.0.0.1:APP/chat/default"}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: pets, cache: {enabled: true, ttlSeconds: 300}}
"""

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? \S+$')


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Prometheus text as {family: (type, label names of its samples)}."""
    out: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out[name] = (kind, set())
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            name = m.group(1)
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in out else name
            labels = {
                pair.split("=", 1)[0] for pair in re.findall(r'(\w+="(?:[^"\\]|\\.)*")', m.group(2) or "")
            }
            out[base][1].update(labels)
    return out


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["query"]["query"])
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def check_query(expr: str, emitted: dict[str, tuple[str, set[str]]]) -> None:
    names = set(re.findall(r"\bmeshgate_[a-z0-9_]+\b", expr))
    assert names, f"no meshgate metric in {expr!r}"
    labels: set[str] = set(TARGET_LABELS)
    for name in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in emitted:
            kind, have = emitted[name]
        elif base in emitted and emitted[base][0] == "histogram":
            kind, have = emitted[base]
        else:
            raise AssertionError(f"{name} (in {expr!r}) is emitted by neither the sidecar nor control")
        have = have or UNSAMPLED.get(base, set())
        assert have or kind != "histogram" or base in UNSAMPLED, f"{name}: no sample to read its labels from"
        labels |= have | ({"le"} if kind == "histogram" else set())
    used = set(re.findall(r"\b(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used |= {x.strip() for x in group.split(",") if x.strip()}
    used |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
    assert used <= labels, f"{expr!r}: labels {sorted(used - labels)} are on none of {sorted(names)}"
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_every_dashboard_query_reads_what_sidecar_and_control_emit(etcd: LocalEtcd, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    with mesh(etcd.endpoint, tmp_path) as m:
        metrics_port = free_port()
        m.start_control(extra=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
        app = m.start_backend("v1")
        m.apply(CONFIG.replace("APP", str(app)).replace("DEAD", str(free_port())))
        m.cli("deploy", "pets", "--stage", "prod")
        sc = m.start_sidecar(extra=NO_DRAIN)
        m.cli("deploy", "pets", "--stage", "prod", "--description", "pushed while connected")
        pushed = re.compile(r"^meshgate_config_apply_latency_seconds_count [1-9]", re.M)
        wait_until(lambda: pushed.search(scrape(sc.admin_port)), what="the deploy pushed, applied, timed")
        # traffic of every kind the dashboard shows
        assert http_request(sc.port, "GET", "/prod/health")[0] == 200
        assert [http_request(sc.port, "GET", "/prod/pets/1")[0] for _ in range(2)] == [200, 200]  # miss, hit
        assert [http_request(sc.port, "GET", "/prod/limited")[0] for _ in range(3)] == [200, 429, 429]
        assert http_request(sc.port, "GET", "/prod/nothing-here")[0] == 404
        assert http_request(sc.port, "GET", "/prod/down")[0] >= 500
        with connect(f"ws://127.0.0.1:{sc.port}/prod/chat", open_timeout=10) as chat:
            chat.send(json.dumps({"action": "hello"}))
            chat.recv(timeout=10)
        with connect(f"ws://127.0.0.1:{sc.port}/prod/echo", open_timeout=10) as echo:
            echo.send("hi")
            assert echo.recv(timeout=10) == "v1 echo: hi"
            sidecar_text = scrape(sc.admin_port)  # while the WebSocket is open
        ca = default_state_dir() / "ca.crt"
        refused = m.cli(
            "--control", f"127.0.0.1:{m.token_port}", "--ca-file", str(ca), "--token", "guessed", "get", "stages",
            check=False,
        )  # fmt: skip
        assert refused.returncode == 1
        control_text = scrape(metrics_port)
    emitted = {**families(sidecar_text), **families(control_text)}
    assert 'meshgate_websocket_connections{api="default/pets",stage="prod",route="/echo"} 1' in sidecar_text
    exprs = queries(dashboard)
    for expr in exprs:
        check_query(expr, emitted)
    used = {
        re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"\bmeshgate_[a-z0-9_]+", e)
    }
    assert REQUIRED <= used, f"the dashboard does not show {sorted(REQUIRED - used)}"


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert {"namespace", "api", "stage", "route"} <= set(variables)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (Debian's kubernetes-client) is not installed"
)
def test_monitoring_overlay_renders_and_its_monitors_find_the_metrics_ports() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    assert {"PodMonitor", "ServiceMonitor", "Deployment", "CustomResourceDefinition"} <= set(by_kind)

    # the dashboard ConfigMap the Grafana sidecar loads is the committed JSON
    (cm,) = [o for o in by_kind["ConfigMap"] if o["metadata"]["name"] == "meshgate-dashboards"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["meshgate-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    kubernetes_validate.validate(cm, "1.32", strict=True)

    # the PodMonitor scrapes the port injection names, which is the sidecar's --metrics-listen
    (pm,) = by_kind["PodMonitor"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    container = sidecar_container(InjectConfig(), {"app": "pets"})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = sidecar_parser().parse_args(container["args"][1:])
    assert endpoint["path"] == "/metrics" and args.metrics_listen[1] == ports[endpoint["port"]]

    # the ServiceMonitor selects a Service whose metrics port reaches control's --metrics-listen
    (sm,) = by_kind["ServiceMonitor"]
    selected = [
        s
        for s in by_kind["Service"]
        if sm["spec"]["selector"]["matchLabels"].items() <= (s["metadata"].get("labels") or {}).items()
        and s["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    ]
    assert len(selected) == 1, selected
    service = selected[0]
    kubernetes_validate.validate(service, "1.32", strict=True)
    (sm_endpoint,) = sm["spec"]["endpoints"]
    (svc_port,) = [p for p in service["spec"]["ports"] if p["name"] == sm_endpoint["port"]]
    control = next(o for o in by_kind["Deployment"] if o["metadata"]["name"] == "meshgate-control")
    assert service["spec"]["selector"].items() <= control["spec"]["template"]["metadata"]["labels"].items()
    (ctl,) = control["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in ctl["ports"]}
    listen = build_parser().parse_args(ctl["args"][1:]).metrics_listen
    assert named[svc_port["targetPort"]] == int(listen.rsplit(":", 1)[1])
