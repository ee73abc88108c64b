"""The webhook's self-provisioned TLS against the in-test API server (tests/kubeapi.py): the Secret
created (or adopted after losing the create race, or rotated when it expires soon) and the
MutatingWebhookConfiguration of deploy/k8s/webhook.yaml patched to trust its CA, checked with real
TLS handshakes that verify the DNS name against the patched caBundle; a restart writes nothing;
files mode reloads a renewed pair and refuses a broken one."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from kubeapi import JSON, KubeApi, Request
from meshgate.control.etcd_local import free_port
from meshgate.control.kube import KubeOptions
from meshgate.control.webhook import Webhook, WebhookOptions, parse_args
from meshgate.control.webhook_tls import (
    ProvisionError,
    TlsBundle,
    bundle_from_secret,
    generate,
    merged_ca_bundle,
    new_secret,
    renewal_reason,
    service_hosts,
)

from .test_webhook import POD

ROOT = Path(__file__).resolve().parents[2]
NS, SECRET, MWC = "meshgate-system", "meshgate-webhook-tls", "meshgate-sidecar-injector"
HOST = "meshgate-webhook.meshgate-system.svc"
HOSTS = service_hosts("meshgate-webhook", NS)
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/{SECRET}"
MWC_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{MWC}"
UA = "meshgate-webhook"


def manifest_mwc() -> JSON:
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "webhook.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "MutatingWebhookConfiguration")


@pytest.fixture
async def kube() -> AsyncIterator[KubeApi]:
    api = KubeApi()
    await api.start()
    api.create(manifest_mwc())
    yield api
    await api.stop()


def options(kube: KubeApi, **kw: Any) -> WebhookOptions:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "tls_secret": SECRET,
        "tls_secret_namespace": NS,
        "webhook_config": MWC,
        "kube": KubeOptions(api_url=kube.url),
        "resync_s": 0,
        "provision_timeout_s": 0,  # no retry: each start must settle in its first round
    }
    base.update(kw)
    return WebhookOptions(**base)


def secret_bundle(kube: KubeApi) -> TlsBundle:
    secret = kube.get("Secret", NS, SECRET)
    assert secret is not None
    bundle = bundle_from_secret(secret)
    assert bundle is not None
    return bundle


def ca_bundles(kube: KubeApi) -> list[bytes]:
    """Each webhook entry's caBundle, decoded."""
    mwc = kube.get("MutatingWebhookConfiguration", "", MWC)
    assert mwc is not None
    return [base64.b64decode(h["clientConfig"].get("caBundle", "")) for h in mwc["webhooks"]]


def client_context(ca_bundle: bytes) -> ssl.SSLContext:
    """What the API server does: trust only the caBundle, check the Service's DNS name."""
    ctx = ssl.create_default_context(cadata=ca_bundle.decode())
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


