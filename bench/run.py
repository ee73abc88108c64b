"""meshgate benchmarks, side by side in one run.

1. HTTP proxy throughput: wrk against (a) the backend directly, (b) nginx as a
   reverse proxy (one worker, upstream keep-alive), (c) the meshgate sidecar
   (one process), for a small GET and a 1 KB POST with keep-alive. Prints
   requests/s, p50/p99 latency and the meshgate/nginx ratios.
2. Config propagation: time from the etcd write made by `deploy` to every one
   of N config streams (real ConfigClient + compile_snapshot, one process)
   having applied it; p50/p99 over repeated deploys.
3. The sidecar's idle RSS with 100 routes.

The backend is nginx answering a fixed 12-byte body (the fastest backend this
machine has), so the proxies, not the backend, are what is measured.

4. WebSocket echo messages/s and gRPC unary calls/s through the sidecar vs
   direct, and the sidecar's RSS growth per idle WebSocket (5000 connections).

Usage: python bench/run.py [--duration 10] [--connections 32] [--streams 50] [--deploys 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from meshgate.control.etcd_local import LocalEtcd, free_port
from meshgate.v1 import control_pb2, resources_pb2

NGINX_BACKEND = """
worker_processes 1;
daemon off;
master_process on;
user root;
pid {dir}/backend.pid;
error_log {dir}/backend-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ return 200 "hello world\\n"; }}
    location = /jwks {{ default_type application/json; return 200 '{jwks}'; }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes 1;
daemon off;
master_process on;
user root;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/pbody;
  proxy_temp_path {dir}/ptemp;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /prod/ {{
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"""

ORDER = json.dumps(
    {
        "customer": "acme-corporation",
        "note": "leave at the door",
        "items": [{"sku": f"SKU-{i:05d}", "qty": i + 1} for i in range(24)],
    }
)
JSON_LUA = (
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[' + ORDER + "]]\n"
)

POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


ORDER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["customer", "items"],
    "properties": {
        "customer": {"type": "string", "minLength": 1},
        "note": {"type": "string"},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            },
        },
    },
}
ORDER_TEMPLATE = (
    "{\"customer\": {{ input.json('$.customer') }}, "
    "\"count\": {{ input.path('$.items') | length }}, \"items\": {{ input.json('$.items') }}}"
)


def _proxied(
    method: str, path: str, model: str = "", templates: dict[str, str] | None = None
) -> resources_pb2.Route:
    """A route proxied to the backend at the same path."""
    integ = resources_pb2.Integration(
        type="http", uri=f"http://${{stageVariables.backend}}{path}", request_templates=templates or {}
    )
    return resources_pb2.Route(method=method, path=path, request_model=model, integration=integ)


def bench_snapshot(backend_port: int, extra_routes: int = 0, jwt: bool = False) -> control_pb2.Snapshot:
    """One stage `prod` with GET /hello and POST /echo proxied to the backend.

    The stage limit is set far above what this machine can push (the default,
    10000 rps like API Gateway, would throttle the benchmark); the token bucket
    still runs on every request. With `jwt`, both routes require a JWT (RS256,
    JWKS served by the backend) and carry their own route limit.
    """
    routes = [
        _proxied("GET", "/hello"),
        _proxied("POST", "/echo"),
        _proxied("POST", "/orders", "Order", {"application/json": ORDER_TEMPLATE}),
    ]
    routes += [_proxied("GET", f"/r{i}/items/{{id}}") for i in range(extra_routes)]
    spec = resources_pb2.ApiSpec(
        routes=routes, models=[resources_pb2.Model(name="Order", schema_json=json.dumps(ORDER_SCHEMA))]
    )
    if jwt:
        spec.authorizers.add(
            name="idp",
            type="jwt",
            issuer="https://idp.bench",
            audiences=["bench"],
            jwks_uri=f"http://127.0.0.1:{backend_port}/jwks",
        )
        for r in spec.routes[:2]:
            r.authorizer = "idp"
            r.throttling.rate_limit = 5e6
            r.throttling.burst_limit = 1000000
    return _snapshot_of(spec, backend_port)


def _snapshot_of(spec: resources_pb2.ApiSpec, backend_port: int) -> control_pb2.Snapshot:
    """The Api `bench` with `spec`, deployed as 1 on stage `prod` (its stage limit far above this machine)."""
    api = resources_pb2.Api(
        api_version="meshgate.io/v1",
        kind="Api",
        metadata=resources_pb2.ObjectMeta(name="bench", namespace="default"),
        spec=spec,
    )
    deployment = resources_pb2.Deployment(
        kind="Deployment",
        id=1,
        metadata=resources_pb2.ObjectMeta(name="bench-1", namespace="default"),
        spec=resources_pb2.DeploymentSpec(api="bench", api_spec=spec),
    )
    stage = resources_pb2.Stage(
        kind="Stage",
        metadata=resources_pb2.ObjectMeta(name="prod", namespace="default"),
        spec=resources_pb2.StageSpec(
            api="bench",
            deployment=1,
            variables={"backend": f"127.0.0.1:{backend_port}"},
            throttling=resources_pb2.StageThrottle(rate_limit=1e7, burst_limit=1000000),
        ),
    )
    return control_pb2.Snapshot(
        version="bench", stages=[control_pb2.StageBundle(api=api, stage=stage, deployment=deployment)]
    )


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value.strip())
    if not m:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(
    url: str,
    duration: int,
    connections: int,
    script: Path | None = None,
    header: str | None = None,
    pin: str | None = None,
) -> dict[str, float]:
    cmd = ["taskset", "-c", pin] if pin else []
    cmd += ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if header:
        cmd += ["-H", header]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if not rps or not p50 or not p99:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    result = {"rps": float(rps.group(1)), "p50_ms": to_ms(p50.group(1)), "p99_ms": to_ms(p99.group(1))}
    if errors or socket_errors:
        result["errors"] = float(errors.group(1)) if errors else -1.0
    return result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def huge_pages_kib(pid: int) -> int:
    """Anonymous memory backed by transparent huge pages (counted in RSS whole)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def meshgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshgate.control.cli", *args]


def sidecar_cmd(snapshot: Path, port: int, admin: int, *extra: str) -> list[str]:
    """A sidecar serving a snapshot file on loopback, logging warnings only."""
    return meshgate_cmd(
        "sidecar",
        "--snapshot-file",
        str(snapshot),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--log-level",
        "warning",
        *extra,
    )


def throughput(ns: argparse.Namespace, work: Path) -> dict[str, dict[str, dict[str, float]]]:
    backend_port, proxy_port, mg_port, mg_admin = free_port(), free_port(), free_port(), free_port()
    jwt_port, jwt_admin = free_port(), free_port()
    jwks, token = make_idp()
    (work / "body").mkdir()
    (work / "backend.conf").write_text(NGINX_BACKEND.format(dir=work, port=backend_port, jwks=jwks))
    (work / "proxy.conf").write_text(NGINX_PROXY.format(dir=work, port=proxy_port, backend=backend_port))
    snap = work / "snapshot.json"
    snap.write_text(json_format.MessageToJson(bench_snapshot(backend_port)))
    jwt_snap = work / "snapshot-jwt.json"
    jwt_snap.write_text(json_format.MessageToJson(bench_snapshot(backend_port, jwt=True)))
    post = work / "post.lua"
    post.write_text(POST_LUA)
    post_json = work / "post-json.lua"
    post_json.write_text(JSON_LUA)
    procs = [
        start(["nginx", "-c", str(work / "backend.conf"), "-p", str(work)], work / "backend.log"),
        start(["nginx", "-c", str(work / "proxy.conf"), "-p", str(work)], work / "proxy.log"),
        start(
            sidecar_cmd(snap, mg_port, mg_admin, "--state-dir", str(work / "sidecar")), work / "sidecar.log"
        ),
        start(sidecar_cmd(jwt_snap, jwt_port, jwt_admin), work / "sidecar-jwt.log"),
    ]
    auth = f"Authorization: Bearer {token}"
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/hello")
        wait_http(f"http://127.0.0.1:{proxy_port}/prod/hello")
        wait_http(f"http://127.0.0.1:{mg_admin}/ready")
        wait_http(f"http://127.0.0.1:{mg_port}/prod/hello")
        wait_http(f"http://127.0.0.1:{jwt_admin}/ready")
        check_jwt_route(f"http://127.0.0.1:{jwt_port}/prod/hello", token)
        targets = {
            "direct": f"http://127.0.0.1:{backend_port}",
            "nginx": f"http://127.0.0.1:{proxy_port}/prod",
            "meshgate": f"http://127.0.0.1:{mg_port}/prod",
            "mg+jwt": f"http://127.0.0.1:{jwt_port}/prod",
        }
        results: dict[str, dict[str, dict[str, float]]] = {"GET 12B": {}, "POST 1KB": {}, "POST JSON": {}}
        for base in targets.values():  # warm-up
            wrk(base + "/hello", 2, ns.connections)
        for _ in range(ns.rounds):
            for name, base in targets.items():
                for case, path, script in (("GET 12B", "/hello", None), ("POST 1KB", "/echo", post)):
                    r = wrk(
                        base + path, ns.duration, ns.connections, script, auth if name == "mg+jwt" else None
                    )
                    best = results[case].get(name)
                    if best is None or r["rps"] > best["rps"]:
                        results[case][name] = r
            # request validation + body template vs plain proxying of the same JSON body
            for name, path in (("mg plain", "/echo"), ("mg+valid", "/orders")):
                r = wrk(targets["meshgate"] + path, ns.duration, ns.connections, post_json)
                best = results["POST JSON"].get(name)
                if best is None or r["rps"] > best["rps"]:
                    results["POST JSON"][name] = r
        return results
    finally:
        for proc in procs:
            stop(proc)


def make_idp() -> tuple[str, str]:
    """An RSA key: its JWKS (served by the backend nginx) and a long-lived RS256 token."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "bench"
    now = int(time.time())
    claims = {"iss": "https://idp.bench", "aud": "bench", "sub": "bench-user", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    return json.dumps({"keys": [jwk]}), token


def check_jwt_route(url: str, token: str) -> None:
    """The JWT target must refuse a request without a token and accept the bench token."""
    try:
        urllib.request.urlopen(url, timeout=5)
        raise RuntimeError("JWT route answered without a token")
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


async def propagation(ns: argparse.Namespace, work: Path) -> dict[str, float]:
    import grpc
    from meshgate.control.resources import load_documents
    from meshgate.sidecar.config_client import ConfigClient
    from meshgate.sidecar.credentials import cli_credentials
    from meshgate.sidecar.identity import SidecarIdentity
    from meshgate.sidecar.routing import compile_snapshot
    from meshgate.v1 import control_pb2_grpc

    with LocalEtcd(data_dir=work / "etcd") as etcd:
        port = free_port()
        state = work / "control-state"
        control = start(
            meshgate_cmd(
                "control", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)
            ),
            work / "control.log",
        )
        try:
            address = f"127.0.0.1:{port}"
            await wait_for(lambda: (state / "admin" / "ca.crt").exists(), 20)  # written last
            channel = grpc.aio.secure_channel(address, cli_credentials(str(state / "admin")).channel())
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub = control_pb2_grpc.ControlServiceStub(channel)
            docs = load_documents(PETS_YAML)
            await stub.Apply(control_pb2.ApplyRequest(resources=docs))
            await stub.Deploy(control_pb2.DeployRequest(namespace="default", api="pets", stage="prod"))
            applied: dict[int, list[tuple[str, int]]] = {}

            def make_apply(i: int):  # type: ignore[no-untyped-def]
                def apply(snapshot: control_pb2.Snapshot) -> None:
                    compile_snapshot(snapshot)
                    replicas[i] = snapshot.stages[0].replicas if snapshot.stages else 0
                    applied.setdefault(i, []).append((snapshot.version, time.time_ns()))
                    sources[snapshot.version] = snapshot.source_time_unix_nano

                return apply

            sources: dict[str, int] = {}
            replicas: dict[int, int] = {}
            clients = [
                ConfigClient(
                    address,
                    control_pb2.Node(
                        id=f"bench-{i}", pod=f"bench-{i}", namespace="default", labels={"app": "pets"}
                    ),
                    make_apply(i),
                    state_dir=None,
                    identity=SidecarIdentity.from_files(address, state / "ca.crt", state / "bootstrap-token"),
                )
                for i in range(ns.streams)
            ]
            tasks = [asyncio.create_task(c.run()) for c in clients]
            await wait_for(lambda: len(applied) == ns.streams, 30)
            # steady state: every stream knows all N replicas of the stage (joining changes it)
            await wait_for(lambda: all(replicas.get(i) == ns.streams for i in range(ns.streams)), 60)
            await asyncio.sleep(0.5)
            all_applied_ms, each_ms = await _deploys(stub, ns.deploys, applied, sources)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channel.close()
            return {
                "streams": ns.streams,
                "deploys": ns.deploys,
                "all_applied_p50_ms": pct(all_applied_ms, 50),
                "all_applied_p99_ms": pct(all_applied_ms, 99),
                "per_stream_p50_ms": pct(each_ms, 50),
                "per_stream_p99_ms": pct(each_ms, 99),
            }
        finally:
            stop(control)


PETS_YAML = """
apiVersion: meshgate.io/v1
kind: Api
metadata: {name: pets}
spec:
  selector: {matchLabels: {app: pets}}
  routes:
    - method: GET
      path: /pets/{id}
      integration: {type: http, uri: "http://${stageVariables.backend}/pets/{id}"}
---
apiVersion: meshgate.io/v1
kind: Stage
metadata: {name: prod}
spec: {api: pets, variables: {backend: "127.0.0.1:9"}}
"""


async def _deploys(
    stub: Any, deploys: int, applied: dict[int, list[tuple[str, int]]], sources: dict[str, int]
) -> tuple[list[float], list[float]]:
    """Deploy `deploys` times; per deploy, ms from its etcd write until the last stream applied it
    (and each stream's ms)."""
    all_applied_ms: list[float] = []
    each_ms: list[float] = []
    for _ in range(deploys):
        before = {i: len(v) for i, v in applied.items()}
        await stub.Deploy(control_pb2.DeployRequest(namespace="default", api="pets", stage="prod"))
        await wait_for(lambda b=before: all(len(applied[i]) > b[i] for i in b), 30)  # type: ignore[misc]
        latest = [applied[i][-1] for i in applied]
        lat = [(t - sources[v]) / 1e6 for v, t in latest]
        each_ms.extend(lat)
        all_applied_ms.append(max(lat))
        await asyncio.sleep(0.05)
    return all_applied_ms, each_ms


async def wait_for(pred, limit_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.001)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def idle_rss(work: Path) -> dict[str, float]:
    results = {}
    for routes in (2, 100):
        snap = work / f"snapshot-{routes}.json"
        snap.write_text(json_format.MessageToJson(bench_snapshot(9, extra_routes=routes - 2)))
        admin = free_port()
        proc = start(
            sidecar_cmd(snap, free_port(), admin, "--state-dir", str(work / f"rss-{routes}")),
            work / f"rss-{routes}.log",
        )
        try:
            wait_http(f"http://127.0.0.1:{admin}/ready")
            time.sleep(1.0)
            results[f"rss_kib_{routes}_routes"] = float(rss_kib(proc.pid))
            results[f"thp_kib_{routes}_routes"] = float(huge_pages_kib(proc.pid))
        finally:
            stop(proc)
    return results


def _report_throughput(ns: argparse.Namespace, res: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"\nHTTP proxy, wrk -t1 -c{ns.connections} -d{ns.duration}s, keep-alive (best of {ns.rounds})")
    print(f"{'case':10} {'target':10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for case, by in res.items():
        for name, r in by.items():
            print(f"{case:10} {name:10} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
        if case == "POST JSON":
            ratio = by["mg+valid"]["rps"] / by["mg plain"]["rps"]
            print(f"{case:10} JSON Schema validation + body template / plain proxying = {ratio:.2f}x")
            continue
        ratio = by["meshgate"]["rps"] / by["nginx"]["rps"]
        direct = by["meshgate"]["rps"] / by["direct"]["rps"]
        auth = by["mg+jwt"]["rps"] / by["meshgate"]["rps"]
        print(f"{case:10} meshgate/nginx = {ratio:.2f}x   meshgate/direct = {direct:.2f}x")
        print(f"{case:10} with JWT authorizer + route limit / without = {auth:.2f}x")


def _report_propagation(prop: dict[str, float]) -> None:
    head = f"config propagation, {prop['streams']} streams, {prop['deploys']} deploys"
    print(f"\n{head} (etcd write -> applied)")
    print(
        f"all streams applied: p50 {prop['all_applied_p50_ms']:.1f} ms"
        f"  p99 {prop['all_applied_p99_ms']:.1f} ms;"
        f" per stream: p50 {prop['per_stream_p50_ms']:.1f} ms  p99 {prop['per_stream_p99_ms']:.1f} ms"
    )


def _tracing(ns: argparse.Namespace, work: Path) -> object:
    """The tracing section (bench/tracing.py) against a backend of its own."""
    import tracing

    backend_port = free_port()
    (work / "tbody").mkdir(exist_ok=True)
    conf = work / "backend-tracing.conf"
    conf.write_text(
        NGINX_BACKEND.format(dir=work, port=backend_port, jwks="{}").replace("backend.pid", "backend-t.pid")
    )
    nginx = start(["nginx", "-c", str(conf), "-p", str(work)], work / "backend-tracing.log")
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/hello")
        tr = tracing.run(work, backend_port, ns.duration, ns.connections, sys.modules[__name__])
    finally:
        stop(nginx)
    tracing.report(tr)
    return tr


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each wrk run, keep the best")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["throughput", "propagation", "rss", "protocols", "tracing"],
    )
    parser.add_argument(
        "--idle-ws", type=int, default=5000, help="idle WebSocket connections for the memory figure"
    )
    parser.add_argument("--json", help="also write the results to this file")
    ns = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found (apt-get install wrk nginx-light)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    out: dict[str, object] = {"cpus": os.cpu_count()}
    if "throughput" not in ns.skip:
        out["throughput"] = res = throughput(ns, work)
        _report_throughput(ns, res)
    if "propagation" not in ns.skip:
        out["propagation"] = prop = asyncio.run(propagation(ns, work))
        _report_propagation(prop)
    if "rss" not in ns.skip:
        rss = idle_rss(work)
        out["rss"] = rss
        print(
            f"\nsidecar idle RSS: {rss['rss_kib_2_routes'] / 1024:.1f} MiB with 2 routes,"
            f" {rss['rss_kib_100_routes'] / 1024:.1f} MiB with 100 routes"
            f" (transparent huge pages: {rss['thp_kib_2_routes'] / 1024:.1f}"
            f" and {rss['thp_kib_100_routes'] / 1024:.1f} MiB of that)"
        )
    if "protocols" not in ns.skip:
        import protocols

        proto = protocols.run(
            work, min(ns.duration, 10), ns.idle_ws, free_port, start, stop, wait_http, sidecar_cmd
        )
        out["protocols"] = proto
        protocols.report(proto)
    if "tracing" not in ns.skip:
        out["tracing"] = _tracing(ns, work)
    if ns.json:
        Path(ns.json).write_text(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
