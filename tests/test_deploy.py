"""deploy/k8s: `kubectl kustomize` renders it; every object validates offline against the Kubernetes
schemas (kubernetes-validate) and every meshgate.io object against our CRD schemas and our own
validation; the committed CRDs are what the protos generate. The webhook's TLS wiring agrees with
itself: its flags parse, its Secret, Service and configuration names match the objects, and its RBAC
grants exactly what its self-provisioning does; the deploy/cert-manager overlay switches it to
cert-manager's Secret and takes that RBAC away."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from meshgate.control.crds import render
from meshgate.control.inject import SIDECAR_NAME, inject_object
from meshgate.control.resources import parse_document
from meshgate.control.server import build_parser
from meshgate.control.validation import validate
from meshgate.control.webhook import WebhookOptions, parse_args
from meshgate.control.webhook_tls import service_hosts
from meshgate.sidecar.main import build_parser as sidecar_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CERT_MANAGER = ROOT / "deploy" / "cert-manager"
KUBERNETES_VERSION = "1.32"
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (Debian's kubernetes-client) is not installed"
)


def test_committed_crds_are_fresh() -> None:
    assert (K8S / "crds.yaml").read_text() == render(), (
        "regenerate: python -m meshgate.control.crds > deploy/k8s/crds.yaml"
    )


def _structural(schema: Any) -> Any:
    """An openAPIV3Schema as plain JSON Schema (x-kubernetes extensions dropped)."""
    if isinstance(schema, dict):
        if schema.get("x-kubernetes-int-or-string"):
            return {"type": ["integer", "string"]}
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return {"type": "object"}
        return {k: _structural(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_structural(v) for v in schema]
    return schema


@functools.cache
def _render(path: Path) -> str:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def rendered(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize PATH` renders (a fresh copy each call)."""
    return [o for o in yaml.safe_load_all(_render(path)) if o]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


