"""Sidecar injection as a pure transformation of Kubernetes objects (`meshgate inject -f`, and the
webhook to come): the sidecar as a native sidecar (an init container with restartPolicy Always,
started and ready before the app, not blocking Jobs), or a plain first container held until ready.

Ports, as Istio lays them out: the full admin port (/config_dump, /stats) binds 127.0.0.1, reachable
only from inside the pod; the kubelet probes a health port that serves only /ready and /live, and
Prometheus scrapes a read-only metrics port that serves only /metrics.

Identity, as Istio's istio-token and istio-ca-root-cert: the sidecar alone mounts a projected volume
with a ServiceAccount token for audience `meshgate` (control checks it with a TokenReview and issues
the first certificate for the pod it names) and control's CA from the ConfigMap control publishes in
every namespace (control/ca_publisher.py); its node id is the pod's name, as control reads it from
the token.

Stop order: a native sidecar gets SIGTERM only once the app containers have exited, then drains for
`--drain-seconds`; in legacy mode every container gets SIGTERM at once, so a preStop sleep keeps the
sidecar serving the app's last requests first. Either way terminationGracePeriodSeconds leaves room.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

INJECT_ANNOTATION = "meshgate.io/inject"
STATUS_ANNOTATION = "meshgate.io/injected"
SIDECAR_NAME = "meshgate-sidecar"
INIT_NAME = "meshgate-init"
STATE_VOLUME = "meshgate-state"
PROXY_UID = 1337
PROXY_PORT = 15001
ADMIN_PORT = 15000  # on 127.0.0.1: inside the pod only
GRPC_PORT = 15002
HEALTH_PORT = 15021  # /ready and /live only: the kubelet's probes (Istio's 15021)
METRICS_PORT = 15090  # /metrics only: the Prometheus scrape (Istio's 15090)
IDENTITY_VOLUME = "meshgate-identity"
IDENTITY_DIR = "/var/run/secrets/meshgate"
TOKEN_AUDIENCE = "meshgate"  # what control's TokenReview asks for (control/identity.py)
TOKEN_FILE = "token"
TOKEN_EXPIRATION_S = 3600  # the kubelet rotates it at 80 %; the sidecar re-reads it for a new certificate
CA_CONFIGMAP = "meshgate-ca-root"  # control writes it into every namespace (control/ca_publisher.py)
CA_KEY = "ca.crt"
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DEFAULT_GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when a pod spec sets none
STOP_MARGIN_S = 5  # on top of the sidecar's drain: the last export, closing, scheduling slack


@dataclass(frozen=True)
class InjectConfig:
    image: str = "ghcr.io/meshgate/meshgate:latest"
    control: str = "meshgate-control.meshgate-system.svc:7070"  # mTLS: streams and renewals
    control_token: str = ""  # TLS for the first certificate; default: control's host, its port + 1
    otlp_endpoint: str = ""
    legacy: bool = False  # plain container + start hold, for clusters without native sidecars (< 1.29)
    cpu: str = "100m"
    memory: str = "128Mi"
    # IfNotPresent: a node that has the image (a kind/minikube load, a pinned tag) does not pull it again
    pull_policy: str = "IfNotPresent"
    drain_seconds: float = 5.0  # the sidecar's drain window after SIGTERM (--drain-seconds)

    def __post_init__(self) -> None:
        if not 0 <= self.drain_seconds <= 600:
            raise ValueError(f"drain_seconds must be within 0..600, got {self.drain_seconds}")

    @property
    def token_address(self) -> str:
        """Control's token port (what the sidecar derives itself when told nothing)."""
        if self.control_token:
            return self.control_token
        host, _, port = self.control.rpartition(":")
        return f"{host}:{int(port) + 1}" if port.isdigit() else self.control

    @property
    def pre_stop_s(self) -> int:
        """Legacy mode: how long the sidecar keeps serving after the pod is told to stop, before its SIGTERM."""
        return math.ceil(self.drain_seconds) if self.legacy else 0

    @property
    def grace_s(self) -> int:
        """The sidecar's own stop: its preStop (legacy), its drain window and a margin."""
        return self.pre_stop_s + math.ceil(self.drain_seconds) + STOP_MARGIN_S


def _pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(pod metadata, pod spec) of a Pod, a workload's template or a CronJob's job template."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.setdefault("metadata", {}), obj.setdefault("spec", {})
    if kind in POD_TEMPLATE_KINDS:
        tpl = obj.setdefault("spec", {}).setdefault("template", {})
        return tpl.setdefault("metadata", {}), tpl.setdefault("spec", {})
    if kind == "CronJob":
        tpl = (
            obj.setdefault("spec", {})
            .setdefault("jobTemplate", {})
            .setdefault("spec", {})
            .setdefault("template", {})
        )
        return tpl.setdefault("metadata", {}), tpl.setdefault("spec", {})
    return None