async def served_cert(port: int, ca_bundle: bytes) -> bytes:
    """The PEM cert the webhook presents on a handshake verified against `ca_bundle` for HOST."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(ca_bundle), server_hostname=HOST
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return ssl.DER_cert_to_PEM_cert(der).encode()


def same_cert(a: bytes, b: bytes) -> bool:
    return x509.load_pem_x509_certificate(a) == x509.load_pem_x509_certificate(b)


async def admit(port: int, ca_bundle: bytes, scope: str = "namespace") -> JSON:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-7", "operation": "CREATE", "object": POD},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://127.0.0.1:{port}/inject?scope={scope}",
            json=review,
            ssl=client_context(ca_bundle),
            server_hostname=HOST,
        ) as resp,
    ):
        assert resp.status == 200
        body: JSON = await resp.json()
        return body


def writes(kube: KubeApi, path: str) -> list[Request]:
    return [r for r in kube.writes_by(UA) if r.path.startswith(path)]


def hold_first(kube: KubeApi, method: str, path: str, n: int = 2) -> None:
    """Hold the first `n` METHOD PATH requests until all `n` have arrived (a forced race)."""
    barrier = asyncio.Barrier(n)
    seen = 0

    async def hook(r: Request) -> None:
        nonlocal seen
        if r.method == method and r.path == path and seen < n:
            seen += 1
            await asyncio.wait_for(barrier.wait(), 5)

    kube.on_request.append(hook)


async def test_first_start_creates_the_secret_and_patches_every_ca_bundle(kube: KubeApi) -> None:
    """(a) through the real CLI: Secret created, every webhook entry trusts its CA, and an
    AdmissionReview over HTTPS verified with the patched caBundle for the Service name works."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshgate.control.cli",
        "webhook",
        f"--listen=127.0.0.1:{port}",
        f"--tls-secret={SECRET}",
        f"--tls-secret-namespace={NS}",
        f"--webhook-config={MWC}",
        f"--kube-api={kube.url}",
        "--control-address=ctl:7070",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert f"listening on https://127.0.0.1:{port}" in line and f"Secret {NS}/{SECRET}" in line, line
        secret = kube.get("Secret", NS, SECRET)
        assert secret is not None and secret["type"] == "kubernetes.io/tls"
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        bundle = secret_bundle(kube)
        assert renewal_reason(bundle, HOSTS) == ""
        cert = x509.load_pem_x509_certificate(bundle.cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == HOSTS

        bundles = ca_bundles(kube)
        assert len(bundles) == 2 and all(same_cert(b, bundle.ca) for b in bundles)
        # only the caBundles changed
        mwc = kube.get("MutatingWebhookConfiguration", "", MWC)
        assert mwc is not None
        for hook in mwc["webhooks"]:
            hook["clientConfig"].pop("caBundle")
        assert mwc["webhooks"] == manifest_mwc()["webhooks"]
        assert [(r.method, r.status) for r in writes(kube, SECRET_PATH.rsplit("/", 1)[0])] == [("POST", 201)]
        assert [(r.method, r.status) for r in writes(kube, MWC_PATH)] == [("PUT", 200)]

        for ca_bundle in bundles:
            assert same_cert(await served_cert(port, ca_bundle), bundle.cert)
            response = (await admit(port, ca_bundle))["response"]
            assert response["uid"] == "u-7" and response["patchType"] == "JSONPatch"
        # the wrong name fails verification: the check above is a real one
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(bundles[0]), server_hostname="other.svc"
            )
    finally:
        proc.terminate()
        await proc.wait()


async def test_concurrent_replicas_lose_the_races_gracefully_and_serve_one_cert(kube: KubeApi) -> None:
    """(b) both replicas GET 404 and POST: one 201, one 409 that re-reads and adopts the winner's;
    both PUT the configuration on the same resourceVersion: one 200, one 409 that re-reads."""
    hold_first(kube, "GET", SECRET_PATH)
    hold_first(kube, "GET", MWC_PATH)
    a, b = Webhook(options(kube)), Webhook(options(kube))
    try:
        await asyncio.gather(a.start(), b.start())
        secret_writes = writes(kube, SECRET_PATH.rsplit("/", 1)[0])
        assert sorted((r.method, r.status) for r in secret_writes) == [("POST", 201), ("POST", 409)]
        assert sorted((r.method, r.status) for r in writes(kube, MWC_PATH)) == [("PUT", 200), ("PUT", 409)]
        bundle = secret_bundle(kube)
        assert a.bundle == b.bundle == bundle
        for ca_bundle in ca_bundles(kube):
            assert same_cert(ca_bundle, bundle.ca)  # only this CA: nothing was trusted before
            for w in (a, b):
                assert same_cert(await served_cert(w.port, ca_bundle), bundle.cert)
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_a_secret_expiring_in_10_days_is_rotated(kube: KubeApi) -> None:
    """(c) PUT on the read resourceVersion (same object), a one-year cert, and the caBundle trusts the
    new CA first and keeps the old one for replicas that still serve the old cert."""
    old = generate(HOSTS, validity=datetime.timedelta(days=10))
    assert "within 30 days" in renewal_reason(old, HOSTS)
    before = kube.create(new_secret(NS, SECRET, old))
    mwc = manifest_mwc()
    for hook in mwc["webhooks"]:
        hook["clientConfig"]["caBundle"] = base64.b64encode(old.ca).decode()
    kube.delete("MutatingWebhookConfiguration", "", MWC)
    kube.create(mwc)
    w = Webhook(options(kube))
    try:
        await w.start()
        after = kube.get("Secret", NS, SECRET)
        assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
        assert [
            (r.method, r.status, r.body["metadata"]["resourceVersion"]) for r in writes(kube, SECRET_PATH)
        ] == [("PUT", 200, before["metadata"]["resourceVersion"])]
        new = secret_bundle(kube)
        assert w.bundle == new and new.ca != old.ca and renewal_reason(new, HOSTS) == ""
        cert = x509.load_pem_x509_certificate(new.cert)
        assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
        for ca_bundle in ca_bundles(kube):
            assert x509.load_pem_x509_certificates(ca_bundle) == [
                x509.load_pem_x509_certificate(new.ca),
                x509.load_pem_x509_certificate(old.ca),
            ]
            assert same_cert(await served_cert(w.port, ca_bundle), new.cert)
        # the new cert alone verifies against the new CA alone
        assert same_cert(await served_cert(w.port, new.ca), new.cert)
    finally:
        await w.stop()


