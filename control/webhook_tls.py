"""The webhook's TLS material: a generated CA and serving cert, their checks, and self-provisioning.

Self-provisioned mode (`meshgate webhook --tls-secret NAME --webhook-config NAME`), run by every
replica at start and again every `--tls-resync` seconds:

1. The Secret (type kubernetes.io/tls: tls.crt, tls.key, ca.crt). GET; on 404 generate a CA and a
   serving cert for the Service's DNS names and POST it; on 409 AlreadyExists another replica won
   the race, so read theirs. A Secret whose cert expires within 30 days, does not cover the DNS
   names, does not match its key or CA, or does not parse is regenerated and PUT with the
   resourceVersion that was read; on 409 Conflict it is read and judged again. Every replica ends
   up with the Secret's cert.
2. The MutatingWebhookConfiguration. GET; every webhook entry whose caBundle does not already
   trust the CA gets the CA followed by at most one previous CA still valid (replicas still
   serving the previous cert keep working until their next resync picks up the new one), and the
   object is PUT with its resourceVersion (409: read again). No write when every entry trusts it.

The cert is served only once both steps are done. The ssl module loads a cert chain only from
files, so `load_cert_chain` writes the PEMs to a private temp dir and removes it at once.
"""

from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from meshgate.control.ca import Authority, generate_ca
from meshgate.control.kube import JSON, KubeClient, KubeError

log = logging.getLogger("meshgate.webhook")

CA_COMMON_NAME = "meshgate-webhook-ca"
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
MANAGED_BY = "meshgate-webhook"
MAX_ATTEMPTS = 8  # optimistic-concurrency rounds before giving up (each one means another writer won)


class ProvisionError(Exception):
    """The Secret or the caBundle could not be settled (the message says what to fix)."""


@dataclass(frozen=True)
class TlsBundle:
    """PEM bytes: the serving cert, its private key (PKCS#8) and the CA cert that signed it."""

    cert: bytes
    key: bytes
    ca: bytes


