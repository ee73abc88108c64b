"""HTTP/1.1 side by side with Envoy: no proxy, Envoy, nginx and meshgate, each proxy on its own core.

Every proxy under test runs alone on core 0 (`taskset -c 0`; Envoy `--concurrency 1`, nginx one
worker, meshgate one process); wrk and the nginx backend (12-byte answers) share core 1. Cases:
a plain GET, and the feature tax — the same GET behind a JWT check (RS256 against a local JWKS)
and a rate limit, in both Envoy (`jwt_authn` + `local_ratelimit`) and meshgate (a JWT authorizer
and a route limit). Rounds alternate between the targets; medians of req/s and of the proxy's CPU
time per 1,000 requests (/proc/PID/stat), ratios against Envoy. Then latency at fixed rates
(1,000 and 5,000 req/s: p50/p99/p99.9 and what each proxy adds to direct), and idle memory: RSS
split into total and private (RssAnon) for Envoy and for sidecars with 100 routes (plain, and with
the bench's features).

Usage: python bench/http_side.py [--duration 5] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy
import footprint
import run as b
from google.protobuf import json_format
from grpc_side import LOAD_CORE, PROXY_CORE, cpu_ticks


def start_targets(work: Path, procs: list[subprocess.Popen[bytes]]) -> tuple[dict[str, tuple[str, int]], str]:
    """{name: (base URL, proxy pid or 0)} and the bench token."""
    backend = b.free_port()
    jwks, token = b.make_idp()
    (work / "body").mkdir()
    (work / "backend.conf").write_text(b.NGINX_BACKEND.format(dir=work, port=backend, jwks=jwks))
    load, pin = ["taskset", "-c", LOAD_CORE], ["taskset", "-c", PROXY_CORE]
    procs.append(
        b.start([*load, "nginx", "-c", str(work / "backend.conf"), "-p", str(work)], work / "be.log")
    )
    targets = {"direct": (f"http://127.0.0.1:{backend}/prod", 0)}
    for name, filters in (("envoy", ()), ("envoy+jwt+limit", envoy.jwt_and_limit(jwks))):
        port = b.free_port()
        conf = work / f"{name}.json"
        conf.write_text(
            envoy.config(port, b.free_port(), backend, prefix="/prod/", rewrite="/", filters=filters)
        )
        procs.append(b.start([*pin, *envoy.command(conf)], work / f"{name}.log"))
        targets[name] = (f"http://127.0.0.1:{port}/prod", procs[-1].pid)
    port = b.free_port()
    (work / "proxy.conf").write_text(b.NGINX_PROXY.format(dir=work, port=port, backend=backend))
    procs.append(b.start([*pin, "nginx", "-c", str(work / "proxy.conf"), "-p", str(work)], work / "px.log"))
    targets["nginx"] = (f"http://127.0.0.1:{port}/prod", _nginx_worker(procs[-1].pid))
    for name, jwt in (("meshgate", False), ("meshgate+jwt+limit", True)):
        snap = work / f"{name}.json"
        snap.write_text(json_format.MessageToJson(b.bench_snapshot(backend, jwt=jwt)))
        port, admin = b.free_port(), b.free_port()
        procs.append(b.start([*pin, *b.sidecar_cmd(snap, port, admin)], work / f"{name}.log"))
        b.wait_http(f"http://127.0.0.1:{admin}/ready")
        targets[name] = (f"http://127.0.0.1:{port}/prod", procs[-1].pid)
    b.wait_http(f"http://127.0.0.1:{backend}/hello")
    return targets, token


def wait_up(url: str, limit_s: float = 20.0) -> None:
    """Until the port answers at all (a 401 counts: the JWT routes refuse a request without a token)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + limit_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _nginx_worker(master: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{master}/task/{master}/children")
        if kids.exists() and kids.read_text().split():
            return int(kids.read_text().split()[0])
        time.sleep(0.05)
    return master


def measure(
    ns: argparse.Namespace, targets: dict[str, tuple[str, int]], token: str
) -> dict[str, list[tuple[float, float]]]:
    auth = f"Authorization: Bearer {token}"
    header = {n: (auth if "jwt" in n else None) for n in targets}
    for name, (base, _) in targets.items():
        wait_up(base + "/hello")
        if "jwt" in name:
            b.check_jwt_route(base + "/hello", token)
        else:
            b.wait_http(base + "/hello")
        b.wrk(base + "/hello", 2, ns.connections, None, header[name])  # warm-up
    hz = os.sysconf("SC_CLK_TCK")
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in targets}
    for _ in range(ns.rounds):
        for name, (base, pid) in targets.items():
            before = cpu_ticks(pid) if pid else 0
            r = b.wrk(base + "/hello", ns.duration, ns.connections, None, header[name], pin=LOAD_CORE)
            requests = r["rps"] * ns.duration
            cpu = (cpu_ticks(pid) - before) * 1000 / hz / (requests / 1000) if pid else float("nan")
            runs[name].append((r["rps"], cpu))
    return runs


