"""Running the control service: the gRPC server, its store, etcd mirror, streamer and controller, and
`meshgate control`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from meshgate.control.authz import AdminAuthorizer
from meshgate.control.ca import SIDECAR_VALIDITY, Authority
from meshgate.control.ca_publisher import CaPublisher
from meshgate.control.controller import Controller, ControllerOptions
from meshgate.control.etcd_client import EtcdTLS
from meshgate.control.etcd_local import EtcdNotFound, LocalEtcd
from meshgate.control.identity import Issuer
from meshgate.control.keystore import ControlKeys, load_dir, load_secret, write_admin_credential
from meshgate.control.keystore import generate as generate_keys
from meshgate.control.kube import KubeClient, KubeOptions, in_cluster_namespace
from meshgate.control.mirror import EtcdMirror
from meshgate.control.service import ControlServicer
from meshgate.control.store import Store
from meshgate.control.stream import ConfigStreamer
from meshgate.sidecar.credentials import ADMIN_DIR, default_state_dir
from meshgate.sidecar.metrics import Family, Labels, Value, prometheus_text
from meshgate.v1 import control_pb2_grpc

log = logging.getLogger("meshgate.control")

# The names control's serving certificate covers unless told otherwise (--tls-host).
DEFAULT_TLS_HOSTS = ("localhost", "127.0.0.1", "::1", socket.gethostname())
# Private address space: where Kubernetes pod and service networks live unless told otherwise.
DEFAULT_CLUSTER_CIDRS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")


@dataclass
class ControlServer:
    server: grpc.aio.Server
    store: Store
    streamer: ConfigStreamer
    port: int
    control_id: str
    mirror: EtcdMirror
    authority: Authority
    authorizer: AdminAuthorizer
    token_port: int  # TLS without client certificates: IssueCertificate and bearer-token admin calls
    controller: Controller | None = None
    publisher: CaPublisher | None = None  # Kubernetes: control's CA into every namespace

    def metrics(self) -> list[tuple[Family, list[tuple[Labels, Value]]]]:
        """Everything this replica reports: the config stream's, the mirror's poison and the refusals."""
        return [*self.streamer.metrics(), *self.mirror.metrics(), *self.authorizer.metrics()]

    async def stop(self, grace: float = 1.0) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        if self.controller is not None:
            await self.controller.stop()
        await self.streamer.stop()
        await self.server.stop(grace)
        await self.mirror.stop()
        await self.store.close()


async def _open_store(store: Store) -> Store:
    """Open the store (etcd unreachable or refusing its TLS: one ConnectionError line), closed again if not."""
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store


def _grpc_server(
    servicer: ControlServicer,
    authorizer: AdminAuthorizer,
    authority: Authority,
    host: str,
    port: int,
    token_port: int | None,
    tls_hosts: Sequence[str],
) -> tuple[grpc.aio.Server, int, int]:
    """The gRPC server on its two TLS ports: (server, certificate port, token port; 0 = not bound).
    grpc can require a client certificate or not ask for one, nothing between: certificate callers
    (sidecar streams, renewals, the local CLI) on one port, token callers on the other."""
    server = grpc.aio.server(
        interceptors=[authorizer],
        options=[
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    control_pb2_grpc.add_ControlServiceServicer_to_server(servicer, server)
    cert, key = authority.server_cert(list(tls_hosts))
    mtls = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=authority.ca_pem, require_client_auth=True
    )
    bound = server.add_secure_port(f"{host}:{port}", mtls)
    token_bound = 0
    if bound and token_port is not None:
        token_bound = server.add_secure_port(
            f"{host}:{token_port}", grpc.ssl_server_credentials([(key, cert)])
        )
    return server, bound, token_bound


async def start_control(
    etcd_endpoint: str,
    *,
    host: str = "127.0.0.1",
    port: int = 7070,
    token_port: int | None = 0,
    prefix: str = "/meshgate/",
    control_id: str | None = None,
    debounce_s: float = 0.005,
    max_delay_s: float = 0.05,
    cluster_cidrs: tuple[str, ...] = DEFAULT_CLUSTER_CIDRS,
    kubernetes: ControllerOptions | None = None,
    keys: ControlKeys | None = None,
    trust_domain: str = "cluster.local",
    tls_hosts: Sequence[str] = DEFAULT_TLS_HOSTS,
    kube_auth: KubeClient | None = None,
    cert_validity: datetime.timedelta = SIDECAR_VALIDITY,
    etcd_tls: EtcdTLS | None = None,
) -> ControlServer:
    """Control on `host:port`, TLS only. `keys` (CA, API-key hash key, bootstrap token) are made up
    when not given (tests); `kube_auth` checks ServiceAccount and CLI tokens (TokenReview,
    SubjectAccessReview) where there is a Kubernetes API; `etcd_tls`: etcd over TLS with a client
    certificate."""
    control_id = control_id or f"{socket.gethostname()}-{os.getpid()}"
    keys = keys or generate_keys()
    authority = Authority(keys.ca_cert, keys.ca_key, trust_domain)
    store = await _open_store(
        Store(etcd_endpoint, prefix, cluster_cidrs=cluster_cidrs, keys=keys, tls=etcd_tls)
    )
    mirror = EtcdMirror(store)  # one load and one watch of the prefix, for the streamer and the controller
    try:
        await asyncio.wait_for(mirror.start(), 10)
    except Exception as exc:
        await mirror.stop()
        await store.close()
        raise ConnectionError(f"etcd at {etcd_endpoint} unreachable: {type(exc).__name__}") from None
    streamer = ConfigStreamer(
        store,
        control_id,
        debounce_s=debounce_s,
        max_delay_s=max_delay_s,
        cluster_cidrs=cluster_cidrs,
        mirror=mirror,
    )
    await streamer.start()
    authorizer = AdminAuthorizer(authority, kube_auth)
    issuer = Issuer(authority, keys, kube_auth, cert_validity)
    server, bound, token_bound = _grpc_server(
        ControlServicer(store, streamer, issuer), authorizer, authority, host, port, token_port, tls_hosts
    )
    if not bound or (token_port is not None and not token_bound):
        await streamer.stop()
        await mirror.stop()
        await store.close()
        raise OSError(
            f"cannot listen on {host}:{port}" + (f" and :{token_port}" if token_port is not None else "")
        )
    await server.start()
    controller = None
    if kubernetes is not None:
        controller = Controller(
            store, kubernetes, identity=control_id, cluster_cidrs=cluster_cidrs, mirror=mirror
        )
        try:
            await controller.start()
        except Exception as exc:
            await server.stop(0)
            await streamer.stop()
            await mirror.stop()
            await store.close()
            raise ConnectionError(f"Kubernetes API: {type(exc).__name__}: {exc}") from None
    ctl = ControlServer(
        server, store, streamer, bound, control_id, mirror, authority, authorizer, token_bound, controller
    )
    if kubernetes is not None and kube_auth is not None:  # the CA injected sidecars mount
        ctl.publisher = CaPublisher(kube_auth, authority.ca_pem, namespace=kubernetes.namespace)
        ctl.publisher.start()
    return ctl


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"error: --listen must be HOST:PORT, got {address!r}")
    return host or "0.0.0.0", int(port)


async def _keys(args: argparse.Namespace) -> tuple[ControlKeys, KubeClient | None]:
    """Control's keys (a Kubernetes Secret with --kubernetes, else the state dir) and, with
    --kubernetes, the API client that checks tokens."""
    if not args.kubernetes:
        return load_dir(Path(args.state_dir)), None
    kube = await KubeClient.connect(
        KubeOptions(api_url=args.kube_api or "", kubeconfig=args.kubeconfig or "")
    )
    namespace = args.lease_namespace or in_cluster_namespace()
    return await load_secret(kube, namespace, args.keys_secret), kube


async def _serve(args: argparse.Namespace, etcd_endpoint: str) -> int:
    host, port = _split(args.listen)
    token_port = _split(args.token_listen)[1] if args.token_listen else port + 1
    try:
        keys, kube_auth = await _keys(args)
    except Exception as exc:
        print(f"error: control's keys: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not args.kubernetes:  # the local CLI's credential, before serving (Kubernetes: RBAC and tokens)
        authority = Authority(keys.ca_cert, keys.ca_key, args.trust_domain)
        write_admin_credential(Path(args.state_dir) / ADMIN_DIR, authority)
    try:
        ctl = await start_control(
            etcd_endpoint,
            host=host,
            port=port,
            token_port=token_port,
            prefix=args.prefix,
            control_id=args.id,
            cluster_cidrs=tuple(args.cluster_cidr or DEFAULT_CLUSTER_CIDRS),
            kubernetes=_controller_options(args),
            keys=keys,
            trust_domain=args.trust_domain,
            tls_hosts=tuple(args.tls_host or DEFAULT_TLS_HOSTS),
            kube_auth=kube_auth,
            cert_validity=datetime.timedelta(hours=args.cert_hours),
            etcd_tls=_etcd_tls(args),
        )
    except (ConnectionError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    metrics_runner = None
    if args.metrics_listen:
        from aiohttp import web

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=prometheus_text(ctl.metrics()), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        metrics_runner = web.AppRunner(app, access_log=None)
        await metrics_runner.setup()
        mhost, mport = _split(args.metrics_listen)
        await web.TCPSite(metrics_runner, mhost, mport).start()
    exporter = None
    if args.otlp_endpoint and args.otlp_metrics_interval > 0:
        from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter

        exporter = OtlpMetricsExporter(
            args.otlp_endpoint,
            "meshgate-control",
            ctl.control_id,
            ctl.metrics,
            args.otlp_metrics_interval,
        )
        exporter.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = (
        "keys in Secret " + args.keys_secret
        if args.kubernetes
        else f"keys and CLI credential in {args.state_dir}"
    )
    print(
        f"meshgate control {ctl.control_id} listening on {host}:{ctl.port} (mTLS) and :{ctl.token_port} "
        f"(TLS, tokens; etcd {etcd_endpoint}, "
        f"prefix {args.prefix}; {where})",
        flush=True,
    )
    await stop.wait()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    if exporter is not None:
        await exporter.stop()
    await ctl.stop()
    return 0


def _etcd_tls(args: argparse.Namespace) -> EtcdTLS | None:
    if not args.etcd_ca:
        return None
    return EtcdTLS(ca=Path(args.etcd_ca), cert=Path(args.etcd_cert), key=Path(args.etcd_key))


def _etcd_tls_error(args: argparse.Namespace) -> str | None:
    """--etcd-ca, --etcd-cert and --etcd-key come together, and with --etcd."""
    given = [bool(args.etcd_ca), bool(args.etcd_cert), bool(args.etcd_key)]
    if any(given) and not all(given):
        return "--etcd-ca, --etcd-cert and --etcd-key go together (all three or none)"
    if any(given) and not args.etcd:
        return "--etcd-ca/--etcd-cert/--etcd-key need --etcd (the private etcd is plaintext on loopback)"
    return None


def _controller_options(args: argparse.Namespace) -> ControllerOptions | None:
    if not args.kubernetes:
        return None
    return ControllerOptions(
        kube=KubeOptions(api_url=args.kube_api or "", kubeconfig=args.kubeconfig or ""),
        namespace="" if args.all_namespaces else (args.kube_namespace or ""),
        lease_namespace=args.lease_namespace or in_cluster_namespace(),
        lease_name=args.lease_name,
        lease_duration_s=args.lease_duration,
        renew_s=args.lease_renew,
        resync_s=args.kube_resync,
    )


def _add_kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubernetes controller (meshgate.io custom resources -> etcd)")
    group.add_argument(
        "--kubernetes", action="store_true", help="run the controller (leader-elected among replicas)"
    )
    scope = group.add_mutually_exclusive_group()
    scope.add_argument("--kube-namespace", help="watch one namespace (default: all)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (default)")
    group.add_argument("--kube-api", help="API server URL, no credentials (tests, kubectl proxy)")
    group.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, else ~/.kube/config)")
    group.add_argument("--lease-namespace", help="namespace of the leader Lease (default: this pod's)")
    group.add_argument("--lease-name", default="meshgate-controller", help="default %(default)s")
    group.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default %(default)s)")
    group.add_argument("--lease-renew", type=float, default=2.0, help="renew period, s (default %(default)s)")
    group.add_argument(
        "--kube-resync",
        type=float,
        default=300.0,
        help="re-reconcile everything every N s (default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """`meshgate control`'s flags (also parsed by tests/test_deploy.py against the manifests)."""
    parser = argparse.ArgumentParser(prog="meshgate control", description="Run the meshgate control service.")
    parser.add_argument(
        "--etcd",
        help="etcd endpoint HOST:PORT or https://HOST:PORT (default: start a private etcd on loopback)",
    )
    parser.add_argument(
        "--etcd-ca", help="PEM CA that etcd's serving certificate must chain to (TLS to etcd)"
    )
    parser.add_argument("--etcd-cert", help="PEM client certificate control presents to etcd")
    parser.add_argument("--etcd-key", help="PEM private key of --etcd-cert")
    parser.add_argument("--data-dir", help="data dir of the private etcd (default: a temp dir)")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:7070",
        help="gRPC, TLS with client certificates: sidecar streams, the local CLI (default %(default)s)",
    )
    parser.add_argument(
        "--token-listen",
        help="gRPC, TLS without client certificates: certificate requests and bearer-token admin calls "
        "(default: --listen's host, its port + 1)",
    )
    parser.add_argument("--prefix", default="/meshgate/", help="etcd key prefix (default %(default)s)")
    parser.add_argument(
        "--cluster-cidr",
        action="append",
        help="pod/service network (repeatable): what private Apis accept as 'inside the cluster' "
        f"(default {', '.join(DEFAULT_CLUSTER_CIDRS)})",
    )
    parser.add_argument("--id", default=None, help="replica id (default hostname-pid)")
    parser.add_argument(
        "--state-dir",
        default=str(default_state_dir()),
        help="CA, keys, bootstrap token and the CLI's credential (admin/), without --kubernetes "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--keys-secret",
        default="meshgate-control-keys",
        help="with --kubernetes: the Secret (in the lease namespace) holding the CA and keys (default %(default)s)",
    )
    parser.add_argument(
        "--trust-domain", default="cluster.local", help="SPIFFE trust domain (default %(default)s)"
    )
    parser.add_argument(
        "--tls-host",
        action="append",
        help=f"name or IP in control's serving certificate (repeatable; default {', '.join(DEFAULT_TLS_HOSTS)})",
    )
    parser.add_argument(
        "--cert-hours", type=float, default=24.0, help="sidecar certificate lifetime (default %(default)s)"
    )
    parser.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics of the control plane")
    parser.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="OTLP/gRPC collector for the control plane's metrics, e.g. jaeger:4317 (default: off)",
    )
    parser.add_argument(
        "--otlp-metrics-interval", type=float, default=10.0, help="seconds (default %(default)s)"
    )
    parser.add_argument("--log-level", default="info")
    _add_kubernetes_flags(parser)
    return parser


def run_control(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tls_error = _etcd_tls_error(args)
    if tls_error is not None:
        print(f"error: {tls_error}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        endpoint = args.etcd
        if not endpoint:
            try:
                etcd = stack.enter_context(LocalEtcd(data_dir=Path(args.data_dir) if args.data_dir else None))
            except (EtcdNotFound, RuntimeError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            endpoint = etcd.endpoint
            print(f"private etcd on {endpoint}", flush=True)
        return asyncio.run(_serve(args, endpoint))