async def test_replicas_rotating_at_once_end_on_one_cert(kube: KubeApi) -> None:
    """Both read the expiring Secret and PUT on its resourceVersion: one 200, one 409 that re-reads
    and serves the winner's cert."""
    old = generate(HOSTS, validity=datetime.timedelta(days=10))
    kube.create(new_secret(NS, SECRET, old))
    hold_first(kube, "GET", SECRET_PATH)
    a, b = Webhook(options(kube)), Webhook(options(kube))
    try:
        await asyncio.gather(a.start(), b.start())
        assert sorted((r.method, r.status) for r in writes(kube, SECRET_PATH)) == [("PUT", 200), ("PUT", 409)]
        new = secret_bundle(kube)
        assert new != old and a.bundle == b.bundle == new
        for w in (a, b):
            assert same_cert(await served_cert(w.port, ca_bundles(kube)[0]), new.cert)
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_a_restart_with_the_secret_in_place_writes_nothing(kube: KubeApi) -> None:
    """(d) the second start reads the Secret and the configuration, and writes neither."""
    first = Webhook(options(kube))
    await first.start()
    await first.stop()
    bundle = secret_bundle(kube)
    assert writes(kube, "/")  # the first start did write
    kube.requests.clear()
    again = Webhook(options(kube))
    try:
        await again.start()
        assert kube.writes_by(UA) == []
        assert {(r.method, r.path) for r in kube.requests} == {("GET", SECRET_PATH), ("GET", MWC_PATH)}
        assert again.bundle == bundle
        assert same_cert(await served_cert(again.port, ca_bundles(kube)[0]), bundle.cert)
        assert await again.resync() is False and kube.writes_by(UA) == []
    finally:
        await again.stop()


async def test_a_replica_serves_a_secret_rotated_elsewhere_once_the_ca_bundle_trusts_it(
    kube: KubeApi,
) -> None:
    a = Webhook(options(kube))
    try:
        await a.start()
        old = secret_bundle(kube)
        secret = kube.get("Secret", NS, SECRET)
        assert secret is not None
        rotated = generate(HOSTS)
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                kube.url + SECRET_PATH, json={**secret, "data": new_secret(NS, SECRET, rotated)["data"]}
            ) as resp,
        ):
            assert resp.status == 200  # as another replica rotating it would
        assert await a.resync() is True
        assert a.bundle == rotated
        for ca_bundle in ca_bundles(kube):
            assert x509.load_pem_x509_certificates(ca_bundle) == [
                x509.load_pem_x509_certificate(rotated.ca),
                x509.load_pem_x509_certificate(old.ca),
            ]
            assert same_cert(await served_cert(a.port, ca_bundle), rotated.cert)
    finally:
        await a.stop()


