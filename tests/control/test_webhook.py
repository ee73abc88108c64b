"""The injection webhook as a process: HTTPS with a generated CA, AdmissionReview v1 in and out,
a JSONPatch that injects the sidecar, namespace vs pod scope, idempotency."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from meshgate.control.etcd_local import free_port

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "pets-abc", "namespace": "shop", "labels": {"app": "pets"}},
    "spec": {"containers": [{"name": "app", "image": "pets:1", "ports": [{"containerPort": 8080}]}]},
}


def admit(port: int, ca: Path, pod: dict[str, Any], scope: str) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "operation": "CREATE", "object": pod},
    }
    req = urllib.request.Request(
        f"https://127.0.0.1:{port}/inject?scope={scope}",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.loads(resp.read())["response"]


def apply_patch(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    out = dict(pod)
    for op in json.loads(base64.b64decode(response["patch"])):
        out[op["path"].strip("/")] = op["value"]
    return out


def test_webhook_injects_over_https(tmp_path: Path) -> None:
    port = free_port()
    ca = tmp_path / "ca.pem"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshgate.control.cli",
            "webhook",
            "--listen",
            f"127.0.0.1:{port}",
            "--ca-out",
            str(ca),
            "--host",
            "127.0.0.1",
            "--control-address",
            "ctl:7070",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "caBundle" in proc.stdout.readline() and "listening" in proc.stdout.readline()
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                response = admit(port, ca, POD, "namespace")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response["uid"] == "u-1" and response["allowed"] and response["patchType"] == "JSONPatch"
        pod = apply_patch(POD, response)
        names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert (
            names == ["meshgate-init", "meshgate-sidecar"]
            and pod["metadata"]["annotations"]["meshgate.io/injected"] == "true"
        )
        # injected pods are left alone; pod scope needs the annotation
        again = admit(port, ca, pod, "namespace")
        assert "patch" not in again and again["warnings"] == ["meshgate: already injected"]
        assert "patch" not in admit(port, ca, POD, "pod")
        annotated = {**POD, "metadata": {**POD["metadata"], "annotations": {"meshgate.io/inject": "true"}}}
        assert admit(port, ca, annotated, "pod")["patchType"] == "JSONPatch"
        opted_out = {**POD, "metadata": {**POD["metadata"], "annotations": {"meshgate.io/inject": "false"}}}
        assert "patch" not in admit(port, ca, opted_out, "namespace")
    finally:
        proc.terminate()
        proc.wait(10)
