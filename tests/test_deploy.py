"""deploy/k8s: `kubectl kustomize` renders it; every object validates offline against the Kubernetes
schemas (kubernetes-validate) and every meshgate.io object against our CRD schemas and our own
validation; the committed CRDs are what the protos generate."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from meshgate.control.crds import render
from meshgate.control.resources import parse_document
from meshgate.control.validation import validate

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"


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


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (Debian's kubernetes-client) is not installed"
)
def test_kustomize_renders_valid_objects() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
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
    assert "--kubernetes" in control["spec"]["template"]["spec"]["containers"][0]["args"]
    hooks = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")["webhooks"]
    assert [h["reinvocationPolicy"] for h in hooks] == ["IfNeeded", "IfNeeded"]


def test_a_broken_object_is_caught() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