async def test_without_its_webhook_configuration_the_webhook_does_not_serve(kube: KubeApi) -> None:
    kube.delete("MutatingWebhookConfiguration", "", MWC)
    w = Webhook(options(kube, provision_timeout_s=0.6))
    try:
        with pytest.raises(ProvisionError, match=f"MutatingWebhookConfiguration {MWC} not found"):
            await w.start()
        assert w.port == 0
    finally:
        await w.stop()


async def test_files_mode_reloads_a_renewed_pair_and_keeps_serving_on_a_broken_one(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = generate(["localhost"])
    cert.write_bytes(first.cert)
    key.write_bytes(first.key)
    w = Webhook(WebhookOptions(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key), resync_s=0))

    async def served(ca: bytes) -> bytes:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", w.port, ssl=client_context(ca), server_hostname="localhost"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return ssl.DER_cert_to_PEM_cert(der).encode()

    try:
        await w.start()
        assert same_cert(await served(first.ca), first.cert)
        assert await w.resync() is False
        renewed = generate(["localhost"])
        cert.write_bytes(renewed.cert)
        key.write_bytes(renewed.key)
        assert await w.resync() is True
        assert same_cert(await served(renewed.ca), renewed.cert)
        cert.write_bytes(generate(["localhost"]).cert)  # a key that does not match
        with pytest.raises(ssl.SSLError):
            await w.resync()
        assert same_cert(await served(renewed.ca), renewed.cert)
    finally:
        await w.stop()


def test_renewal_reasons() -> None:
    good = generate(HOSTS)
    assert renewal_reason(good, HOSTS) == ""
    assert "does not cover meshgate-webhook.other.svc" in renewal_reason(
        good, service_hosts("meshgate-webhook", "other")
    )
    other = generate(HOSTS)
    assert renewal_reason(TlsBundle(good.cert, other.key, good.ca), HOSTS) == "tls.key does not match tls.crt"
    assert (
        renewal_reason(TlsBundle(good.cert, good.key, other.ca), HOSTS) == "tls.crt is not signed by ca.crt"
    )
    assert renewal_reason(TlsBundle(b"junk", good.key, good.ca), HOSTS).startswith("unreadable")
    assert renewal_reason(good, HOSTS, renew_before=datetime.timedelta(days=400)).startswith(
        "tls.crt expires"
    )
    assert bundle_from_secret({"data": {"tls.crt": "x"}}) is None


def test_merged_ca_bundle_keeps_one_previous_ca_and_is_idempotent() -> None:
    ca1, ca2, ca3 = (generate(HOSTS).ca for _ in range(3))
    expired = generate(HOSTS, validity=datetime.timedelta(minutes=-1)).ca
    assert merged_ca_bundle(b"", ca1) == ca1
    assert merged_ca_bundle(ca1, ca1) is None
    assert merged_ca_bundle(ca2 + ca1, ca1) is None
    assert merged_ca_bundle(ca2 + ca1, ca3) == ca3 + ca2
    assert merged_ca_bundle(expired + ca1, ca3) == ca3 + ca1
    assert merged_ca_bundle(b"not a pem", ca3) == ca3


def test_flags_pick_one_tls_mode(capsys: pytest.CaptureFixture[str]) -> None:
    options, _ = parse_args(["--tls-secret", SECRET, "--webhook-config", MWC, "--tls-secret-namespace", "x"])
    assert options.mode == "secret" and options.secret_hosts() == service_hosts("meshgate-webhook", "x")
    assert parse_args(["--tls-cert", "c", "--tls-key", "k"])[0].mode == "files"
    assert parse_args([])[0].mode == "generated"
    for bad in (
        ["--tls-secret", SECRET, "--tls-cert", "c", "--tls-key", "k"],
        ["--webhook-config", MWC],
        ["--tls-cert", "c"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "--webhook-config needs --tls-secret" in capsys.readouterr().err
