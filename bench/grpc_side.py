"""gRPC unary side by side: no proxy, Envoy, nginx and meshgate, each proxy pinned to one core.

The upstream is a grpc.aio echo service (`bench.Echo/Echo`, raw bytes); the load is h2load
(`nghttp2-client`), `-c4 -m16` (64 calls in flight), 64-byte messages. Each proxy under test runs
alone on core 0 (`taskset -c 0`, Envoy with `--concurrency 1`, nginx with one worker); h2load and the
upstream share core 1. Rounds alternate between the targets so all see the same machine; the median
of the rounds is reported, with ratios against Envoy. `--base REV` adds that revision's sidecar.

Usage: python bench/grpc_side.py [--duration 5] [--rounds 3] [--base REV]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b
from ab import ROOT, view_of
from google.protobuf import json_format
from protocols import UPSTREAMS

PROXY_CORE, LOAD_CORE = "0", "1"

ENVOY = """
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 29s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""

NGINX = """
worker_processes 1;
daemon off;
error_log {dir}/nginx-grpc-error.log warn;
pid {dir}/nginx-grpc.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    upstream grpc_up {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ grpc_pass grpc://grpc_up; }}
    }}
}}
"""


def snapshot(upstream: int) -> dict[str, object]:
    spec = {
        "routes": [
            {
                "method": "POST",
                "path": "/bench.Echo/{m}",
                "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{upstream}"},
            }
        ]
    }
    return {
        "version": "grpc-bench",
        "stages": [
            {
                "api": {"metadata": {"name": "bench", "namespace": "default"}, "spec": spec},
                "stage": {
                    "metadata": {"name": "prod", "namespace": "default"},
                    "spec": {
                        "api": "bench",
                        "deployment": 1,
                        "throttling": {"rateLimit": 1e7, "burstLimit": 10**6},
                    },
                },
                "deployment": {"id": 1, "spec": {"api": "bench", "apiSpec": spec}},
            }
        ],
    }


def h2load(port: int, body: Path, seconds: int) -> float:
    cmd = ["taskset", "-c", LOAD_CORE, "h2load", "-D", str(seconds), "-c4", "-m16", "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/bench.Echo/Echo"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    done = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    if not done or not ok or not failed:
        raise RuntimeError(f"could not parse h2load output:\n{out}")
    if int(failed.group(1)) or int(failed.group(2)):
        raise RuntimeError(f"h2load saw failed requests:\n{out}")
    return float(done.group(1))


def check_call(port: int) -> None:
    """One real gRPC call (status in the trailers, which h2load does not read)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert ch.unary_unary("/bench.Echo/Echo")(b"ping", timeout=20, wait_for_ready=True) == b"ping"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds per h2load run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--base", help="also run this git revision's sidecar")
    ns = p.parse_args()
    missing = [t for t in ("h2load", "taskset", "nginx") if shutil.which(t) is None]
    if missing or not (Path(sys.executable).parent / "envoy").exists():
        print(f"error: needs h2load, taskset, nginx and the bench extra's envoy ({missing})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="meshgate-grpc-") as t:
        work = Path(t)
        try:
            view = view_of(ns.base, work) if ns.base else None
            return compare(ns, work, view)
        finally:
            if ns.base:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "tree")])


def compare(ns: argparse.Namespace, work: Path, view: Path | None) -> int:
    upstream = b.free_port()
    body = work / "req.bin"
    body.write_bytes(struct.pack(">BL", 0, 64) + b"x" * 64)
    (work / "up.py").write_text(UPSTREAMS)
    pin = ["taskset", "-c", PROXY_CORE]
    procs = [
        b.start(
            ["taskset", "-c", LOAD_CORE, sys.executable, str(work / "up.py"), "0", str(upstream)],
            work / "up.log",
        )
    ]
    ports = {"direct": upstream}
    envoy_port, nginx_port = b.free_port(), b.free_port()
    (work / "envoy.yaml").write_text(ENVOY.format(port=envoy_port, upstream=upstream, admin=b.free_port()))
    envoy = Path(sys.executable).parent / "envoy"
    procs.append(
        b.start(
            [*pin, str(envoy), "-c", str(work / "envoy.yaml"), "--concurrency", "1", "-l", "error"],
            work / "envoy.log",
        )
    )
    ports["envoy"] = envoy_port
    (work / "nginx.conf").write_text(NGINX.format(dir=work, port=nginx_port, upstream=upstream))
    procs.append(
        b.start([*pin, "nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], work / "nginx.log")
    )
    ports["nginx"] = nginx_port
    snap = work / "snap.json"
    from meshgate.v1 import control_pb2

    snap.write_text(
        json_format.MessageToJson(json_format.ParseDict(snapshot(upstream), control_pb2.Snapshot()))
    )
    sides = [("meshgate", {})] + ([("meshgate-base", {"PYTHONPATH": str(view)})] if view else [])
    admins = []
    for name, env in sides:
        port, admin, gport = b.free_port(), b.free_port(), b.free_port()
        cmd = [*pin, *b.sidecar_cmd(snap, port, admin, "--grpc-listen", f"127.0.0.1:{gport}")]
        with (work / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, cwd=work, stdout=log, stderr=log))
        ports[name] = gport
        admins.append(admin)
    try:
        for admin in admins:
            b.wait_http(f"http://127.0.0.1:{admin}/ready")
        for name, port in ports.items():
            print(f"checking {name}", flush=True)
            check_call(port)
            h2load(port, body, 1)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in ports}
        for _ in range(ns.rounds):
            for name, port in ports.items():
                runs[name].append(h2load(port, body, ns.duration))
        med = {name: statistics.median(v) for name, v in runs.items()}
        print(
            f"gRPC unary, h2load -c4 -m16, 64 B; proxies on core {PROXY_CORE}; median of {ns.rounds} x {ns.duration}s"
        )
        print(f"{'target':14s} {'calls/s':>9s}  {'/envoy':>7s}  {'/direct':>7s}   runs")
        for name, value in med.items():
            each = " ".join(f"{v:.0f}" for v in runs[name])
            print(
                f"{name:14s} {value:9.0f}  {value / med['envoy']:6.2f}x  {value / med['direct']:6.2f}x   {each}"
            )
    finally:
        for proc in procs:
            b.stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