def _app_ports(spec: dict[str, Any]) -> list[int]:
    ports = []
    for c in spec.get("containers", []):
        for p in c.get("ports", []) or []:
            if p.get("protocol", "TCP") == "TCP" and isinstance(p.get("containerPort"), int):
                ports.append(p["containerPort"])
    return sorted(set(ports))


HTTP_PORTS_ANNOTATION = "meshgate.io/http-ports"
OPAQUE_PORTS_ANNOTATION = "meshgate.io/opaque-ports"
_HTTP_NAMES = ("http", "grpc", "h2c")  # Istio's port naming: http, http2, grpc, grpc-web, h2c
_HTTP_APP_PROTOCOLS = {"http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c", "kubernetes.io/ws"}
_OPAQUE_NAMES = ("tcp", "tls", "https", "mysql", "mongo", "redis", "amqp", "kafka", "postgres", "smtp")


def port_protocols(spec: dict[str, Any], annotations: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(HTTP ports, opaque ports) of a pod: by the ports' names or appProtocol, as Istio reads them,
    and the meshgate.io/http-ports and meshgate.io/opaque-ports annotations (which win). The rest
    are detected by the sidecar."""
    http: set[int] = set()
    opaque: set[int] = set()
    for c in spec.get("containers", []):
        for p in c.get("ports", []) or []:
            port = p.get("containerPort")
            if not isinstance(port, int):
                continue
            name = str(p.get("name", "")).lower()
            proto = str(p.get("appProtocol", "")).lower()
            if proto in _HTTP_APP_PROTOCOLS or (not proto and name.startswith(_HTTP_NAMES)):
                http.add(port)
            elif proto or name.startswith(_OPAQUE_NAMES):
                opaque.add(port)
    for key, into, other in ((HTTP_PORTS_ANNOTATION, http, opaque), (OPAQUE_PORTS_ANNOTATION, opaque, http)):
        for item in str(annotations.get(key, "")).split(","):
            if item.strip().isdigit():
                into.add(int(item))
                other.discard(int(item))
    return sorted(http), sorted(opaque)


def sidecar_args(cfg: InjectConfig, labels: dict[str, str]) -> list[str]:
    """`meshgate sidecar ...`: its ports, how it reaches and proves itself to control, its labels."""
    args = [
        "sidecar",
        "--listen",
        f"0.0.0.0:{PROXY_PORT}",
        "--admin",
        f"127.0.0.1:{ADMIN_PORT}",
        "--health-listen",
        f"0.0.0.0:{HEALTH_PORT}",
        "--metrics-listen",
        f"0.0.0.0:{METRICS_PORT}",
        "--grpc-listen",
        f"0.0.0.0:{GRPC_PORT}",
        "--state-dir",
        "/var/lib/meshgate",
        "--advertise",
        f"$(POD_IP):{PROXY_PORT}",
        "--drain-seconds",
        f"{cfg.drain_seconds:g}",
        "--control",
        cfg.control,
        "--control-token-address",
        cfg.token_address,
        "--control-ca",
        f"{IDENTITY_DIR}/{CA_KEY}",
        "--token-file",
        f"{IDENTITY_DIR}/{TOKEN_FILE}",
        "--node-id",  # control names the node by the pod the token is bound to, and its namespace
        "$(POD_NAME).$(POD_NAMESPACE)",
    ]
    for k, v in sorted(labels.items()):
        args += ["--label", f"{k}={v}"]
    return args


def sidecar_container(
    cfg: InjectConfig, labels: dict[str, str], protocols: tuple[list[int], list[int]] = ([], [])
) -> dict[str, Any]:
    args = sidecar_args(cfg, labels)
    for flag, ports in zip(("--http-ports", "--opaque-ports"), protocols, strict=True):
        if ports:
            args += [flag, ",".join(map(str, ports))]
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if cfg.otlp_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": cfg.otlp_endpoint})
        # spans and metrics name the pod they came from (read by the OpenTelemetry SDK's Resource)
        env.append(
            {
                "name": "OTEL_RESOURCE_ATTRIBUTES",
                "value": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)",
            }
        )
    probe = {"httpGet": {"path": "/ready", "port": HEALTH_PORT}, "periodSeconds": 1, "failureThreshold": 600}
    return {
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "args": args,
        "env": env,
        "ports": [
            {"name": "mg-http", "containerPort": PROXY_PORT},
            {"name": "mg-grpc", "containerPort": GRPC_PORT},
            {"name": "mg-health", "containerPort": HEALTH_PORT},
            {"name": "mg-metrics", "containerPort": METRICS_PORT},
        ],
        # the app starts only after the first snapshot is applied: the startup probe gates it
        "startupProbe": probe,
        "readinessProbe": {"httpGet": {"path": "/ready", "port": HEALTH_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": HEALTH_PORT}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": cfg.cpu, "memory": cfg.memory},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": STATE_VOLUME, "mountPath": "/var/lib/meshgate"},
            {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": True},
        ],
    }


def identity_volume() -> dict[str, Any]:
    """The sidecar's proof of its pod (a projected ServiceAccount token for control) and control's CA.
    The ConfigMap is not optional: without it the pod waits (the kubelet retries) instead of starting
    a sidecar that cannot trust control."""
    return {
        "name": IDENTITY_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": TOKEN_EXPIRATION_S,
                        "path": TOKEN_FILE,
                    }
                },
                {"configMap": {"name": CA_CONFIGMAP, "items": [{"key": CA_KEY, "path": CA_KEY}]}},
            ]
        },
    }


def init_container(cfg: InjectConfig, ports: list[int]) -> dict[str, Any]:
    """Redirects inbound traffic for the app's ports to the sidecar, except the sidecar's own."""
    return {
        "name": INIT_NAME,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "args": ["iptables", "--proxy-port", str(PROXY_PORT), "--proxy-uid", str(PROXY_UID)]
        + [x for p in ports for x in ("--app-port", str(p))],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }


def termination_grace(grace: object, cfg: InjectConfig) -> int:
    """terminationGracePeriodSeconds with room for the sidecar's drain after the app's own stop.

    Native: the sidecar's SIGTERM comes once the app has exited, within the same grace period, so
    the drain is added to what the app had. Legacy: everything stops at once, so the sidecar's
    preStop sleep and drain must fit in the period.
    """
    base = grace if isinstance(grace, int) and grace >= 0 else DEFAULT_GRACE_S
    if cfg.legacy:
        return max(base, cfg.grace_s)
    return base + cfg.grace_s


def inject_object(
    obj: dict[str, Any], cfg: InjectConfig, namespace_enabled: bool = True
) -> tuple[dict[str, Any], str]:
    """Returns (object, what happened): injected | already injected | opted out | not a pod."""
    out = copy.deepcopy(obj)
    found = _pod_spec(out)
    if found is None:
        return out, "not a pod"
    meta, spec = found
    annotations = meta.setdefault("annotations", {}) or {}
    meta["annotations"] = annotations
    if annotations.get(STATUS_ANNOTATION) == "true" or any(
        c.get("name") == SIDECAR_NAME for c in [*spec.get("containers", []), *spec.get("initContainers", [])]
    ):
        return out, "already injected"
    if annotations.get(INJECT_ANNOTATION) == "false" or (
        not namespace_enabled and annotations.get(INJECT_ANNOTATION) != "true"
    ):
        return out, "opted out"
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    sidecar = sidecar_container(cfg, labels, port_protocols(spec, annotations))
    init = init_container(cfg, _app_ports(spec))
    inits = spec.setdefault("initContainers", [])
    if cfg.legacy:
        # Older clusters: a plain container first in the list; postStart holds the app containers
        # (started in order) until the sidecar is ready. All containers are stopped at once: the
        # preStop sleep delays the sidecar's SIGTERM so the app's last requests still pass through.
        sidecar.pop("startupProbe")
        sidecar["lifecycle"] = {
            "postStart": {  # run inside the pod, where the admin port is
                "exec": {"command": ["meshgate", "wait-ready", "--admin", f"127.0.0.1:{ADMIN_PORT}"]}
            },
            "preStop": {"exec": {"command": ["sleep", str(cfg.pre_stop_s)]}},
        }
        spec["containers"] = [sidecar, *spec.get("containers", [])]
        inits.insert(0, init)
    else:
        sidecar["restartPolicy"] = "Always"  # a native sidecar (Kubernetes >= 1.29)
        inits[0:0] = [init, sidecar]
    spec["terminationGracePeriodSeconds"] = termination_grace(spec.get("terminationGracePeriodSeconds"), cfg)
    vols = spec.setdefault("volumes", [])
    vols.append({"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}})
    vols.append(identity_volume())
    annotations[STATUS_ANNOTATION] = "true"
    annotations.setdefault("prometheus.io/scrape", "true")
    annotations.setdefault("prometheus.io/port", str(METRICS_PORT))
    annotations.setdefault("prometheus.io/path", "/metrics")
    return out, "injected"
