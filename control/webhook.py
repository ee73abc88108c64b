"""The mutating admission webhook: AdmissionReview v1 over HTTPS, injecting the sidecar into pods.

Two webhook entries point here: `/inject?scope=namespace` for namespaces
labelled `meshgate.io/inject=enabled` (every pod unless it says "false") and
`/inject?scope=pod` for all other namespaces (only pods annotated "true").
TLS: a cert/key from files (a Secret, possibly written by cert-manager) or,
with none given, a CA and serving cert generated at start (the CA bundle is
printed for the MutatingWebhookConfiguration's caBundle).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshgate.control.inject import InjectConfig, inject_object


def generate_certs(hosts: list[str], out_dir: Path) -> tuple[Path, Path, bytes]:
    """A CA and a serving cert for `hosts`; returns (cert file, key file, CA PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshgate-webhook-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            import ipaddress

            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = out_dir / "tls.crt", out_dir / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM)


def review(body: dict[str, Any], cfg: InjectConfig, namespace_scope: bool) -> dict[str, Any]:
    """One AdmissionReview request -> its response (a JSONPatch when the pod is injected)."""
    req = body.get("request") or {}
    uid = req.get("uid", "")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    pod = req.get("object")
    if (
        isinstance(pod, dict)
        and pod.get("kind", "Pod") == "Pod"
        and req.get("operation", "CREATE") == "CREATE"
    ):
        pod = {**pod, "kind": "Pod"}
        injected, what = inject_object(pod, cfg, namespace_enabled=namespace_scope)
        if what == "injected":
            patch = [
                {"op": "add" if "spec" not in pod else "replace", "path": "/spec", "value": injected["spec"]},
                {
                    "op": "add" if "metadata" not in pod else "replace",
                    "path": "/metadata",
                    "value": injected["metadata"],
                },
            ]
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        response["warnings"] = [] if what == "injected" else [f"meshgate: {what}"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def make_app(cfg: InjectConfig) -> web.Application:
    async def inject(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "an AdmissionReview JSON body is required"}, status=400)
        scope = request.query.get("scope", "namespace") == "namespace"
        return web.json_response(review(body, cfg, scope))

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/inject", inject)
    app.router.add_get("/healthz", healthz)
    return app


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="meshgate webhook", description=__doc__)
    p.add_argument("--listen", default="0.0.0.0:8443")
    p.add_argument("--tls-cert", help="PEM cert (a Secret; cert-manager can write it)")
    p.add_argument("--tls-key", help="PEM key")
    p.add_argument("--host", action="append", default=[], help="DNS names for a generated cert")
    p.add_argument("--ca-out", help="write the generated CA bundle here (for the caBundle patch)")
    p.add_argument("--image", default="ghcr.io/meshgate/meshgate:latest")
    p.add_argument("--control-address", default="meshgate-control.meshgate-system.svc:7070")
    p.add_argument("--otlp-endpoint", default="")
    p.add_argument("--legacy", action="store_true")
    args = p.parse_args(argv)
    cert, key = args.tls_cert, args.tls_key
    if not (cert and key):
        hosts = args.host or ["meshgate-webhook.meshgate-system.svc", "localhost", "127.0.0.1"]
        cert_path, key_path, ca = generate_certs(hosts, Path(tempfile.mkdtemp(prefix="meshgate-webhook-")))
        cert, key = str(cert_path), str(key_path)
        if args.ca_out:
            Path(args.ca_out).write_bytes(ca)
        print(
            f"generated a serving cert for {', '.join(hosts)}; caBundle: {base64.b64encode(ca).decode()}",
            flush=True,
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    host, _, port = args.listen.rpartition(":")
    cfg = InjectConfig(
        image=args.image, control=args.control_address, otlp_endpoint=args.otlp_endpoint, legacy=args.legacy
    )
    print(f"meshgate webhook listening on https://{args.listen}", flush=True)
    try:
        web.run_app(make_app(cfg), host=host or "0.0.0.0", port=int(port), ssl_context=ctx, print=None)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