@needs_kubectl
def test_kustomize_renders_valid_objects() -> None:
    objects = rendered(K8S)
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "CustomResourceDefinition",
        "StatefulSet",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ClusterRole",
        "Api",
        "Stage",
    } <= kinds
    crds = {o["spec"]["names"]["kind"]: o for o in objects if o["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {"Api", "Stage", "UsagePlan", "ApiKey"}
    for obj in objects:
        if obj["apiVersion"].startswith("meshgate.io/"):
            schema = _structural(crds[obj["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            jsonschema.validate(copy.deepcopy(obj), schema)
            validate(parse_document(obj))  # the same validation as `meshgate apply -f`
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    etcd = next(o for o in objects if o["kind"] == "StatefulSet")
    assert etcd["spec"]["replicas"] == 3 and etcd["spec"]["volumeClaimTemplates"]
    control = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "meshgate-control"
    )
    assert control["spec"]["replicas"] == 2
    container = control["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"][1:])  # exits on an unknown or bad flag
    assert container["args"][0] == "control" and args.kubernetes
    # the Prometheus annotations point at the control-plane metrics listener
    annotations = control["spec"]["template"]["metadata"]["annotations"]
    metrics_port = int(args.metrics_listen.rsplit(":", 1)[1])
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert {"name": "metrics", "containerPort": metrics_port} in container["ports"]
    hooks = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")["webhooks"]
    assert [h["reinvocationPolicy"] for h in hooks] == ["IfNeeded", "IfNeeded"]


class Webhook:
    """The webhook as a rendered base deploys it: its Deployment, parsed flags and service account."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.deployment = one(objects, "Deployment", "meshgate-webhook")
        self.namespace: str = self.deployment["metadata"]["namespace"]
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        args = self.container["args"]
        assert args[0] == "webhook"
        self.args: list[str] = args[1:]
        self.options: WebhookOptions = parse_args(self.args)[0]  # exits on an unknown or bad flag
        # without the flag, the namespace is the pod's own
        if not any(a.startswith("--tls-secret-namespace") for a in self.args):
            self.options = dataclasses.replace(self.options, tls_secret_namespace=self.namespace)
        self.account = one(objects, "ServiceAccount", self.pod["serviceAccountName"])
        self.subject = {
            "kind": "ServiceAccount",
            "name": self.account["metadata"]["name"],
            "namespace": self.namespace,
        }

    def rules(self, objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The RBAC rules bound to the webhook's service account, by namespace ("" for cluster-wide)."""
        return bound_rules(objects, self.subject)


def bound_rules(objects: list[dict[str, Any]], subject: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """The RBAC rules bound to `subject`, by namespace ("" for cluster-wide)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding.get("subjects", []):
            continue
        ns = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
        ref = binding["roleRef"]
        role = one(objects, ref["kind"], ref["name"])
        assert role["metadata"].get("namespace", "") == (ns if ref["kind"] == "Role" else "")
        out.setdefault(ns, []).extend(role["rules"])
    return out


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str) -> bool:
    return any(
        group in r.get("apiGroups", [])
        and resource in r.get("resources", [])
        and verb in r.get("verbs", [])
        and ("resourceNames" not in r or name in r["resourceNames"])
        for r in rules
    )


@needs_kubectl
def test_the_webhook_provisions_its_own_tls_with_least_privilege() -> None:
    objects = rendered(K8S)
    hook = Webhook(objects)
    o = hook.options
    assert o.mode == "secret" and o.tls_secret and o.webhook_config
    # names: the Service the configuration calls is the one the cert is for, in the Secret's namespace
    mwc = one(objects, "MutatingWebhookConfiguration", o.webhook_config)
    assert "cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {})
    one(objects, "Service", o.service)
    for entry in mwc["webhooks"]:
        service = entry["clientConfig"]["service"]
        assert (service["name"], service["namespace"]) == (o.service, o.tls_secret_namespace)
        assert f"{service['name']}.{service['namespace']}.svc" in o.secret_hosts()
        assert "caBundle" not in entry["clientConfig"]  # the webhook's to fill
    assert o.secret_hosts() == service_hosts(o.service, o.tls_secret_namespace)
    # the pod: an API token, no Secret volume, a read-only root with a memory tmpfs for the key's passage
    assert hook.pod.get("automountServiceAccountToken") is not False
    assert hook.account.get("automountServiceAccountToken") is not False
    volumes = {v["name"]: v for v in hook.pod.get("volumes", [])}
    assert not [v for v in volumes.values() if "secret" in v]
    assert hook.container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in hook.container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert volumes[tmp["name"]]["emptyDir"]["medium"] == "Memory"
    # RBAC: exactly what control/webhook_tls.py does (GET/POST/PUT the Secret, GET/PUT the configuration)
    rules = hook.rules(objects)
    assert set(rules) == {o.tls_secret_namespace, ""}
    in_ns, cluster = rules[o.tls_secret_namespace], rules[""]
    for verb in ("get", "create", "update"):
        assert allows(in_ns, "", "secrets", verb, o.tls_secret), verb
    for verb in ("get", "update", "list", "watch", "delete", "patch"):
        assert not allows(in_ns, "", "secrets", verb, "someone-elses"), verb
    for verb in ("get", "update"):
        assert allows(
            cluster, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", verb, o.webhook_config
        )
        assert not allows(
            cluster, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", verb, "other"
        )
    updates = [r for r in in_ns if "update" in r["verbs"]] + cluster
    assert [r["resourceNames"] for r in updates] == [[o.tls_secret], [o.webhook_config]]
    assert {(g, res) for r in in_ns + cluster for g in r["apiGroups"] for res in r["resources"]} == {
        ("", "secrets"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    }


@needs_kubectl
def test_the_cert_manager_overlay_serves_cert_managers_secret() -> None:
    base, objects = Webhook(rendered(K8S)), rendered(CERT_MANAGER)
    certs = [o for o in objects if o["apiVersion"].startswith("cert-manager.io/")]
    for obj in objects:
        if obj not in certs and not obj["apiVersion"].startswith("meshgate.io/"):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    hook = Webhook(objects)
    o = hook.options
    assert o.mode == "files" and not o.webhook_config
    # the same webhook otherwise: only the TLS flags differ
    tls = ("--tls-", "--webhook-config")
    assert [a for a in hook.args if not a.startswith(tls)] == [a for a in base.args if not a.startswith(tls)]
    # it serves the Secret of the Certificate the CA injector reads, for the Service's names
    mwc = one(objects, "MutatingWebhookConfiguration", base.options.webhook_config)
    cert_ns, _, cert_name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].partition("/")
    certificate = one(certs, "Certificate", cert_name)
    assert certificate["metadata"]["namespace"] == cert_ns == hook.namespace
    assert certificate["spec"]["dnsNames"] == base.options.secret_hosts()
    mount = next(m for m in hook.container["volumeMounts"] if o.tls_cert.startswith(m["mountPath"] + "/"))
    assert o.tls_key.startswith(mount["mountPath"] + "/")
    volume = next(v for v in hook.pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    # the issuers resolve: self-signed -> CA certificate -> CA issuer -> the serving certificate
    issuer = one(certs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    ca = next(
        c
        for c in certs
        if c["kind"] == "Certificate" and c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
    )
    assert (
        ca["spec"]["isCA"] is True
        and "selfSigned" in one(certs, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"]
    )
    # and no API access
    assert hook.rules(objects) == {}
    assert (
        hook.pod["automountServiceAccountToken"] is False
        and hook.account["automountServiceAccountToken"] is False
    )


@needs_kubectl
def test_the_example_app_injected_by_the_deployed_webhook_keeps_its_admin_port_in_the_pod() -> None:
    """The example app as the base's webhook would inject it: a valid pod whose admin port binds
    loopback, whose probes and Prometheus annotations name ports the sidecar really opens, and nothing
    in the base reaches for the admin port from outside the pod."""
    objects = rendered(K8S)
    hook = Webhook(objects)
    app = one(objects, "Deployment", "pets")
    injected, what = inject_object(app, hook.options.inject, namespace_enabled=True)
    assert what == "injected"
    kubernetes_validate.validate(injected, KUBERNETES_VERSION, strict=True)
    pod = injected["spec"]["template"]
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == SIDECAR_NAME)
    args = sidecar_parser().parse_args(sidecar["args"][1:])  # exits on an unknown or bad flag
    assert args.admin[0] == "127.0.0.1"
    health, metrics = args.health_listen, args.metrics_listen
    assert health[0] == metrics[0] == "0.0.0.0" and len({args.admin[1], health[1], metrics[1]}) == 3
    declared = {p["containerPort"] for p in sidecar["ports"]}
    assert {health[1], metrics[1]} <= declared and args.admin[1] not in declared
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == health[1], probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics[1])
    assert annotations["prometheus.io/path"] == "/metrics"
    # no Service, probe, policy or scrape config in the base points at the admin port
    assert not re.search(rf"\b{args.admin[1]}\b", _render(K8S))


class Control:
    """Control as a rendered base deploys it: its Deployment, parsed flags, Service and account."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.deployment = one(objects, "Deployment", "meshgate-control")
        self.namespace: str = self.deployment["metadata"]["namespace"]
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        assert self.container["args"][0] == "control"
        self.args = build_parser().parse_args(self.container["args"][1:])  # exits on a bad flag
        self.service = one(objects, "Service", "meshgate-control")
        self.subject = {
            "kind": "ServiceAccount",
            "name": self.pod["serviceAccountName"],
            "namespace": self.namespace,
        }

    def service_target(self, address: str) -> int:
        """The container port a `host:port` address of control's Service reaches (fails if none)."""
        host, _, port = address.rpartition(":")
        assert host.split(".")[:2] in ([self.service["metadata"]["name"], self.namespace],), host
        [entry] = [p for p in self.service["spec"]["ports"] if p["port"] == int(port)]
        return int(entry.get("targetPort", entry["port"]))


@needs_kubectl
def test_control_serves_its_two_ports_under_its_service_names() -> None:
    """mTLS for streams and certificate callers on 7070, tokens (first certificates, kubectl users) on
    7071; the serving certificate names the Service; the injected sidecars' addresses reach both."""
    objects = rendered(K8S)
    ctl = Control(objects)
    args = ctl.args
    assert args.kubernetes and args.listen == "0.0.0.0:7070" and args.token_listen == "0.0.0.0:7071"
    ports = {p["containerPort"]: p["name"] for p in ctl.container["ports"]}
    assert {7070, 7071} <= set(ports) and len(set(ports.values())) == len(ports)
    svc = ctl.service["metadata"]["name"]
    assert {
        svc,
        f"{svc}.{ctl.namespace}",
        f"{svc}.{ctl.namespace}.svc",
        f"{svc}.{ctl.namespace}.svc.cluster.local",
    } <= set(args.tls_host)
    # what the webhook injects reaches the right port of that Service, under a name the cert covers
    inject = Webhook(objects).options.inject
    assert ctl.service_target(inject.control) == 7070
    assert ctl.service_target(inject.token_address) == 7071
    assert inject.control.rpartition(":")[0] in args.tls_host
    assert inject.token_address.rpartition(":")[0] in args.tls_host
    # its keys live in a Secret of its own namespace (the lease namespace defaults to the pod's)
    assert args.keys_secret and args.lease_namespace in (None, ctl.namespace)


@needs_kubectl
def test_control_rbac_reviews_tokens_and_access_keeps_its_keys_and_publishes_the_ca() -> None:
    from meshgate.control.ca_publisher import CA_CONFIGMAP

    objects = rendered(K8S)
    ctl = Control(objects)
    rules = bound_rules(objects, ctl.subject)
    cluster, own = rules[""], rules.get(ctl.namespace, [])
    # TokenReview (sidecars' ServiceAccount tokens, CLI bearer tokens), SubjectAccessReview (CLI calls)
    assert allows(cluster, "authentication.k8s.io", "tokenreviews", "create", "")
    assert allows(cluster, "authorization.k8s.io", "subjectaccessreviews", "create", "")
    assert allows(cluster, "", "pods", "get", "pets-1")  # the labels of a token's pod
    assert not allows(cluster, "", "pods", "list", "") and not allows(cluster, "", "pods", "update", "x")
    # control's keys: read or created in its own namespace, never rewritten
    secret = ctl.args.keys_secret
    assert allows(own, "", "secrets", "create", secret) and allows(
        own + cluster, "", "secrets", "get", secret
    )
    assert not [
        r
        for r in own + cluster
        if "secrets" in r["resources"] and {"update", "list", "watch", "patch", "delete"} & set(r["verbs"])
    ]
    # the CA in every namespace: list and watch namespaces, create (unnarrowable) and get/update by name
    for verb in ("list", "watch"):
        assert allows(cluster, "", "namespaces", verb, "")
    for verb in ("create", "get", "update"):
        assert allows(cluster, "", "configmaps", verb, CA_CONFIGMAP), verb
    for verb in ("get", "update", "delete", "list"):
        assert not allows(cluster, "", "configmaps", verb, "someone-elses"), verb


@needs_kubectl
def test_example_roles_for_cli_users_name_what_control_asks_about() -> None:
    """kubectl-style roles for the meshgate CLI: control's SubjectAccessReviews ask group meshgate.io,
    these resources, these verbs (control/authz.py)."""
    from meshgate.control.authz import READ_VERBS

    objects = rendered(K8S)
    resources = ["apis", "stages", "deployments", "usageplans", "apikeys", "sidecars"]
    viewer = one(objects, "ClusterRole", "meshgate-viewer")["rules"]
    editor = one(objects, "ClusterRole", "meshgate-editor")["rules"]
    for res in resources:
        for verb in READ_VERBS:
            assert allows(viewer, "meshgate.io", res, verb, "") and allows(
                editor, "meshgate.io", res, verb, ""
            )
        for verb in ("update", "delete"):
            assert not allows(viewer, "meshgate.io", res, verb, "") and allows(
                editor, "meshgate.io", res, verb, ""
            )


@needs_kubectl
def test_the_injected_example_pod_proves_its_identity_to_control() -> None:
    """The example app as the base's webhook injects it: its sidecar has a projected ServiceAccount
    token for audience meshgate and the CA ConfigMap control publishes into its namespace."""
    from meshgate.control.ca_publisher import CA_CONFIGMAP, CA_KEY, wanted
    from meshgate.control.identity import TOKEN_AUDIENCE

    objects = rendered(K8S)
    app = one(objects, "Deployment", "pets")
    injected, _ = inject_object(app, Webhook(objects).options.inject, namespace_enabled=True)
    kubernetes_validate.validate(injected, KUBERNETES_VERSION, strict=True)
    spec = injected["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == SIDECAR_NAME)
    args = sidecar_parser().parse_args(sidecar["args"][1:])
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def source(path: Path, kind: str) -> dict[str, Any]:
        mount = mounts[str(path.parent)]
        found = [s[kind] for s in volumes[mount["name"]]["projected"]["sources"] if kind in s]
        assert len(found) == 1 and mount["readOnly"] is True
        return dict(found[0])

    token = source(args.token_file, "serviceAccountToken")
    assert token["audience"] == TOKEN_AUDIENCE and token["path"] == args.token_file.name
    assert 600 <= token["expirationSeconds"] <= 3600 * 24
    ca = source(args.control_ca, "configMap")
    assert ca["name"] == CA_CONFIGMAP and ca["items"] == [{"key": CA_KEY, "path": args.control_ca.name}]
    assert args.node_id == "$(POD_NAME).$(POD_NAMESPACE)"
    # control publishes that ConfigMap into the app's namespace
    assert wanted(one(objects, "Namespace", app["metadata"]["namespace"]))


def test_a_broken_object_is_caught() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------- etcd TLS (issue 13, part 6)

ETCD_CERTS = K8S / "etcd-certs.sh"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


class Etcd:
    """etcd as a rendered base deploys it: its flags (from the shell line), mounts and Services."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.statefulset = one(objects, "StatefulSet", "meshgate-etcd")
        self.namespace: str = self.statefulset["metadata"]["namespace"]
        self.pod = self.statefulset["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        line = " ".join(self.container["args"])
        assert line.startswith("exec etcd "), line
        self.flags: dict[str, str] = {}
        for word in line.split()[2:]:
            name, _, value = word.partition("=")
            assert name.startswith("--") and name not in self.flags, word
            self.flags[name] = value
        self.headless = one(objects, "Service", self.statefulset["spec"]["serviceName"])
        self.members = [f"{self.statefulset['metadata']['name']}-{i}" for i in range(3)]

    def advertised_hosts(self) -> set[str]:
        """Every host name a member advertises to clients or peers, per member."""
        urls = self.flags["--advertise-client-urls"].split(",")
        urls += self.flags["--initial-advertise-peer-urls"].split(",")
        return {
            u.replace("$(POD_NAME)", m).split("://")[1].rsplit(":", 1)[0] for u in urls for m in self.members
        }


def secret_mount(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) that a file path in the container comes from."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"] + "/"):
            assert mount.get("readOnly") is True, mount
            secret = volumes[mount["name"]]["secret"]
            return secret["secretName"], path[len(mount["mountPath"]) + 1 :]
    raise AssertionError(f"{path} is not in a mounted volume")


@needs_kubectl
def test_etcd_serves_clients_and_peers_over_tls_to_certificates_from_its_ca() -> None:
    etcd = Etcd(rendered(K8S))
    flags = etcd.flags
    assert "--client-cert-auth" in flags and "--peer-client-cert-auth" in flags
    for name in ("--listen-client-urls", "--listen-peer-urls", "--advertise-client-urls"):
        assert all(u.startswith("https://") for u in flags[name].split(",")), name
    assert flags["--initial-advertise-peer-urls"].startswith("https://")
    peers = dict(p.split("=", 1) for p in flags["--initial-cluster"].split(","))
    assert set(peers) == set(etcd.members) and all(u.startswith("https://") for u in peers.values())
    assert "http://" not in " ".join(v for k, v in flags.items() if k != "--listen-metrics-urls")
    files = {f: flags[f] for f in flags if f.endswith(("-file",))}
    assert set(files) == {
        "--cert-file",
        "--key-file",
        "--trusted-ca-file",
        "--peer-cert-file",
        "--peer-key-file",
        "--peer-trusted-ca-file",
    }
    sources = {secret_mount(etcd.pod, etcd.container, path) for path in files.values()}
    assert {s[0] for s in sources} == {"meshgate-etcd-server-tls"}
    assert {s[1] for s in sources} == {"ca.crt", "tls.crt", "tls.key"}
    # the probe needs no client certificate: it reads the plaintext metrics listener (no keys there)
    metrics_port = int(flags["--listen-metrics-urls"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in etcd.container["ports"]}
    assert ports[etcd.container["readinessProbe"]["httpGet"]["port"]] == metrics_port
    assert metrics_port not in {p["port"] for p in etcd.headless["spec"]["ports"]}


@needs_kubectl
def test_control_reaches_etcd_over_tls_with_its_mounted_client_certificate() -> None:
    objects = rendered(K8S)
    ctl, etcd = Control(objects), Etcd(objects)
    args = ctl.args
    assert args.etcd.startswith("https://")
    host, _, port = args.etcd.removeprefix("https://").rpartition(":")
    client = one(objects, "Service", host.split(".")[0])
    assert host.split(".")[1] == etcd.namespace
    assert client["spec"]["selector"] == etcd.statefulset["spec"]["selector"]["matchLabels"]
    assert int(port) in {p["port"] for p in client["spec"]["ports"]}
    sources = {secret_mount(ctl.pod, ctl.container, p) for p in (args.etcd_ca, args.etcd_cert, args.etcd_key)}
    assert sources == {
        ("meshgate-etcd-client-tls", "ca.crt"),
        ("meshgate-etcd-client-tls", "tls.crt"),
        ("meshgate-etcd-client-tls", "tls.key"),
    }


def etcd_certs(tmp: Path) -> dict[str, dict[str, bytes]]:
    """Run deploy/k8s/etcd-certs.sh: its Secrets (validated) by name, their data decoded."""
    out = subprocess.run(
        ["bash", str(ETCD_CERTS), "-o", str(tmp)], capture_output=True, text=True, timeout=60, check=True
    )
    secrets: dict[str, dict[str, bytes]] = {}
    for obj in yaml.safe_load_all(out.stdout):
        if not obj:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["kind"] == "Secret" and obj["metadata"]["namespace"] == "meshgate-system"
        secrets[obj["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in obj["data"].items()}
    assert oct(tmp.stat().st_mode & 0o777) == "0o700"
    return secrets


def covers(sans: list[str], host: str) -> bool:
    return any(n == host or (n.startswith("*.") and host.split(".", 1)[1] == n[2:]) for n in sans)


@needs_kubectl
@needs_openssl
def test_the_etcd_certs_script_makes_the_secrets_the_base_mounts(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    objects = rendered(K8S)
    ctl, etcd = Control(objects), Etcd(objects)
    secrets = etcd_certs(tmp_path / "certs")
    assert set(secrets) == {"meshgate-etcd-server-tls", "meshgate-etcd-client-tls"}
    ca = x509.load_pem_x509_certificate(secrets["meshgate-etcd-server-tls"]["ca.crt"])
    assert secrets["meshgate-etcd-client-tls"]["ca.crt"] == secrets["meshgate-etcd-server-tls"]["ca.crt"]
    assert "ca.key" not in {k for s in secrets.values() for k in s}  # the CA key stays out of the cluster
    server = x509.load_pem_x509_certificate(secrets["meshgate-etcd-server-tls"]["tls.crt"])
    client = x509.load_pem_x509_certificate(secrets["meshgate-etcd-client-tls"]["tls.crt"])
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
    usage = {
        c: set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) for c in (server, client)
    }
    assert usage[server] == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}  # peers
    assert usage[client] == {ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = sans.get_values_for_type(x509.DNSName)
    control_host = ctl.args.etcd.removeprefix("https://").rsplit(":", 1)[0]
    for host in etcd.advertised_hosts() | {control_host}:
        assert covers(names, host), host
    # run again with the same -o DIR (rotation): the same CA, new certificates
    again = etcd_certs(tmp_path / "certs")
    assert again["meshgate-etcd-server-tls"]["ca.crt"] == secrets["meshgate-etcd-server-tls"]["ca.crt"]
    assert again["meshgate-etcd-server-tls"]["tls.crt"] != secrets["meshgate-etcd-server-tls"]["tls.crt"]


async def _control_gets_in(port: int, tls: Any) -> None:
    """control's Store opens over TLS (retrying while etcd starts); a plaintext client does not."""
    import aetcd
    from meshgate.control.store import Store

    store = Store(f"https://127.0.0.1:{port}", "/deploy-tls/", tls=tls)
    for _ in range(100):
        try:
            await store.open()
            break
        except ConnectionError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("control's certificate did not get into etcd")
    assert (await store.load_state()).revision >= 1
    await store.close()
    plain = aetcd.Client(host="127.0.0.1", port=port, timeout=3)
    with pytest.raises(aetcd.ClientError):
        await plain.get_prefix(b"/")
    await plain.close()


@needs_kubectl
@needs_openssl
def test_the_scripts_certificates_work_with_etcd_run_with_the_base_flags(tmp_path: Path) -> None:
    """A real etcd on loopback with the base's TLS flags (mount path -> the script's files) and https
    peer URLs: control's certificate from the script gets in, a plaintext client does not."""
    from meshgate.control.etcd_client import EtcdTLS
    from meshgate.control.etcd_local import EtcdNotFound, find_etcd, free_port

    try:
        binary = find_etcd()
    except EtcdNotFound as exc:
        pytest.skip(str(exc))
    secrets = etcd_certs(tmp_path / "certs")
    files: dict[str, Path] = {}
    for name, data in secrets.items():
        (tmp_path / name).mkdir()
        for key, value in data.items():
            files[f"{name}/{key}"] = tmp_path / name / key
            files[f"{name}/{key}"].write_bytes(value)
    etcd = Etcd(rendered(K8S))
    mount = next(m["mountPath"] for m in etcd.container["volumeMounts"] if m["name"] != "data")
    tls = [
        f"{k}={v.replace(mount, str(tmp_path / 'meshgate-etcd-server-tls'))}" if v else k
        for k, v in etcd.flags.items()
        if k.endswith(("-file", "-auth"))
    ]
    assert len(tls) == 8, tls
    port, peer = free_port(), free_port()
    client_url, peer_url = f"https://127.0.0.1:{port}", f"https://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        [
            binary,
            *("--name", "m0", "--data-dir", str(tmp_path / "data"), "--log-level", "error"),
            *("--listen-client-urls", client_url, "--advertise-client-urls", client_url),
            *("--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url),
            *("--initial-cluster", f"m0={peer_url}", *tls),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        c = "meshgate-etcd-client-tls"
        creds = EtcdTLS(files[f"{c}/ca.crt"], files[f"{c}/tls.crt"], files[f"{c}/tls.key"])
        asyncio.run(_control_gets_in(port, creds))
    finally:
        proc.terminate()
        proc.wait(10)