def service_hosts(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use for a webhook Service."""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def generate(hosts: list[str], validity: datetime.timedelta = VALIDITY) -> TlsBundle:
    """A new CA and a serving cert for `hosts` (DNS names or IP addresses), both valid for `validity`."""
    ca_pem, ca_key_pem = generate_ca(CA_COMMON_NAME, validity)
    cert, key = Authority(ca_pem, ca_key_pem).server_cert(hosts, validity)
    return TlsBundle(cert=cert, key=key, ca=ca_pem)


def renewal_reason(
    bundle: TlsBundle, hosts: list[str], renew_before: datetime.timedelta = RENEW_BEFORE
) -> str:
    """Why `bundle` must be replaced ("" when it is good to serve for `hosts` for `renew_before` more)."""
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        ca = x509.load_pem_x509_certificate(bundle.ca)
        key = serialization.load_pem_private_key(bundle.key, password=None)
    except ValueError as exc:
        return f"unreadable ({exc})"
    if key.public_key() != cert.public_key():
        return "tls.key does not match tls.crt"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "tls.crt is not signed by ca.crt"
    deadline = _now() + renew_before
    for which, c in (("tls.crt", cert), ("ca.crt", ca)):
        if c.not_valid_after_utc <= deadline:
            return f"{which} expires {c.not_valid_after_utc:%Y-%m-%d}, within {renew_before.days} days"
    missing = [h for h in hosts if not _covers(cert, h)]
    if missing:
        return f"tls.crt does not cover {', '.join(missing)}"
    return ""


def _covers(cert: x509.Certificate, host: str) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in sans.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host.lower() in (n.lower() for n in sans.get_values_for_type(x509.DNSName))


def load_cert_chain(ctx: ssl.SSLContext, bundle: TlsBundle) -> None:
    """Load (or reload: new handshakes get it) the serving cert and key into `ctx`."""
    with tempfile.TemporaryDirectory(prefix="meshgate-tls-") as tmp:  # mode 0700
        cert_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert_file.write_bytes(bundle.cert)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.key)
        ctx.load_cert_chain(cert_file, key_file)


def server_context(bundle: TlsBundle) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_cert_chain(ctx, bundle)
    return ctx


# ---------------------------------------------------------------------- the Secret


def bundle_from_secret(secret: JSON) -> TlsBundle | None:
    """tls.crt, tls.key and ca.crt of a Secret, or None when one is missing or not base64."""
    data = secret.get("data") or {}
    try:
        return TlsBundle(
            cert=base64.b64decode(data["tls.crt"], validate=True),
            key=base64.b64decode(data["tls.key"], validate=True),
            ca=base64.b64decode(data["ca.crt"], validate=True),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _secret_data(bundle: TlsBundle) -> dict[str, str]:
    return {
        "tls.crt": base64.b64encode(bundle.cert).decode(),
        "tls.key": base64.b64encode(bundle.key).decode(),
        "ca.crt": base64.b64encode(bundle.ca).decode(),
    }


def new_secret(namespace: str, name: str, bundle: TlsBundle) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "type": "kubernetes.io/tls",
        "data": _secret_data(bundle),
    }


@dataclass(frozen=True)
class SecretResult:
    bundle: TlsBundle
    action: str  # created | adopted (another replica created it) | rotated | unchanged


async def ensure_secret(kube: KubeClient, namespace: str, name: str, hosts: list[str]) -> SecretResult:
    """The Secret's TLS material, created or rotated first when needed (see the module docstring)."""
    lost_create = False
    for _ in range(MAX_ATTEMPTS):
        secret = await kube.get_secret(namespace, name)
        if secret is None:
            fresh = generate(hosts)
            try:
                await kube.create_secret(namespace, new_secret(namespace, name, fresh))
            except KubeError as exc:
                if exc.status != 409:
                    raise
                log.info("Secret %s/%s was created by another replica: using it", namespace, name)
                lost_create = True
                continue
            log.info("created Secret %s/%s for %s", namespace, name, ", ".join(hosts))
            return SecretResult(fresh, "created")
        current = bundle_from_secret(secret)
        reason = renewal_reason(current, hosts) if current else "tls.crt, tls.key or ca.crt missing"
        if not reason:
            assert current is not None
            return SecretResult(current, "adopted" if lost_create else "unchanged")
        fresh = generate(hosts)
        body = copy.deepcopy(secret)
        body["data"] = {**(secret.get("data") or {}), **_secret_data(fresh)}
        body.pop("stringData", None)
        # metadata.resourceVersion stays: the PUT is conditional on nobody having written since the GET
        try:
            await kube.replace_secret(namespace, name, body)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            log.info("Secret %s/%s changed while rotating it: reading it again", namespace, name)
            continue
        log.info("rotated Secret %s/%s: %s", namespace, name, reason)
        return SecretResult(fresh, "rotated")
    raise ProvisionError(f"Secret {namespace}/{name}: still conflicting after {MAX_ATTEMPTS} attempts")


# ---------------------------------------------------------------------- the caBundle


def _pem_certs(bundle: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []


def merged_ca_bundle(existing: bytes, ca: bytes) -> bytes | None:
    """The caBundle to write for one webhook entry, or None when `existing` already trusts `ca`.

    The new bundle is `ca` followed by the first other certificate of `existing` that is still
    valid: the CA of the cert that replicas not yet resynced still serve.
    """
    want = x509.load_pem_x509_certificate(ca)
    certs = _pem_certs(existing)
    if want in certs:
        return None
    now = _now()
    previous = next((c for c in certs if c.not_valid_after_utc > now), None)
    out = want.public_bytes(serialization.Encoding.PEM)
    if previous is not None:
        out += previous.public_bytes(serialization.Encoding.PEM)
    return out


async def ensure_ca_bundle(kube: KubeClient, config_name: str, ca: bytes) -> int:
    """Make every webhook entry of the MutatingWebhookConfiguration trust `ca`; entries written."""
    for _ in range(MAX_ATTEMPTS):
        mwc = await kube.get_mutating_webhook_configuration(config_name)
        if mwc is None:
            raise ProvisionError(f"MutatingWebhookConfiguration {config_name} not found")
        hooks = [h for h in mwc.get("webhooks") or [] if isinstance(h, dict)]
        if not hooks:
            raise ProvisionError(f"MutatingWebhookConfiguration {config_name} has no webhooks")
        changed = 0
        for hook in hooks:
            client_config = hook.setdefault("clientConfig", {})
            try:
                existing = base64.b64decode(client_config.get("caBundle") or "")
            except ValueError:
                existing = b""
            bundle = merged_ca_bundle(existing, ca)
            if bundle is not None:
                client_config["caBundle"] = base64.b64encode(bundle).decode()
                changed += 1
        if not changed:
            return 0
        try:
            await kube.replace_mutating_webhook_configuration(config_name, mwc)
        except KubeError as exc:
            if exc.status != 409:
                raise
            log.info("MutatingWebhookConfiguration %s changed meanwhile: reading it again", config_name)
            continue
        log.info("caBundle of %d webhook(s) of MutatingWebhookConfiguration %s updated", changed, config_name)
        return changed
    raise ProvisionError(
        f"MutatingWebhookConfiguration {config_name}: still conflicting after {MAX_ATTEMPTS} attempts"
    )
