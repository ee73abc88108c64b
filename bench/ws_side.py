"""WebSocket echo side by side: no proxy, Envoy and meshgate, each proxy pinned to one core.

The upstream is a python-websockets echo server; the load is 8 connections each sending a 64-byte
message and reading its echo in turn (`protocols.ws_rate`). The proxy under test runs alone on core
0; the client and the upstream share core 1. Rounds alternate; medians of messages/s and of the
proxy's CPU per 1,000 messages, with ratios against Envoy.

Usage: python bench/ws_side.py [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import envoy
import run as b
from google.protobuf import json_format
from grpc_side import LOAD_CORE, PROXY_CORE, cpu_ticks
from protocols import UPSTREAMS, ws_rate


def snapshot(upstream: int) -> dict[str, object]:
    spec = {
        "routes": [
            {
                "method": "GET",
                "path": "/ws",
                "integration": {"type": "websocket", "uri": f"ws://127.0.0.1:{upstream}/"},
            }
        ]
    }
    stage = {"api": "bench", "deployment": 1, "throttling": {"rateLimit": 1e7, "burstLimit": 10**6}}
    return {
        "version": "ws-bench",
        "stages": [
            {
                "api": {"metadata": {"name": "bench", "namespace": "default"}, "spec": spec},
                "stage": {"metadata": {"name": "prod", "namespace": "default"}, "spec": stage},
                "deployment": {"id": 1, "spec": {"api": "bench", "apiSpec": spec}},
            }
        ],
    }


def rate(url: str, seconds: int) -> float:
    """One client run on the load core (a process of its own, so pinning holds)."""
    code = (
        "import asyncio, sys; sys.path.insert(0, sys.argv[1]); from protocols import ws_rate; "
        "print(asyncio.run(ws_rate(sys.argv[2], float(sys.argv[3]))))"
    )
    here = str(Path(__file__).resolve().parent)
    cmd = ["taskset", "-c", LOAD_CORE, sys.executable, "-c", code, here, url, str(seconds)]
    return float(subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshgate-ws-") as t:
        work = Path(t)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            up = b.free_port()
            (work / "up.py").write_text(UPSTREAMS)
            procs.append(
                b.start(
                    ["taskset", "-c", LOAD_CORE, sys.executable, str(work / "up.py"), str(up), "0"],
                    work / "up.log",
                )
            )
            pin = ["taskset", "-c", PROXY_CORE]
            port, admin = b.free_port(), b.free_port()
            conf = work / "envoy.json"
            conf.write_text(
                envoy.config(port, admin, up, prefix="/prod/ws", rewrite="/", timeout="0s", websocket=True)
            )
            procs.append(b.start([*pin, *envoy.command(conf)], work / "envoy.log"))
            targets = {
                "direct": (f"ws://127.0.0.1:{up}/", 0),
                "envoy": (f"ws://127.0.0.1:{port}/prod/ws", procs[-1].pid),
            }
            from meshgate.v1 import control_pb2

            snap = work / "snap.json"
            snap.write_text(
                json_format.MessageToJson(json_format.ParseDict(snapshot(up), control_pb2.Snapshot()))
            )
            port, admin = b.free_port(), b.free_port()
            procs.append(b.start([*pin, *b.sidecar_cmd(snap, port, admin)], work / "sidecar.log"))
            b.wait_http(f"http://127.0.0.1:{admin}/ready")
            targets["meshgate"] = (f"ws://127.0.0.1:{port}/prod/ws", procs[-1].pid)
            for url, _ in targets.values():
                asyncio.run(ws_rate(url, 1))  # warm-up (and a check that it echoes)
            hz = os.sysconf("SC_CLK_TCK")
            runs: dict[str, list[tuple[float, float]]] = {n: [] for n in targets}
            for _ in range(ns.rounds):
                for name, (url, pid) in targets.items():
                    before = cpu_ticks(pid) if pid else 0
                    r = rate(url, ns.duration)
                    cpu = (
                        (cpu_ticks(pid) - before) * 1000 / hz / (r * ns.duration / 1000)
                        if pid
                        else float("nan")
                    )
                    runs[name].append((r, cpu))
        finally:
            for proc in procs:
                b.stop(proc)
    med = {
        n: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for n, v in runs.items()
    }
    print(
        f"\nWebSocket echo, 8 connections, 64 B in turn; proxies on core {PROXY_CORE}; median of {ns.rounds} x {ns.duration}s"
    )
    print(f"{'target':10s} {'msgs/s':>9s} {'vs Envoy':>9s} {'CPU ms/1k':>10s} {'vs Envoy':>9s}")
    for name, (r, c) in med.items():
        cpu = f"{c:10.1f} {med['envoy'][1] / c:8.2f}x" if name != "direct" else f"{'-':>10s}"
        print(f"{name:10s} {r:9.0f} {r / med['envoy'][0]:8.2f}x {cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
