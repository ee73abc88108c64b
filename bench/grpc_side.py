"""gRPC unary side by side: no proxy, Envoy, nginx and meshgate, each proxy pinned to one core.

Two upstreams, one after the other: nginx answering every call from a static file (fast: the
proxies are what is measured) and a grpc.aio echo service (an app as it would be). The load is h2load
(`nghttp2-client`), `-c4 -m16` (64 calls in flight), 64-byte messages. Each proxy under test runs
alone on core 0 (`taskset -c 0`, Envoy with `--concurrency 1`, nginx as one process); h2load and the
upstream share core 1. Rounds alternate between the targets so all see the same machine; medians
are reported with ratios against Envoy: calls/s, and the proxy's CPU time per 1,000 calls (from
/proc/PID/stat: what a pod pays, and steady even when the machine is busy). `--base REV` adds that
revision's sidecar.

Usage: python bench/grpc_side.py [--duration 5] [--rounds 3] [--base REV] [--upstream nginx|grpcio]
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
import envoy
import run as b
from ab import ROOT, view_of
from google.protobuf import json_format
from protocols import UPSTREAMS

PROXY_CORE, LOAD_CORE = "0", "1"

NGINX = """
master_process off;
daemon off;
error_log {dir}/nginx-grpc-error.log warn;
pid {dir}/nginx-grpc.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    http2_max_requests 100000000;
    keepalive_requests 100000000;
    upstream grpc_up {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ grpc_pass grpc://grpc_up; }}
    }}
}}
"""

# The fast upstream: nginx answering every call with one 64-byte message and grpc-status 0 (a static
# file, its trailers added), so the proxies in front of it are what is measured.
NGINX_UPSTREAM = """
master_process off;
daemon off;
error_log {dir}/nginx-up-error.log warn;
pid {dir}/nginx-up.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    http2_max_requests 100000000;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} http2;
        root {dir}/www;
        location / {{
            default_type application/grpc;
            error_page 405 =200 $uri;
            add_trailer grpc-status 0 always;
        }}
    }}
}}
"""
REPLY = struct.pack(">BL", 0, 64) + b"y" * 64


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


def h2load(port: int, body: Path, seconds: int) -> tuple[float, int, int]:
    """(calls/s, calls done, calls failed) of one h2load run."""
    cmd = ["taskset", "-c", LOAD_CORE, "h2load", "-D", str(seconds), "-c4", "-m16", "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/bench.Echo/Echo"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    done = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored", out
    )
    if not done or not counts:
        raise RuntimeError(f"could not parse h2load output:\n{out}")
    return float(done.group(1)), int(counts.group(1)), int(counts.group(2)) + int(counts.group(3))


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def check_call(port: int) -> None:
    """One real gRPC call (status in the trailers, which h2load does not read)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        answer = ch.unary_unary("/bench.Echo/Echo")(b"ping", timeout=20, wait_for_ready=True)
        assert answer in (b"ping", REPLY[5:]), answer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds per h2load run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--base", help="also run this git revision's sidecar")
    p.add_argument(
        "--upstream",
        action="append",
        choices=["nginx", "grpcio"],
        help="the upstream behind the proxies: nginx (fast, the proxies are measured) and/or grpcio "
        "(a Python gRPC service, as an app would be); both by default",
    )
    ns = p.parse_args()
    ns.upstream = ns.upstream or ["nginx", "grpcio"]
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
    body = work / "req.bin"
    body.write_bytes(struct.pack(">BL", 0, 64) + b"x" * 64)
    (work / "www" / "bench.Echo").mkdir(parents=True)
    (work / "www" / "bench.Echo" / "Echo").write_bytes(REPLY)
    (work / "up.py").write_text(UPSTREAMS)
    for kind in ns.upstream:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            targets = start_targets(kind, work, view, procs)
            report(kind, measure(ns, body, targets), ns)
        finally:
            for proc in procs:
                b.stop(proc)
    return 0