def latency(
    targets: dict[str, tuple[str, int]], rates: tuple[int, ...], seconds: int
) -> dict[int, dict[str, tuple[float, float, float]]]:
    """At fixed request rates (bench/openloop.py, open loop, on the load core): p50, p99 and p99.9
    in ms, counted from when each request was due."""
    out: dict[int, dict[str, tuple[float, float, float]]] = {}
    gen = str(Path(__file__).resolve().parent / "openloop.py")
    for rate in rates:
        out[rate] = {}
        for name, (base, _) in targets.items():
            if "jwt" in name:
                continue
            cmd = ["taskset", "-c", LOAD_CORE, sys.executable, gen, base + "/hello", str(rate), str(seconds)]
            res = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
            )
            out[rate][name] = (res["p50"], res["p99"], res["p999"])
    return out


def memory(work: Path) -> dict[str, dict[str, float]]:
    """Idle RSS and RssAnon (MiB): Envoy with the plain config; sidecars with 100 plain routes and with
    100 routes and the bench's features (`bench/footprint.py` measures them, and from control too)."""
    admin = b.free_port()
    conf = work / "envoy-idle.json"
    conf.write_text(envoy.config(b.free_port(), admin, 9, prefix="/prod/", rewrite="/"))
    proc = b.start(envoy.command(conf), work / "idle.log")
    try:
        b.wait_http(f"http://127.0.0.1:{admin}/ready")
        time.sleep(1.0)
        out = {"envoy": footprint.status(proc.pid)}
    finally:
        b.stop(proc)
    features = work / "rss-100.json"
    features.write_text(json_format.MessageToJson(b.bench_snapshot(9, extra_routes=98)))
    out["meshgate (100 routes)"] = footprint.from_file(footprint.plain_snapshot(work), work)
    out["meshgate (+ features)"] = footprint.from_file(features, work)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--rate", type=int, action="append", help="fixed request rates for latency (1000, 5000)")
    p.add_argument("--latency-seconds", type=int, default=10)
    ns = p.parse_args()
    ns.rate = ns.rate or [1000, 5000]
    with tempfile.TemporaryDirectory(prefix="meshgate-http-") as t:
        work = Path(t)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            targets, token = start_targets(work, procs)
            runs = measure(ns, targets, token)
            lat = latency(targets, tuple(ns.rate), ns.latency_seconds)
        finally:
            for proc in procs:
                b.stop(proc)
        mem = memory(work)
    rate = {n: statistics.median(r for r, _ in v) for n, v in runs.items()}
    cpu = {n: statistics.median(c for _, c in v) for n, v in runs.items()}
    print(
        f"\nHTTP/1.1 GET 12 B, wrk -t1 -c{ns.connections}; proxies on core {PROXY_CORE}, wrk + backend on core {LOAD_CORE};"
    )
    print(f"median of {ns.rounds} x {ns.duration}s")
    print(
        f"{'target':20s} {'req/s':>9s} {'vs Envoy':>9s} {'CPU ms/1k':>10s} {'vs Envoy':>9s}   req/s per round"
    )
    for name in runs:
        anchor = "envoy+jwt+limit" if "jwt" in name else "envoy"
        each = " ".join(f"{r:.0f}" for r, _ in runs[name])
        c = (
            f"{cpu[name]:10.1f} {cpu[anchor] / cpu[name]:8.2f}x"
            if name != "direct"
            else f"{'-':>10s} {'':9s}"
        )
        print(f"{name:20s} {rate[name]:9.0f} {rate[name] / rate[anchor]:8.2f}x {c}   {each}")
    print("(vs Envoy: req/s ratio; for CPU, Envoy's CPU per request / ours: above 1 is cheaper than Envoy)")
    for rate, by in lat.items():
        print(
            f"\nlatency at {rate} req/s (open loop, bench/openloop.py), ms: p50 / p99 / p99.9; added = minus direct"
        )
        d = by["direct"]
        for name, (p50, p99, p999) in by.items():
            added = (
                ""
                if name == "direct"
                else f"   added {p50 - d[0]:.2f} / {p99 - d[1]:.2f} / {p999 - d[2]:.2f}"
            )
            print(f"  {name:12s} {p50:6.2f} / {p99:6.2f} / {p999:6.2f}{added}")
    print("\nidle memory (MiB)        RSS  private (RssAnon)  file-backed (shared across pods on a node)")
    for name, m in mem.items():
        print(f"{name:22s} {m['VmRSS']:6.1f} {m['RssAnon']:10.1f} {m['RssFile']:12.1f}")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"runs": runs, "latency": lat, "memory": mem}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
