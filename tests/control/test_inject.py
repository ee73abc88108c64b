"""`meshgate inject`: native sidecar injection (and the legacy fallback), idempotent, opt-out honoured;
the init container's iptables rules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from meshgate.control.inject import InjectConfig, inject_object
from meshgate.control.iptables import rules
from meshgate.sidecar.identity import token_address_of
from meshgate.sidecar.main import build_parser

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: pets, namespace: shop}
spec:
  selector: {matchLabels: {app: pets}}
  template:
    metadata: {labels: {app: pets, version: v1}}
    spec:
      containers:
        - name: app
          image: pets:1
          ports: [{containerPort: 8080}, {containerPort: 9090, protocol: UDP}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    metadata: {annotations: {meshgate.io/inject: "false"}}
    spec: {restartPolicy: Never, containers: [{name: m, image: m:1}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a: b}
"""


def test_native_sidecar_injection() -> None:
    dep = yaml.safe_load_all(DEPLOYMENT).__next__()
    out, what = inject_object(dep, InjectConfig(control="ctl:7070"))
    assert what == "injected"
    pod = out["spec"]["template"]
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["meshgate-init", "meshgate-sidecar"]
    sidecar = inits[1]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: starts first, does not block Jobs
    assert sidecar["startupProbe"]["httpGet"] == {
        "path": "/ready",
        "port": 15021,
    }  # app waits for the snapshot (asked on the health port)
    assert build_parser().parse_args(sidecar["args"][1:]).control == "ctl:7070"
    assert any(
        e["name"] == "POD_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        for e in sidecar["env"]
    )
    assert "--label" in sidecar["args"] and "app=pets" in sidecar["args"] and "version=v1" in sidecar["args"]
    assert sidecar["securityContext"]["runAsUser"] == 1337
    assert inits[0]["args"] == [
        "iptables",
        "--proxy-port",
        "15001",
        "--proxy-uid",
        "1337",
        "--app-port",
        "8080",
    ]
    assert "NET_ADMIN" in inits[0]["securityContext"]["capabilities"]["add"]
    assert {c["imagePullPolicy"] for c in inits} == {"IfNotPresent"}  # a node-loaded image is used as is
    assert not any(e["name"].startswith("OTEL_") for e in sidecar["env"])  # no collector configured
    assert {"name": "meshgate-state", "emptyDir": {"sizeLimit": "64Mi"}} in pod["spec"]["volumes"]
    assert pod["metadata"]["annotations"]["meshgate.io/injected"] == "true"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    again, what = inject_object(out, InjectConfig())
    assert what == "already injected" and again == out  # idempotent


def test_opt_out_namespace_and_legacy_mode() -> None:
    _, job, cm = list(yaml.safe_load_all(DEPLOYMENT))
    assert inject_object(job, InjectConfig())[1] == "opted out"
    assert inject_object(cm, InjectConfig())[1] == "not a pod"
    dep = next(yaml.safe_load_all(DEPLOYMENT))
    assert inject_object(dep, InjectConfig(), namespace_enabled=False)[1] == "opted out"
    dep["spec"]["template"]["metadata"]["annotations"] = {"meshgate.io/inject": "true"}
    assert inject_object(dep, InjectConfig(), namespace_enabled=False)[1] == "injected"
    out, _ = inject_object(next(yaml.safe_load_all(DEPLOYMENT)), InjectConfig(legacy=True))
    spec = out["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["meshgate-sidecar", "app"]
    assert spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][:2] == [
        "meshgate",
        "wait-ready",
    ]
    assert [c["name"] for c in spec["initContainers"]] == ["meshgate-init"]


