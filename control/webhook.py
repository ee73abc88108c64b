"""The mutating admission webhook: AdmissionReview v1 over HTTPS, injecting the sidecar into pods.

Two webhook entries point here: `/inject?scope=namespace` for namespaces
labelled `meshgate.io/inject=enabled` (every pod unless it says "false") and
`/inject?scope=pod` for all other namespaces (only pods annotated "true").

TLS, one of three modes:
- `--tls-secret NAME [--webhook-config NAME]` (deploy/k8s's default): the cert
  lives in a Secret this process creates, or rotates when it expires within
  30 days, and the MutatingWebhookConfiguration's caBundle is patched to its
  CA, before anything is served (control/webhook_tls.py); every replica
  serves the Secret's cert, and re-checks both every `--tls-resync` seconds;
- `--tls-cert/--tls-key`: files, e.g. a Secret that cert-manager writes (with
  its CA injector filling the caBundle); re-read every `--tls-resync` seconds;
- neither: a CA and serving cert generated in memory at start, the CA bundle
  printed (and written to `--ca-out`) for a caBundle patched in by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio.config import ConfigException
from meshgate.control.inject import InjectConfig, inject_object
from meshgate.control.kube import KubeClient, KubeError, KubeOptions, in_cluster_namespace
from meshgate.control.webhook_tls import (
    ProvisionError,
    TlsBundle,
    ensure_ca_bundle,
    ensure_secret,
    generate,
    load_cert_chain,
    server_context,
    service_hosts,
)

log = logging.getLogger("meshgate.webhook")

# what a provisioning round can fail with: API answers, the network, our own checks
PROVISION_ERRORS = (KubeError, ProvisionError, aiohttp.ClientError, OSError, TimeoutError)


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


@dataclass(frozen=True)
class WebhookOptions:
    listen: str = "0.0.0.0:8443"
    inject: InjectConfig = field(default_factory=InjectConfig)
    # files mode
    tls_cert: str = ""
    tls_key: str = ""
    # generated (print-only) mode; hosts also override the Secret mode's DNS names
    hosts: tuple[str, ...] = ()
    ca_out: str = ""
    # Secret mode
    tls_secret: str = ""
    tls_secret_namespace: str = "meshgate-system"
    service: str = "meshgate-webhook"
    webhook_config: str = ""
    kube: KubeOptions = field(default_factory=KubeOptions)
    resync_s: float = 600.0
    provision_timeout_s: float = 120.0

    @property
    def mode(self) -> str:
        if self.tls_secret:
            return "secret"
        return "files" if self.tls_cert else "generated"

    def secret_hosts(self) -> list[str]:
        return list(self.hosts) or service_hosts(self.service, self.tls_secret_namespace)


class Webhook:
    """A running webhook: the HTTPS site, the cert it serves, and the TLS resync loop."""

    def __init__(self, options: WebhookOptions) -> None:
        self.options = options
        self.port = 0
        self.bundle: TlsBundle | None = None  # Secret and generated modes: what is served
        self._files: tuple[bytes, bytes] = (b"", b"")  # files mode: what is served
        self._ctx: ssl.SSLContext | None = None
        self._kube: KubeClient | None = None
        self._runner: web.AppRunner | None = None
        self._resync_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Settle the TLS material (Secret mode: the Secret and the caBundle), then serve."""
        o = self.options
        if o.mode == "secret":
            self._kube = await KubeClient.connect(o.kube, user_agent="meshgate-webhook")
            self.bundle = await self._provision_until_done()
            self._ctx = server_context(self.bundle)
        elif o.mode == "files":
            self._files = _read_files(o.tls_cert, o.tls_key)
            self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ctx.load_cert_chain(o.tls_cert, o.tls_key)
        else:
            self._generate()
        host, _, port = o.listen.rpartition(":")
        self._runner = web.AppRunner(make_app(o.inject), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or "0.0.0.0", int(port), ssl_context=self._ctx)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if o.mode != "generated" and o.resync_s > 0:
            self._resync_task = asyncio.create_task(self._resync_loop())

    def _generate(self) -> None:
        o = self.options
        hosts = list(o.hosts) or ["meshgate-webhook.meshgate-system.svc", "localhost", "127.0.0.1"]
        self.bundle = generate(hosts)
        self._ctx = server_context(self.bundle)
        if o.ca_out:
            Path(o.ca_out).write_bytes(self.bundle.ca)
        ca = base64.b64encode(self.bundle.ca).decode()
        print(f"generated a serving cert for {', '.join(hosts)}; caBundle: {ca}", flush=True)

    async def stop(self) -> None:
        if self._resync_task is not None:
            self._resync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync_task
        if self._runner is not None:
            await self._runner.cleanup()
        if self._kube is not None:
            await self._kube.close()

    async def _provision(self) -> TlsBundle:
        """One round: the Secret (created or rotated when needed), then the caBundle trusting its CA."""
        assert self._kube is not None
        o = self.options
        result = await ensure_secret(self._kube, o.tls_secret_namespace, o.tls_secret, o.secret_hosts())
        if o.webhook_config:
            await ensure_ca_bundle(self._kube, o.webhook_config, result.bundle.ca)
        return result.bundle

    async def _provision_until_done(self) -> TlsBundle:
        """Provision, retrying (RBAC or the MutatingWebhookConfiguration may be applied a moment
        after this pod starts) until --tls-provision-timeout; then ProvisionError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.provision_timeout_s
        delay = 0.5
        while True:
            try:
                return await self._provision()
            except PROVISION_ERRORS as exc:
                if loop.time() + delay > deadline:
                    raise ProvisionError(f"webhook TLS not provisioned: {exc}") from exc
                log.warning("webhook TLS not provisioned yet (retrying in %.1fs): %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def resync(self) -> bool:
        """One resync round; True when the served cert changed. A new cert from the Secret is served
        only after the caBundle trusts its CA; a files-mode pair only once it loads."""
        assert self._ctx is not None
        o = self.options
        if o.mode == "secret":
            bundle = await self._provision()
            if bundle == self.bundle:
                return False
            load_cert_chain(self._ctx, bundle)
            self.bundle = bundle
            log.info("serving the new cert of Secret %s/%s", o.tls_secret_namespace, o.tls_secret)
            return True
        if o.mode == "files":
            files = _read_files(o.tls_cert, o.tls_key)
            if files == self._files:
                return False
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(o.tls_cert, o.tls_key)
            self._ctx.load_cert_chain(o.tls_cert, o.tls_key)  # the pair loads: swap it in
            self._files = files
            log.info("serving the new cert of %s", o.tls_cert)
            return True
        return False

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.resync_s)
            try:
                await self.resync()
            except (*PROVISION_ERRORS, ssl.SSLError) as exc:
                log.warning("webhook TLS resync failed (serving the current cert): %s", exc)


def _read_files(cert: str, key: str) -> tuple[bytes, bytes]:
    return Path(cert).read_bytes(), Path(key).read_bytes()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshgate webhook",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default="0.0.0.0:8443")
    p.add_argument("--image", default="ghcr.io/meshgate/meshgate:latest")
    p.add_argument(
        "--control-address",
        default="meshgate-control.meshgate-system.svc:7070",
        help="control's mTLS port, for injected sidecars (default %(default)s)",
    )
    p.add_argument(
        "--control-token-address",
        default="",
        help="control's token port, for their first certificate (default: --control-address's port + 1)",
    )
    p.add_argument("--otlp-endpoint", default="")
    p.add_argument("--legacy", action="store_true")
    p.add_argument("--log-level", default="info")
    files = p.add_argument_group("TLS from files")
    files.add_argument("--tls-cert", help="PEM cert (a Secret; cert-manager can write it)")
    files.add_argument("--tls-key", help="PEM key")
    gen = p.add_argument_group("TLS generated at start (print-only)")
    gen.add_argument(
        "--host", action="append", default=[], help="DNS name or IP for a generated cert (repeatable)"
    )
    gen.add_argument("--ca-out", help="write the generated CA bundle here (for the caBundle patch)")
    _secret_args(p.add_argument_group("TLS self-provisioned in a Secret, caBundle patched"))
    return p


def _secret_args(sec: argparse._ArgumentGroup) -> None:
    sec.add_argument("--tls-secret", help="the kubernetes.io/tls Secret to use, creating or rotating it")
    sec.add_argument("--tls-secret-namespace", help="its namespace (default: this pod's)")
    sec.add_argument(
        "--service",
        default="meshgate-webhook",
        help="the webhook's Service: the cert is for SERVICE.NAMESPACE.svc[.cluster.local] "
        "unless --host is given (default %(default)s)",
    )
    sec.add_argument(
        "--webhook-config", help="MutatingWebhookConfiguration whose webhooks' caBundle to keep on the CA"
    )
    sec.add_argument(
        "--tls-resync",
        type=float,
        default=600.0,
        help="re-check the Secret and caBundle (or re-read --tls-cert/--tls-key) every N s; 0: never "
        "(default %(default)s)",
    )
    sec.add_argument(
        "--tls-provision-timeout",
        type=float,
        default=120.0,
        help="give up (exit 1) when the Secret and caBundle are not settled within N s at start "
        "(default %(default)s)",
    )
    sec.add_argument("--kube-api", help="API server URL, no credentials (tests, kubectl proxy)")
    sec.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, else ~/.kube/config)")


def parse_args(argv: list[str]) -> tuple[WebhookOptions, str]:
    """The options and the log level."""
    p = _parser()
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_secret and args.tls_cert:
        p.error("--tls-secret and --tls-cert/--tls-key are different TLS modes: pick one")
    if args.webhook_config and not args.tls_secret:
        p.error("--webhook-config needs --tls-secret (every replica must serve the CA it patches in)")
    return WebhookOptions(
        listen=args.listen,
        inject=InjectConfig(
            image=args.image,
            control=args.control_address,
            control_token=args.control_token_address,
            otlp_endpoint=args.otlp_endpoint,
            legacy=args.legacy,
        ),
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        hosts=tuple(args.host),
        ca_out=args.ca_out or "",
        tls_secret=args.tls_secret or "",
        tls_secret_namespace=args.tls_secret_namespace or in_cluster_namespace(),
        service=args.service,
        webhook_config=args.webhook_config or "",
        kube=KubeOptions(api_url=args.kube_api or "", kubeconfig=args.kubeconfig or ""),
        resync_s=args.tls_resync,
        provision_timeout_s=args.tls_provision_timeout,
    ), args.log_level


async def _serve(options: WebhookOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    webhook = Webhook(options)
    try:
        await webhook.start()
    except (ProvisionError, ConfigException, OSError, ssl.SSLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        await webhook.stop()
        return 1
    tls = {
        "secret": f"TLS from Secret {options.tls_secret_namespace}/{options.tls_secret}",
        "files": f"TLS from {options.tls_cert}",
        "generated": "generated TLS",
    }[options.mode]
    print(f"meshgate webhook listening on https://{options.listen} ({tls})", flush=True)
    await stop.wait()
    await webhook.stop()
    return 0


def run(argv: list[str]) -> int:
    options, log_level = parse_args(argv)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(_serve(options))