def start_targets(
    kind: str, work: Path, view: Path | None, procs: list[subprocess.Popen[bytes]]
) -> dict[str, tuple[int, int]]:
    """Upstream and proxies, each started pinned: {name: (port, pid of the proxy or 0)}."""
    upstream = b.free_port()
    load = ["taskset", "-c", LOAD_CORE]
    if kind == "nginx":
        (work / "up.conf").write_text(NGINX_UPSTREAM.format(dir=work, port=upstream))
        up = [*load, "nginx", "-c", str(work / "up.conf"), "-p", str(work)]
    else:
        up = [*load, sys.executable, str(work / "up.py"), "0", str(upstream)]
    procs.append(b.start(up, work / f"up-{kind}.log"))
    pin = ["taskset", "-c", PROXY_CORE]
    targets = {"direct": (upstream, 0)}
    port = b.free_port()
    conf = work / "envoy.json"
    conf.write_text(envoy.config(port, b.free_port(), upstream, http2_upstream=True))
    procs.append(b.start([*pin, *envoy.command(conf)], work / "envoy.log"))
    targets["envoy"] = (port, procs[-1].pid)
    port = b.free_port()
    (work / "nginx.conf").write_text(NGINX.format(dir=work, port=port, upstream=upstream))
    procs.append(
        b.start([*pin, "nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], work / "nginx.log")
    )
    targets["nginx"] = (port, procs[-1].pid)
    from meshgate.v1 import control_pb2

    snap = work / f"snap-{kind}.json"
    snap.write_text(
        json_format.MessageToJson(json_format.ParseDict(snapshot(upstream), control_pb2.Snapshot()))
    )
    sides = [("meshgate", {})] + ([("meshgate-base", {"PYTHONPATH": str(view)})] if view else [])
    for name, env in sides:
        port, admin, gport = b.free_port(), b.free_port(), b.free_port()
        cmd = [*pin, *b.sidecar_cmd(snap, port, admin, "--grpc-listen", f"127.0.0.1:{gport}")]
        with (work / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, cwd=work, stdout=log, stderr=log))
        targets[name] = (gport, procs[-1].pid)
        b.wait_http(f"http://127.0.0.1:{admin}/ready")
    return targets


def measure(
    ns: argparse.Namespace, body: Path, targets: dict[str, tuple[int, int]]
) -> dict[str, list[tuple[float, float]]]:
    """Rounds alternating between the targets: (calls/s, proxy CPU ms per 1,000 calls) each."""
    for port, _ in targets.values():
        check_call(port)
        h2load(port, body, 1)  # warm-up
    hz = os.sysconf("SC_CLK_TCK")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(ns.rounds):
        for name, (port, pid) in targets.items():
            before = cpu_ticks(pid) if pid else 0
            rate, calls, failed = h2load(port, body, ns.duration)
            cpu = (cpu_ticks(pid) - before) * 1000 / hz / (calls / 1000) if pid else float("nan")
            runs[name].append((rate, cpu))
            if failed:
                print(f"  ({name}: {failed} of {calls + failed} calls failed in a round)", flush=True)
    return runs


def report(kind: str, runs: dict[str, list[tuple[float, float]]], ns: argparse.Namespace) -> None:
    rate = {n: statistics.median(r for r, _ in v) for n, v in runs.items()}
    cpu = {n: statistics.median(c for _, c in v) for n, v in runs.items()}
    upstream = "nginx (a static gRPC answer)" if kind == "nginx" else "grpc.aio echo"
    print(f"\ngRPC unary through each proxy to {upstream}: h2load -c4 -m16, 64 B messages;")
    print(
        f"proxies pinned to core {PROXY_CORE}, h2load and the upstream to core {LOAD_CORE}; median of {ns.rounds} x {ns.duration}s"
    )
    print(
        f"{'target':14s} {'calls/s':>9s} {'/envoy':>7s} {'/direct':>8s} {'CPU ms/1k':>10s} {'/envoy':>7s}   calls/s per round"
    )
    for name in runs:
        each = " ".join(f"{r:.0f}" for r, _ in runs[name])
        c = (
            f"{cpu[name]:10.1f} {cpu[name] / cpu['envoy']:6.2f}x"
            if name != "direct"
            else f"{'-':>10s} {'':7s}"
        )
        print(
            f"{name:14s} {rate[name]:9.0f} {rate[name] / rate['envoy']:6.2f}x {rate[name] / rate['direct']:7.2f}x {c}   {each}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
