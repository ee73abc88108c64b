"""`meshgate sidecar`: wires the admin port (and the health and metrics ports), the persisted snapshot, the HTTP and gRPC listeners,
telemetry (OTLP traces and metrics) and the config client."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from meshgate.sidecar.accesslog import AccessLog
from meshgate.sidecar.admin import HEALTH_PATHS, METRICS_PATHS, AdminServer, AdminState, start_admin
from meshgate.sidecar.cache import load_key
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.credentials import default_state_dir
from meshgate.sidecar.drain import Drain
from meshgate.sidecar.http1 import HttpServer, Limits, serve_http
from meshgate.sidecar.identity import SidecarIdentity
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import TableHolder, compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.upstream import UpstreamPool
from meshgate.sidecar.wsapi import Registry
from meshgate.v1 import control_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from meshgate.sidecar.grpc_server import GrpcRelay, GrpcServer
    from meshgate.sidecar.inbound import Entrance
    from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter

log = logging.getLogger("meshgate.sidecar")


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part:
                continue
            k, sep, v = part.partition("=")
            if not sep:
                raise SystemExit(f"error: --label expects KEY=VALUE, got {part!r}")
            out[k] = v
    return out


def _ports(value: str) -> frozenset[int]:
    try:
        ports = frozenset(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PORT[,PORT...], got {value!r}") from None
    if any(not 0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"ports are 1-65535, got {value!r}")
    return ports


def _inbound_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "inbound", "the app's ports, which the injected init container redirects to --listen"
    )
    g.add_argument(
        "--http-ports",
        type=_ports,
        default=frozenset(),
        help="PORT,... that speak HTTP/1.1 or HTTP/2 (gRPC, h2c) only: never passed through as TCP "
        "(the injector lists ports named http*, grpc*, h2c* and the meshgate.io/http-ports annotation)",
    )
    g.add_argument(
        "--opaque-ports",
        type=_ports,
        default=frozenset(),
        help="PORT,... passed through as TCP to the app at once (the meshgate.io/opaque-ports annotation)",
    )
    g.add_argument(
        "--detect-timeout-ms",
        type=float,
        default=300.0,
        help="on other redirected ports: a connection whose client says nothing for this long is "
        "passed through as TCP (server-first protocols: MySQL, SMTP); default 300",
    )


def _telemetry_args(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    g = p.add_argument_group("telemetry", "OpenTelemetry export (Jaeger or any OTLP collector)")
    g.add_argument(
        "--otlp-endpoint",
        default=env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="OTLP/gRPC collector for traces and metrics, e.g. jaeger:4317 "
        "(env OTEL_EXPORTER_OTLP_ENDPOINT; default: off)",
    )
    g.add_argument(
        "--otlp-metrics-endpoint",
        default=env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        help="OTLP/gRPC collector for metrics only (env OTEL_EXPORTER_OTLP_METRICS_ENDPOINT; "
        "default: --otlp-endpoint)",
    )
    g.add_argument(
        "--otlp-metrics-interval",
        type=float,
        default=10.0,
        help="seconds between OTLP metrics exports; 0 turns them off (default %(default)s)",
    )


def _control_args(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    g = p.add_argument_group("control", "where the config comes from, and how this sidecar proves itself")
    g.add_argument(
        "--control", default=env.get("MESHGATE_CONTROL", "127.0.0.1:7070"), help="control HOST:PORT"
    )
    g.add_argument(
        "--control-token-address",
        default=env.get("MESHGATE_CONTROL_TOKEN_ADDRESS", ""),
        help="control's token port, for the first certificate (default: --control's host, port + 1)",
    )
    local = default_state_dir()  # where a `meshgate control` on this machine keeps its CA and token
    g.add_argument(
        "--control-ca",
        type=Path,
        default=Path(env.get("MESHGATE_CONTROL_CA", local / "ca.crt")),
        help="control's CA certificate: the stream is TLS only (default %(default)s)",
    )
    g.add_argument(
        "--token-file",
        type=Path,
        default=Path(env.get("MESHGATE_TOKEN_FILE", local / "bootstrap-token")),
        help="what proves this sidecar to control for its first certificate: a projected "
        "ServiceAccount token (audience meshgate) or control's bootstrap token (default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="meshgate sidecar", description="Run a meshgate sidecar.")
    _control_args(p, env)
    p.add_argument(
        "--listen",
        type=_address,
        default="0.0.0.0:15001",
        help="the inbound listener: HTTP/1.1, HTTP/2 (gRPC, h2c) and the app ports the init container "
        "redirects here (default %(default)s)",
    )
    p.add_argument(
        "--admin",
        type=_address,
        default="127.0.0.1:15000",
        help="admin port: /config_dump, /stats, /metrics, /ready, /live; keep it on loopback "
        "(default %(default)s)",
    )
    p.add_argument(
        "--health-listen",
        type=_address,
        help="health port HOST:PORT serving only /ready and /live, for kubelet probes (default: off)",
    )
    p.add_argument(
        "--metrics-listen",
        type=_address,
        help="read-only metrics port HOST:PORT serving only /metrics, for Prometheus (default: off)",
    )
    default_id = env.get("MESHGATE_NODE_ID") or env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    p.add_argument("--node-id", default=default_id)
    p.add_argument("--pod", default=env.get("POD_NAME", ""))
    p.add_argument("--namespace", default=env.get("POD_NAMESPACE", "default"))
    p.add_argument(
        "--label", action="append", default=[env["MESHGATE_LABELS"]] if env.get("MESHGATE_LABELS") else []
    )
    p.add_argument(
        "--advertise",
        help="HOST:PORT other sidecars use to reach this one's @connections API (default: the --listen "
        "address, or this host's address when listening on all interfaces)",
    )
    p.add_argument(
        "--grpc-listen", type=_address, help="gRPC listener HOST:PORT (routes with grpc integrations)"
    )
    _telemetry_args(p, env)
    p.add_argument("--state-dir", type=Path, help="where the last good snapshot is kept")
    p.add_argument("--snapshot-file", type=Path, help="serve this Snapshot (JSON) with no control connection")
    p.add_argument(
        "--cache-key-file",
        help="32-byte key for encrypted stage caches (raw, hex or base64; or env MESHGATE_CACHE_KEY)",
    )
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    p.add_argument(
        "--min-body-rate",
        type=float,
        default=Limits.min_body_rate_bps,
        help="bytes/s a request body must average once it has taken 10 s; slower is a 408 "
        "(0: no minimum; default %(default)s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="after SIGTERM: /ready is 503 and the listeners keep answering, each response with "
        "Connection: close, for up to this long (less once no connection is left); then exit "
        "(default %(default)s)",
    )
    p.add_argument("--log-level", default="info")
    _inbound_args(p)
    return p


def _load_initial(client: ConfigClient, args: argparse.Namespace) -> bool:
    """Serve the snapshot file, or the persisted snapshot until control answers; False: a bad file."""
    if args.snapshot_file is not None:
        from google.protobuf import json_format  # a sidecar fed by control never needs it

        try:
            snap = json_format.Parse(args.snapshot_file.read_text(), control_pb2.Snapshot())
            client.apply_local(snap, "file")
        except Exception as exc:
            print(f"error: {args.snapshot_file}: {exc}", file=sys.stderr)
            return False
        return True
    persisted = client.load_persisted()
    if persisted is not None:
        try:
            client.apply_local(persisted, "persisted")
            log.info("serving persisted snapshot %s until control answers", persisted.version)
        except Exception as exc:
            log.warning("persisted snapshot cannot be applied: %s", exc)
    return True


def _advertise(args: argparse.Namespace, host: str, port: int) -> str:
    if args.advertise:
        return str(args.advertise)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"{host}:{port}"


def _metrics_exporter(args: argparse.Namespace, metrics: Metrics) -> OtlpMetricsExporter | None:
    endpoint = args.otlp_metrics_endpoint or args.otlp_endpoint
    if not endpoint or args.otlp_metrics_interval <= 0:
        return None
    from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter

    exporter = OtlpMetricsExporter(
        endpoint, "meshgate-sidecar", args.node_id, metrics.families, interval_s=args.otlp_metrics_interval
    )
    exporter.start()
    return exporter


class _Sidecar:
    """The running parts, started in order and stopped in reverse."""

    def __init__(self, args: argparse.Namespace, runtime: Runtime) -> None:
        self.args = args
        self.runtime = runtime
        self.holder = TableHolder()
        node = control_pb2.Node(
            id=args.node_id,
            pod=args.pod or args.node_id,
            namespace=args.namespace,
            labels=_labels(args.label),
        )
        self.client = ConfigClient(args.control, node, self.apply, state_dir=args.state_dir)
        self.pool = UpstreamPool()
        self.http = HttpServer()
        self.metrics = self.http.metrics = Metrics()
        self.http.access_log = AccessLog()
        self.admin = AdminState(
            self.client, self.holder, args.node_id, self.metrics, self.http, self.pool, runtime
        )
        self.admin_servers: list[AdminServer] = []  # admin, then health and metrics when asked for
        self.admin_addresses: list[str] = []  # "admin 127.0.0.1:15000", ... for the startup line
        self.grpc_server: GrpcServer | None = None
        self.entrance: Entrance | None = None
        self.exporter: OtlpMetricsExporter | None = None
        self.task: asyncio.Task[None] | None = None
        self.drain: Drain | None = None
        self.serving = False  # started: a signal begins the drain

    def apply(self, snap: control_pb2.Snapshot) -> None:
        self.holder.table = compile_snapshot(snap, self.runtime)  # build first; assignment is the atomic swap
        release_memory()  # what compiling (and the table it replaced) left behind

    async def start(self) -> bool:
        args = self.args
        listen_host, listen_port = args.listen if isinstance(args.listen, tuple) else _address(args.listen)
        if not await self._start_admin_ports():
            return False
        if not _load_initial(self.client, args):
            return False
        self.http.registry = Registry(_advertise(args, listen_host, listen_port))
        self.client.node.advertise = self.http.registry.advertise  # control lists it as a connection owner
        if args.otlp_endpoint:  # OpenTelemetry loads only in a sidecar that traces
            from meshgate.sidecar.telemetry import Telemetry

            self.http.telemetry = Telemetry(args.otlp_endpoint, args.node_id)
        self.http.session = self.runtime.session
        try:
            await serve_http(
                self.holder,
                listen_host,
                listen_port,
                limits=Limits(max_body_bytes=args.max_body_bytes, min_body_rate_bps=args.min_body_rate),
                pool=self.pool,
                http_server=self.http,
                entrance=self._entrance,
            )
        except OSError as exc:
            print(f"error: cannot listen on {listen_host}:{listen_port}: {exc.strerror}", file=sys.stderr)
            return False
        if args.grpc_listen and not await self._start_grpc():
            return False
        self.exporter = self.admin.otlp_metrics = _metrics_exporter(args, self.metrics)
        if args.snapshot_file is None:
            self.client.identity = SidecarIdentity.from_files(
                args.control, args.control_ca, args.token_file, args.control_token_address
            )
        self.task = None if args.snapshot_file is not None else asyncio.create_task(self.client.run())
        self.serving = True
        source = f"snapshot file {args.snapshot_file}" if args.snapshot_file else f"control {args.control}"
        grpc_at = [f"grpc {args.grpc_listen[0]}:{args.grpc_listen[1]}"] if args.grpc_listen else []
        print(
            f"meshgate sidecar {args.node_id} listening on {listen_host}:{listen_port} "
            f"({', '.join([*grpc_at, *self.admin_addresses, source])})",
            flush=True,
        )
        return True

    async def _start_admin_ports(self) -> bool:
        """The admin port, then the health and metrics ports (the same server, fewer paths) if asked for."""
        args = self.args
        for name, address, only in (
            ("admin", args.admin, None),
            ("health", args.health_listen, HEALTH_PATHS),
            ("metrics", args.metrics_listen, METRICS_PATHS),
        ):
            if address is None:
                continue
            host, port = address if isinstance(address, tuple) else _address(address)
            try:
                self.admin_servers.append(await start_admin(self.admin, host, port, only))
            except OSError as exc:
                print(f"error: cannot listen on {name} {host}:{port}: {exc.strerror}", file=sys.stderr)
                return False
            self.admin_addresses.append(f"{name} {host}:{port}")
        return True

    async def stop_admin_ports(self) -> None:
        while self.admin_servers:
            await self.admin_servers.pop().cleanup()

    def _entrance(self, http: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """Every connection on --listen meets the entrance first (sidecar/inbound.py)."""
        from meshgate.sidecar.inbound import Entrance

        args = self.args

        def h2() -> asyncio.Protocol:
            from meshgate.sidecar.grpc_server import DownstreamConn

            return DownstreamConn(self._relay())

        self.entrance = Entrance(http, h2, args.http_ports, args.opaque_ports, args.detect_timeout_ms / 1000)
        self.admin.inbound = self.entrance.counts
        return self.entrance.factory

    def _relay(self) -> GrpcRelay:
        """The HTTP/2 relay, made on first use: the --grpc-listen port and h2 on --listen share it."""
        if self.admin.grpc is None:
            from meshgate.sidecar.grpc_server import GrpcRelay

            loop = asyncio.get_running_loop()
            self.admin.grpc = GrpcRelay(self.holder, loop, self.http.telemetry, self.metrics)
            if self.entrance is not None:  # REST over h2c is served by the HTTP/1.1 listener
                self.admin.grpc.http = self.entrance.http
        return self.admin.grpc

    async def _start_grpc(self) -> bool:
        from meshgate.sidecar.grpc_server import serve_grpc

        ghost, gport = self.args.grpc_listen
        self.grpc_server, _, bound = await serve_grpc(
            self.holder, ghost, gport, self.http.telemetry, self.metrics, self._relay()
        )
        if not bound:
            print(f"error: cannot listen for gRPC on {ghost}:{gport}", file=sys.stderr)
        return bool(bound)

    def signalled(self) -> None:
        """SIGTERM or SIGINT: the drain window begins (/ready 503 at once); a second one ends it."""
        if self.drain is not None:
            self.drain.cut.set()
            return
        log.info("draining (up to %.1fs)", self.args.drain_seconds)
        grpc_server = self.grpc_server
        if grpc_server is None and self.admin.grpc is not None:  # h2 came in on --listen only
            from meshgate.sidecar.grpc_server import GrpcServer

            grpc_server = GrpcServer(self.admin.grpc, None)
        self.drain = Drain(self.http, self.args.drain_seconds, grpc_server)
        self.drain.begin()

    async def stop(self) -> None:
        if self.drain is None:
            self.signalled()
        assert self.drain is not None
        self.client.stop()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.drain.run()
        if self.admin.grpc is not None:
            await self.admin.grpc.channels.close()
        self.pool.close()
        await self.runtime.close()
        if self.http.telemetry is not None:
            self.http.telemetry.shutdown()
        if self.exporter is not None:
            await self.exporter.stop()  # one last export: what happened while draining counts too
        await self.stop_admin_ports()  # last: /ready says "draining" until the end


async def run(args: argparse.Namespace) -> int:
    try:
        cache_key = load_key(args.cache_key_file)
    except (OSError, ValueError) as exc:
        print(f"error: cache key: {exc}", file=sys.stderr)
        return 1
    sidecar = _Sidecar(args, Runtime(state_dir=args.state_dir, cache_key=cache_key))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if sidecar.serving:  # (a signal during start-up is handled once start is done)
            sidecar.signalled()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):  # before "listening" is printed: a SIGTERM then drains
        loop.add_signal_handler(sig, on_signal)
    if not await sidecar.start():
        await sidecar.stop_admin_ports()
        return 1
    # Everything allocated so far lives as long as the process: keep the GC from re-scanning it
    # on every collection of the per-request garbage.
    release_memory()
    gc.freeze()
    await stop.wait()
    await sidecar.stop()
    return 0


def release_memory() -> None:
    """Collect, then give the C heap's free pages back to the system (glibc's malloc_trim): start-up
    and a snapshot's compilation free more than an idle sidecar keeps (0.8 MiB of 20 with 100
    routes, docs/benchmarks.md). Elsewhere than glibc, collecting is all."""
    gc.collect()
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        return uvloop.run(run(args))
    except ImportError:
        return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
