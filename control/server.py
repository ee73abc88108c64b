"""Running the control service: the gRPC server, its store and streamer, and `meshgate control`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from meshgate.control.etcd_local import EtcdNotFound, LocalEtcd
from meshgate.control.service import ControlServicer
from meshgate.control.store import Store
from meshgate.control.stream import ConfigStreamer
from meshgate.v1 import control_pb2_grpc

log = logging.getLogger("meshgate.control")

# Private address space: where Kubernetes pod and service networks live unless told otherwise.
DEFAULT_CLUSTER_CIDRS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")


@dataclass
class ControlServer:
    server: grpc.aio.Server
    store: Store
    streamer: ConfigStreamer
    port: int
    control_id: str

    async def stop(self, grace: float = 1.0) -> None:
        await self.streamer.stop()
        await self.server.stop(grace)
        await self.store.close()


async def start_control(
    etcd_endpoint: str,
    *,
    host: str = "127.0.0.1",
    port: int = 7070,
    prefix: str = "/meshgate/",
    control_id: str | None = None,
    debounce_s: float = 0.005,
    max_delay_s: float = 0.05,
    cluster_cidrs: tuple[str, ...] = DEFAULT_CLUSTER_CIDRS,
) -> ControlServer:
    control_id = control_id or f"{socket.gethostname()}-{os.getpid()}"
    store = Store(etcd_endpoint, prefix, cluster_cidrs=cluster_cidrs)
    await store.open()
    try:
        await asyncio.wait_for(store.load_state(), 10)
    except Exception as exc:
        await store.close()
        raise ConnectionError(f"etcd at {etcd_endpoint} unreachable: {type(exc).__name__}") from None
    streamer = ConfigStreamer(
        store, control_id, debounce_s=debounce_s, max_delay_s=max_delay_s, cluster_cidrs=cluster_cidrs
    )
    await streamer.start()
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    control_pb2_grpc.add_ControlServiceServicer_to_server(ControlServicer(store, streamer), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        await streamer.stop()
        await store.close()
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return ControlServer(server, store, streamer, bound, control_id)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"error: --listen must be HOST:PORT, got {address!r}")
    return host or "0.0.0.0", int(port)


async def _serve(args: argparse.Namespace, etcd_endpoint: str) -> int:
    host, port = _split(args.listen)
    try:
        ctl = await start_control(
            etcd_endpoint,
            host=host,
            port=port,
            prefix=args.prefix,
            control_id=args.id,
            cluster_cidrs=tuple(args.cluster_cidr or DEFAULT_CLUSTER_CIDRS),
        )
    except (ConnectionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    metrics_runner = None
    if args.metrics_listen:
        from aiohttp import web

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=ctl.streamer.metrics_text(), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        metrics_runner = web.AppRunner(app, access_log=None)
        await metrics_runner.setup()
        mhost, mport = _split(args.metrics_listen)
        await web.TCPSite(metrics_runner, mhost, mport).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"meshgate control {ctl.control_id} listening on {host}:{ctl.port} "
        f"(etcd {etcd_endpoint}, prefix {args.prefix})",
        flush=True,
    )
    await stop.wait()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await ctl.stop()
    return 0


def run_control(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meshgate control", description="Run the meshgate control service.")
    parser.add_argument("--etcd", help="etcd endpoint HOST:PORT (default: start a private etcd on loopback)")
    parser.add_argument("--data-dir", help="data dir of the private etcd (default: a temp dir)")
    parser.add_argument("--listen", default="127.0.0.1:7070", help="gRPC address (default %(default)s)")
    parser.add_argument("--prefix", default="/meshgate/", help="etcd key prefix (default %(default)s)")
    parser.add_argument(
        "--cluster-cidr",
        action="append",
        help="pod/service network (repeatable): what private Apis accept as 'inside the cluster' "
        f"(default {', '.join(DEFAULT_CLUSTER_CIDRS)})",
    )
    parser.add_argument("--id", default=None, help="replica id (default hostname-pid)")
    parser.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics of the control plane")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
