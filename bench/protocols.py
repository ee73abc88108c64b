"""WebSocket and gRPC through the sidecar vs direct, and memory per idle WebSocket connection.

Run by bench/run.py (section "protocols"); upstreams and the sidecar are
separate processes, the load comes from this process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

UPSTREAMS = r"""
import asyncio, sys
import grpc
from websockets.asyncio.server import serve

async def echo(ws):
    async for msg in ws:
        await ws.send(msg)

async def main():
    ws_port, grpc_port = int(sys.argv[1]), int(sys.argv[2])
    async def unary(req, ctx):
        return req
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(unary)}),))
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    async with serve(echo, "127.0.0.1", ws_port, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def ws_rate(url: str, seconds: float, conns: int = 8) -> float:
    from websockets.asyncio.client import connect

    count = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal count
        async with connect(url, ping_interval=None, max_size=None) as ws:
            while time.monotonic() < stop:
                await ws.send("x" * 64)
                await ws.recv()
                count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    return count / (time.monotonic() - t0)


async def grpc_rate(target: str, seconds: float, concurrency: int = 16) -> float:
    import grpc

    count = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary("/bench.Echo/Echo")

        async def one() -> None:
            nonlocal count
            while time.monotonic() < stop:
                await call(b"x" * 64, timeout=10)
                count += 1

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return count / (time.monotonic() - t0)


async def idle_ws(url: str, pid: int, n: int) -> dict[str, float]:
    from websockets.asyncio.client import connect

    before = rss_kib(pid)
    conns = []
    for i in range(0, n, 200):
        batch = await asyncio.gather(
            *(connect(url, ping_interval=None, open_timeout=30) for _ in range(min(200, n - i)))
        )
        conns.extend(batch)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    for c in conns:
        await c.close()
    return {
        "connections": float(n),
        "rss_before_kib": float(before),
        "rss_after_kib": float(after),
        "kib_per_connection": (after - before) / n,
    }


def run(
    work: Path,
    seconds: int,
    idle_connections: int,
    free_port: Any,
    start: Any,
    stop: Any,
    wait_http: Any,
    sidecar_cmd: Any,
) -> dict[str, Any]:
    from google.protobuf import json_format
    from meshgate.v1 import control_pb2

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * idle_connections + 1000)), hard))
    ws_port, grpc_port = free_port(), free_port()
    port, admin, gport = free_port(), free_port(), free_port()
    routes = [
        {
            "method": "GET",
            "path": "/ws",
            "integration": {"type": "websocket", "uri": f"ws://127.0.0.1:{ws_port}/"},
        },
        {
            "method": "POST",
            "path": "/bench.Echo/{m}",
            "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{grpc_port}"},
        },
    ]
    spec = {"routes": routes}
    snap = {
        "version": "protocols",
        "stages": [
            {
                "api": {"metadata": {"name": "bench", "namespace": "default"}, "spec": spec},
                "stage": {
                    "metadata": {"name": "prod", "namespace": "default"},
                    "spec": {
                        "api": "bench",
                        "deployment": 1,
                        "throttling": {"rateLimit": 1e7, "burstLimit": 1000000},
                    },
                },
                "deployment": {"id": 1, "spec": {"api": "bench", "apiSpec": spec}},
            }
        ],
    }
    path = work / "snapshot-protocols.json"
    path.write_text(json_format.MessageToJson(json_format.ParseDict(snap, control_pb2.Snapshot())))
    script = work / "upstreams.py"
    script.write_text(UPSTREAMS)
    up = subprocess.Popen(
        [sys.executable, str(script), str(ws_port), str(grpc_port)], stdout=subprocess.PIPE, text=True
    )
    assert up.stdout is not None and up.stdout.readline().strip() == "ready"
    sc = start(
        sidecar_cmd(path, port, admin, "--grpc-listen", f"127.0.0.1:{gport}"), work / "sidecar-protocols.log"
    )
    try:
        wait_http(f"http://127.0.0.1:{admin}/ready")
        out: dict[str, Any] = {}
        out["ws_direct"] = asyncio.run(ws_rate(f"ws://127.0.0.1:{ws_port}/", seconds))
        out["ws_meshgate"] = asyncio.run(ws_rate(f"ws://127.0.0.1:{port}/prod/ws", seconds))
        out["grpc_direct"] = asyncio.run(grpc_rate(f"127.0.0.1:{grpc_port}", seconds))
        out["grpc_meshgate"] = asyncio.run(grpc_rate(f"127.0.0.1:{gport}", seconds))
        out["idle_ws"] = asyncio.run(idle_ws(f"ws://127.0.0.1:{port}/prod/ws", sc.pid, idle_connections))
        return out
    finally:
        stop(sc)
        up.terminate()
        up.wait(10)


def report(res: dict[str, Any]) -> None:
    print(
        "\nWebSocket echo (8 connections, 64-byte messages, send/recv in turn) and gRPC unary (16 in flight)"
    )
    print(
        f"  WebSocket msgs/s: direct {res['ws_direct']:.0f}  via meshgate {res['ws_meshgate']:.0f}"
        f"  ratio {res['ws_meshgate'] / res['ws_direct']:.2f}x"
    )
    print(
        f"  gRPC calls/s:     direct {res['grpc_direct']:.0f}  via meshgate {res['grpc_meshgate']:.0f}"
        f"  ratio {res['grpc_meshgate'] / res['grpc_direct']:.2f}x"
    )
    idle = res["idle_ws"]
    print(
        f"  idle WebSockets:  {idle['connections']:.0f} open, sidecar RSS {idle['rss_before_kib'] / 1024:.1f} ->"
        f" {idle['rss_after_kib'] / 1024:.1f} MiB, {idle['kib_per_connection']:.1f} KiB per connection"
    )


if __name__ == "__main__":
    print(json.dumps({"usage": "run through bench/run.py"}))