def test_cli_inject_is_a_filter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "app.yaml"
    f.write_text(DEPLOYMENT)
    proc = subprocess.run(
        [sys.executable, "-m", "meshgate.control.cli", "inject", "-f", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert (
        len(docs) == 3
        and docs[0]["spec"]["template"]["spec"]["initContainers"][1]["name"] == "meshgate-sidecar"
    )
    assert "Deployment/pets: injected" in proc.stderr and "Job/migrate: opted out" in proc.stderr


def test_iptables_rules_redirect_app_ports_only() -> None:
    cmds = [" ".join(c) for c in rules([8080, 8080, 15001, 9000], 15001, 1337)]
    assert "iptables -t nat -A PREROUTING -p tcp -j MESHGATE_INBOUND" in cmds
    assert "iptables -t nat -A MESHGATE_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15001" in cmds
    assert "iptables -t nat -A MESHGATE_INBOUND -p tcp --dport 9000 -j REDIRECT --to-ports 15001" in cmds
    assert not any("--dport 15001" in c for c in cmds)  # never redirect the proxy to itself
    assert "iptables -t nat -A MESHGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN" in cmds
    dry = subprocess.run(
        [sys.executable, "-m", "meshgate.control.cli", "iptables", "--app-port", "8080", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry.returncode == 0 and "--dport 8080 -j REDIRECT --to-ports 15001" in dry.stdout


def test_otlp_endpoint_names_the_pod_in_spans() -> None:
    dep = yaml.safe_load_all(DEPLOYMENT).__next__()
    out, _ = inject_object(dep, InjectConfig(otlp_endpoint="jaeger.meshgate-system.svc:4317"))
    sidecar = out["spec"]["template"]["spec"]["initContainers"][1]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "jaeger.meshgate-system.svc:4317"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
    names = [e["name"] for e in sidecar["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")  # $(VAR) needs it defined first


def test_the_pod_stops_in_an_order_that_lets_the_sidecar_drain() -> None:
    dep = next(yaml.safe_load_all(DEPLOYMENT))
    out, _ = inject_object(dep, InjectConfig(drain_seconds=8))
    spec = out["spec"]["template"]["spec"]
    sidecar = spec["initContainers"][1]
    args = build_parser().parse_args(sidecar["args"][1:])  # what the sidecar itself will read
    assert args.drain_seconds == 8.0
    # native: SIGTERM reaches the sidecar once the app has exited, in the same grace period: the
    # app keeps the default 30 s and the drain (plus a margin) comes on top
    assert spec["terminationGracePeriodSeconds"] >= 30 + 8 + 1
    assert "preStop" not in sidecar.get("lifecycle", {})  # the stop order already holds
    assert build_parser().parse_args([]).drain_seconds == 5.0  # the default the injection relies on
    default = inject_object(next(yaml.safe_load_all(DEPLOYMENT)), InjectConfig())[0]["spec"]["template"]
    assert build_parser().parse_args(default["spec"]["initContainers"][1]["args"][1:]).drain_seconds == 5.0

    dep = next(yaml.safe_load_all(DEPLOYMENT))
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60
    spec = inject_object(dep, InjectConfig(drain_seconds=8))[0]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 60 + 8  # the app's own budget is kept

    # legacy: every container gets SIGTERM at once; a preStop sleep keeps the sidecar up for the app's
    # last requests, then it drains, and the grace period covers both
    dep = next(yaml.safe_load_all(DEPLOYMENT))
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10
    spec = inject_object(dep, InjectConfig(legacy=True, drain_seconds=8))[0]["spec"]["template"]["spec"]
    sidecar = spec["containers"][0]
    pre_stop = sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) >= 8
    assert build_parser().parse_args(sidecar["args"][1:]).drain_seconds == 8.0
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + 8 + 1
    assert "lifecycle" not in spec["containers"][1]  # the app's own container is left alone

    with pytest.raises(ValueError):
        InjectConfig(drain_seconds=-1)


def test_admin_on_loopback_probes_on_the_health_port_scrapes_on_the_metrics_port() -> None:
    """Istio's split: the full admin port (/config_dump, /stats) is reachable only inside the pod; the
    kubelet probes a health port (15021) and Prometheus scrapes a metrics port (15090)."""
    for cfg in (InjectConfig(), InjectConfig(legacy=True)):
        pod = inject_object(next(yaml.safe_load_all(DEPLOYMENT)), cfg)[0]["spec"]["template"]
        spec = pod["spec"]
        sidecar = next(
            c for c in [*spec["initContainers"], *spec["containers"]] if c["name"] == "meshgate-sidecar"
        )
        args = build_parser().parse_args(sidecar["args"][1:])  # what the sidecar itself will read
        assert args.admin == ("127.0.0.1", 15000)
        assert args.health_listen == ("0.0.0.0", 15021) and args.metrics_listen == ("0.0.0.0", 15090)
        probes = {
            k: sidecar[k]["httpGet"]
            for k in ("startupProbe", "readinessProbe", "livenessProbe")
            if k in sidecar
        }
        assert set(probes) == ({"readinessProbe", "livenessProbe"} if cfg.legacy else set(SIDECAR_PROBES))
        assert {(k, p["path"], p["port"]) for k, p in probes.items()} <= {
            (k, path, 15021) for k, path in SIDECAR_PROBES.items()
        }
        ports = {p["containerPort"]: p["name"] for p in sidecar["ports"]}
        assert ports == {15001: "mg-http", 15002: "mg-grpc", 15021: "mg-health", 15090: "mg-metrics"}
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("15090", "/metrics")
        if cfg.legacy:  # the start hold asks inside the pod, where the admin port is
            hold = sidecar["lifecycle"]["postStart"]["exec"]["command"]
            assert hold[hold.index("--admin") + 1] == "127.0.0.1:15000"
    # a sidecar started by hand keeps its admin port on loopback, and opens no other port unasked
    defaults = build_parser().parse_args([])
    assert defaults.admin == ("127.0.0.1", 15000)
    assert defaults.health_listen is None and defaults.metrics_listen is None


SIDECAR_PROBES = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/live"}


def _sidecar_of(out: dict) -> tuple[dict, dict]:  # type: ignore[type-arg]
    spec = out["spec"]["template"]["spec"]
    sidecar = next(
        c for c in [*spec["initContainers"], *spec["containers"]] if c["name"] == "meshgate-sidecar"
    )
    return spec, sidecar


def test_the_sidecar_proves_its_pod_with_a_projected_token_and_trusts_the_published_ca() -> None:
    """Istio's istio-token + istio-ca-root-cert: a ServiceAccount token for audience meshgate (what
    control's TokenReview asks for) and control's CA from the ConfigMap control publishes, in one
    read-only projected volume of the sidecar alone; the args point at both, at control's two ports,
    and name the node by its pod (the name control reads from the token)."""
    from meshgate.control.inject import CA_CONFIGMAP, TOKEN_AUDIENCE

    for cfg in (InjectConfig(control="ctl.meshgate-system.svc:7070"), InjectConfig(legacy=True)):
        spec, sidecar = _sidecar_of(inject_object(next(yaml.safe_load_all(DEPLOYMENT)), cfg)[0])
        args = build_parser().parse_args(sidecar["args"][1:])  # what the sidecar itself will read
        host = cfg.control.rpartition(":")[0]
        assert args.control == cfg.control and args.control_token_address == f"{host}:7071"
        assert token_address_of(cfg.control) == args.control_token_address
        mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == "/var/run/secrets/meshgate")
        assert mount["readOnly"] is True
        assert (str(args.control_ca), str(args.token_file)) == (
            "/var/run/secrets/meshgate/ca.crt",
            "/var/run/secrets/meshgate/token",
        )
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        sources = volume["projected"]["sources"]
        token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
        assert token == {"audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
        ca = next(s["configMap"] for s in sources if "configMap" in s)
        assert ca == {"name": CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        assert "optional" not in ca  # no CA yet: the pod waits for it rather than starting blind
        # only the sidecar sees the token: the app and the init container mount nothing of it
        others = [c for c in [*spec["initContainers"], *spec["containers"]] if c is not sidecar]
        assert not [m for c in others for m in c.get("volumeMounts", []) if m["name"] == mount["name"]]
        # the node id is the pod's name ($(POD_NAME) from the downward API, defined before use)
        assert args.node_id == "$(POD_NAME).$(POD_NAMESPACE)"
        env = [e["name"] for e in sidecar["env"]]
        assert "POD_NAME" in env and "MESHGATE_NODE_ID" not in env
    # the audience the injector asks the kubelet for is the one control checks
    from meshgate.control.identity import TOKEN_AUDIENCE as checked

    assert TOKEN_AUDIENCE == checked


def test_the_token_address_can_be_set() -> None:
    cfg = InjectConfig(control="ctl:7070", control_token="tokens.example:9443")
    _, sidecar = _sidecar_of(inject_object(next(yaml.safe_load_all(DEPLOYMENT)), cfg)[0])
    assert build_parser().parse_args(sidecar["args"][1:]).control_token_address == "tokens.example:9443"


def test_each_port_is_declared_by_its_name_app_protocol_or_annotation() -> None:
    """HTTP ports (never passed through) and opaque ports (passed through at once) reach the sidecar's
    flags, read as Istio reads port names and appProtocol; the annotations win; the rest is detected."""
    dep = yaml.safe_load(
        """
apiVersion: apps/v1
kind: Deployment
metadata: {name: pets}
spec:
  template:
    metadata:
      annotations: {meshgate.io/opaque-ports: "6379,8443", meshgate.io/http-ports: "7000"}
    spec:
      containers:
        - name: app
          image: pets:1
          ports:
            - {name: http-api, containerPort: 8080}
            - {name: grpc, containerPort: 9090}
            - {containerPort: 8081, appProtocol: kubernetes.io/h2c}
            - {name: mysql, containerPort: 3306}
            - {name: cache, containerPort: 6379}
            - {name: https, containerPort: 8443}
            - {name: tcp-legacy, containerPort: 7000}
            - {containerPort: 5000}
"""
    )
    out, _ = inject_object(dep, InjectConfig(control="ctl:7070"))
    sidecar = out["spec"]["template"]["spec"]["initContainers"][1]
    args = build_parser().parse_args(sidecar["args"][1:])
    assert args.http_ports == {7000, 8080, 8081, 9090}
    assert args.opaque_ports == {3306, 6379, 8443}  # 5000: undeclared, detected
    init = out["spec"]["template"]["spec"]["initContainers"][0]
    assert "5000" in init["args"] and "3306" in init["args"]  # every port is still redirected
