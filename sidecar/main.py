"""`meshgate sidecar`: wires the admin port, the persisted snapshot, the HTTP and gRPC listeners,
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

from google.protobuf import json_format
from meshgate.sidecar.accesslog import AccessLog
from meshgate.sidecar.admin import AdminState, start_admin
from meshgate.sidecar.cache import load_key
from meshgate.sidecar.config_client import ConfigClient
from meshgate.sidecar.http1 import HttpServer, Limits, serve_http
from meshgate.sidecar.metrics import Metrics
from meshgate.sidecar.routing import TableHolder, compile_snapshot
from meshgate.sidecar.runtime import Runtime
from meshgate.sidecar.telemetry import Telemetry
from meshgate.sidecar.upstream import UpstreamPool
from meshgate.sidecar.wsapi import Registry
from meshgate.v1 import control_pb2

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


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="meshgate sidecar", description="Run a meshgate sidecar.")
    p.add_argument(
        "--control", default=env.get("MESHGATE_CONTROL", "127.0.0.1:7070"), help="control HOST:PORT"
    )
    p.add_argument(
        "--listen", type=_address, default="0.0.0.0:15001", help="HTTP listener (default %(default)s)"
    )
    p.add_argument(
        "--admin", type=_address, default="127.0.0.1:15000", help="admin port (default %(default)s)"
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
    p.add_argument(
        "--otlp-endpoint",
        default=env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="OTLP/gRPC collector for traces and metrics, e.g. jaeger:4317 "
        "(env OTEL_EXPORTER_OTLP_ENDPOINT; default: off)",
    )
    p.add_argument(
        "--otlp-metrics-endpoint",
        default=env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        help="OTLP/gRPC collector for metrics only (env OTEL_EXPORTER_OTLP_METRICS_ENDPOINT; "
        "default: --otlp-endpoint)",
    )
    p.add_argument(
        "--otlp-metrics-interval",
        type=float,
        default=10.0,
        help="seconds between OTLP metrics exports; 0 turns them off (default %(default)s)",
    )
    p.add_argument("--state-dir", type=Path, help="where the last good snapshot is kept")
    p.add_argument("--snapshot-file", type=Path, help="serve this Snapshot (JSON) with no control connection")
    p.add_argument(
        "--cache-key-file",
        help="32-byte key for encrypted stage caches (raw, hex or base64; or env MESHGATE_CACHE_KEY)",
    )
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    p.add_argument("--drain-seconds", type=float, default=5.0)
    p.add_argument("--log-level", default="info")
    return p


async def run(args: argparse.Namespace) -> int:
    holder = TableHolder()
    try:
        cache_key = load_key(args.cache_key_file)
    except (OSError, ValueError) as exc:
        print(f"error: cache key: {exc}", file=sys.stderr)
        return 1
    runtime = Runtime(state_dir=args.state_dir, cache_key=cache_key)

    def apply(snap: control_pb2.Snapshot) -> None:
        holder.table = compile_snapshot(snap, runtime)  # build first; assignment is the atomic swap

    node = control_pb2.Node(
        id=args.node_id, pod=args.pod or args.node_id, namespace=args.namespace, labels=_labels(args.label)
    )
    client = ConfigClient(args.control, node, apply, state_dir=args.state_dir)
    listen_host, listen_port = args.listen if isinstance(args.listen, tuple) else _address(args.listen)
    admin_host, admin_port = args.admin if isinstance(args.admin, tuple) else _address(args.admin)
    pool = UpstreamPool()
    http_server = HttpServer()
    metrics = http_server.metrics = Metrics()
    http_server.access_log = AccessLog()
    admin = AdminState(client, holder, args.node_id, metrics, http_server, pool, runtime)
    try:
        runner = await start_admin(admin, admin_host, admin_port)
    except OSError as exc:
        print(f"error: cannot listen on admin {admin_host}:{admin_port}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.snapshot_file is not None:
        try:
            snap = json_format.Parse(args.snapshot_file.read_text(), control_pb2.Snapshot())
            client.apply_local(snap, "file")
        except Exception as exc:
            print(f"error: {args.snapshot_file}: {exc}", file=sys.stderr)
            await runner.cleanup()
            return 1
    else:
        persisted = client.load_persisted()
        if persisted is not None:
            try:
                client.apply_local(persisted, "persisted")
                log.info("serving persisted snapshot %s until control answers", persisted.version)
            except Exception as exc:
                log.warning("persisted snapshot cannot be applied: %s", exc)
    advertise = (
        args.advertise
        or f"{listen_host if listen_host not in ('0.0.0.0', '::', '') else socket.gethostbyname(socket.gethostname())}:{listen_port}"
    )
    http_server.registry = Registry(advertise)
    http_server.telemetry = Telemetry(args.otlp_endpoint, args.node_id) if args.otlp_endpoint else None
    http_server.session = runtime.session
    try:
        await serve_http(
            holder,
            listen_host,
            listen_port,
            limits=Limits(max_body_bytes=args.max_body_bytes),
            pool=pool,
            http_server=http_server,
        )
    except OSError as exc:
        print(f"error: cannot listen on {listen_host}:{listen_port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    grpc_server = None
    if args.grpc_listen:
        from meshgate.sidecar.grpc_proxy import serve_grpc

        ghost, gport = args.grpc_listen
        grpc_server, grpc_proxy, bound = await serve_grpc(
            holder, ghost, gport, http_server.telemetry, metrics
        )
        admin.grpc = grpc_proxy
        if not bound:
            print(f"error: cannot listen for gRPC on {ghost}:{gport}", file=sys.stderr)
            await runner.cleanup()
            return 1
    metrics_endpoint = args.otlp_metrics_endpoint or args.otlp_endpoint
    exporter = None
    if metrics_endpoint and args.otlp_metrics_interval > 0:
        from meshgate.sidecar.otlp_metrics import OtlpMetricsExporter

        exporter = OtlpMetricsExporter(
            metrics_endpoint,
            "meshgate-sidecar",
            args.node_id,
            metrics.families,
            interval_s=args.otlp_metrics_interval,
        )
        exporter.start()
        admin.otlp_metrics = exporter
    task = None if args.snapshot_file is not None else asyncio.create_task(client.run())
    source = f"snapshot file {args.snapshot_file}" if args.snapshot_file else f"control {args.control}"
    print(
        f"meshgate sidecar {args.node_id} listening on {listen_host}:{listen_port} "
        f"(admin {admin_host}:{admin_port}, {source})",
        flush=True,
    )
    # Everything allocated so far lives as long as the process: keep the GC from re-scanning it
    # on every collection of the per-request garbage.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (up to %.1fs)", args.drain_seconds)
    client.stop()
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await http_server.drain(args.drain_seconds)
    if grpc_server is not None:
        await grpc_server.stop(min(args.drain_seconds, 2.0))
        await grpc_proxy.channels.close()
    pool.close()
    await runtime.close()
    if http_server.telemetry is not None:
        http_server.telemetry.shutdown()
    if exporter is not None:
        await exporter.stop()  # one last export: what happened while draining counts too
    await runner.cleanup()
    return 0


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
