"""`meshgate sidecar` as a process: snapshot file, admin endpoints, clean SIGTERM, one-line startup errors."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from meshgate.control.etcd_local import free_port

from .conftest import bundle, http_route, mock_route, snapshot


def sidecar(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshgate.control.cli", "sidecar", *args]


def serve_file(tmp_path: Path, snap: Any, *extra: str) -> tuple[subprocess.Popen[str], int, int]:
    """`meshgate sidecar --snapshot-file` on free loopback ports: (process, proxy port, admin port)."""
    path = tmp_path / "snap.json"
    path.write_text(json_format.MessageToJson(snap))
    port, admin = free_port(), free_port()
    args = ("--snapshot-file", str(path), "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}")
    proc = subprocess.Popen(
        sidecar(*args, *extra), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return proc, port, admin


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_sidecar_serves_snapshot_file_and_stops_cleanly(tmp_path: Path) -> None:
    snap = snapshot(bundle([mock_route("GET", "/hello", '{"hi": 1}')]), version="file-v1")
    proc, port, admin = serve_file(tmp_path, snap)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line
        status, body = get(admin, "/ready")
        ready = json.loads(body)
        assert status == 200 and ready["version"] == "file-v1" and ready["source"] == "file"
        assert get(port, "/prod/hello") == (200, b'{"hi": 1}')
        assert get(admin, "/live")[0] == 200
        dump = json.loads(get(admin, "/config_dump")[1])
        assert dump["version"] == "file-v1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_not_ready_until_a_snapshot_is_applied(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        sidecar(
            "--control",
            f"127.0.0.1:{free_port()}",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        status, body = get(admin, "/ready")
        assert status == 503 and json.loads(body)["reason"] == "no configuration applied yet"
        status, body = get(port, "/prod/x")
        # no snapshot, no cluster networks: the caller is an outsider and gets the message only
        assert status == 503 and json.loads(body).keys() == {"message", "requestId"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_port_in_use_is_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        t0 = time.monotonic()
        proc = subprocess.run(
            sidecar("--listen", f"127.0.0.1:{busy}", "--admin", f"127.0.0.1:{free_port()}"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    assert (
        proc.stderr.strip().startswith("error: cannot listen") and len(proc.stderr.strip().splitlines()) == 1
    )


def test_sidecar_process_proxies_grpc(tmp_path: Path) -> None:
    from concurrent import futures

    import grpc

    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return b"pong:" + req

    upstream = grpc.server(futures.ThreadPoolExecutor(2))
    upstream.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "demo.Ping", {"Ping": grpc.unary_unary_rpc_method_handler(unary)}
            ),
        )
    )
    up_port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    route = {
        "method": "POST",
        "path": "/demo.Ping/Ping",
        "integration": {"type": "grpc", "uri": f"grpc://127.0.0.1:{up_port}"},
    }
    gport = free_port()
    proc, _, _ = serve_file(tmp_path, snapshot(bundle([route])), "--grpc-listen", f"127.0.0.1:{gport}")
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            assert ch.unary_unary("/demo.Ping/Ping")(b"x", timeout=5) == b"pong:x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        upstream.stop(0)


def test_prometheus_metrics_on_the_admin_port(tmp_path: Path) -> None:
    proc, port, admin = serve_file(tmp_path, snapshot(bundle([mock_route("GET", "/hello", '"hi"')])))
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        assert get(port, "/prod/hello")[0] == 200 and get(port, "/prod/hello")[0] == 200
        assert get(port, "/prod/nope")[0] == 404
        status, body = get(admin, "/metrics")
        text = body.decode()
        assert status == 200
        assert 'meshgate_requests_total{api="default/pets",stage="prod",route="/hello"} 2' in text
        assert (
            'meshgate_4xx_errors_total{api="default/pets",stage="prod",route="/nope"} 1' not in text
        )  # no route -> no Api label
        assert 'meshgate_4xx_errors_total{api="-",stage="-",route="-"} 1' in text
        assert 'meshgate_latency_seconds_count{api="default/pets",stage="prod",route="/hello"} 2' in text
        assert "# TYPE meshgate_latency_seconds histogram" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def request(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_health_and_metrics_ports_serve_only_their_paths(tmp_path: Path) -> None:
    """Istio's split: the full admin port on loopback, probes on a health port (15021) that answers only
    /ready and /live, Prometheus on a read-only metrics port (15090) that answers only /metrics."""
    snap = snapshot(bundle([mock_route("GET", "/hello", '"hi"')]), version="ports-v1")
    health, metrics = free_port(), free_port()
    proc, port, admin = serve_file(
        tmp_path, snap, "--health-listen", f"127.0.0.1:{health}", "--metrics-listen", f"127.0.0.1:{metrics}"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"health 127.0.0.1:{health}" in line and f"metrics 127.0.0.1:{metrics}" in line, line
        assert get(port, "/prod/hello") == (200, b'"hi"')
        # the health port: ready and live, and it says no more than that
        status, body = get(health, "/ready")
        assert status == 200 and json.loads(body) == {"ready": True}
        assert get(health, "/live") == (200, b'{"live": true}')
        assert request(health, "HEAD", "/ready")[0] == 200
        # the admin port still has the detail
        assert json.loads(get(admin, "/ready")[1])["version"] == "ports-v1"
        assert request(admin, "POST", "/stats")[0] == 405 and request(admin, "POST", "/x")[0] == 404
        closed = (404, b"not found\n")
        for path in ("/config_dump", "/stats", "/stats?format=json", "/metrics", "/", "/ready/", "/x"):
            assert get(health, path) == closed, path
        for method in ("POST", "DELETE"):  # any other path is a 404, whatever the method
            assert request(health, method, "/config_dump") == closed
        # the metrics port: Prometheus text, nothing else
        status, body = get(metrics, "/metrics")
        assert status == 200
        assert 'meshgate_requests_total{api="default/pets",stage="prod",route="/hello"} 1' in body.decode()
        for path in ("/config_dump", "/stats", "/ready", "/live", "/"):
            assert get(metrics, path) == closed, path
        assert b"ports-v1" not in get(metrics, "/config_dump")[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_port_is_not_ready_while_draining(tmp_path: Path) -> None:
    health = free_port()
    proc, _, _ = serve_file(
        tmp_path,
        snapshot(bundle([mock_route("GET", "/x", '"x"')])),
        "--health-listen",
        f"127.0.0.1:{health}",
        "--drain-seconds",
        "5",
    )
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        assert get(health, "/ready")[0] == 200
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the kubelet's readiness probe moves endpoints away
            status, body = get(health, "/ready")
            if status == 503:
                break
            time.sleep(0.05)
        assert status == 503 and json.loads(body) == {"ready": False, "reason": "draining"}
        assert get(health, "/live")[0] == 200  # alive while draining: no restart
        proc.send_signal(signal.SIGTERM)  # a second signal cuts the drain short
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_busy_health_or_metrics_port_is_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        for flag in ("--health-listen", "--metrics-listen"):
            proc = subprocess.run(
                sidecar(
                    "--listen",
                    f"127.0.0.1:{free_port()}",
                    "--admin",
                    f"127.0.0.1:{free_port()}",
                    flag,
                    f"127.0.0.1:{busy}",
                ),
                capture_output=True,
                text=True,
                timeout=30,
            )
            err = proc.stderr.strip()
            assert (
                proc.returncode == 1
                and err.startswith("error: cannot listen on")
                and len(err.splitlines()) == 1
            )
            assert f"127.0.0.1:{busy}" in err


def test_access_log_lines_per_stage(tmp_path: Path) -> None:
    from meshgate.sidecar.accesslog import access_line

    b = bundle([mock_route("GET", "/hello", '"hi"')])
    b["stage"]["spec"]["accessLogFormat"] = "json"
    proc, port, _ = serve_file(tmp_path, snapshot(b))
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        assert get(port, "/prod/hello") == (200, b'"hi"')
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        entry = json.loads(out.strip().splitlines()[-1])
        assert entry["status"] == 200 and entry["resourcePath"] == "/hello" and entry["stage"] == "prod"
        assert (
            entry["identity.sourceIp"] == "127.0.0.1" and entry["requestId"] and entry["responseLatency"] >= 0
        )
    finally:
        if proc.poll() is None:
            proc.kill()
    line = access_line(
        "$context.requestId $context.httpMethod $context.status $context.nothing",
        {"requestId": "r1", "httpMethod": "GET", "status": 200},
    )
    assert line == "r1 GET 200 -"


LAZY = """
import json, sys
from google.protobuf import json_format
from meshgate.sidecar.routing import compile_snapshot
from meshgate.v1 import control_pb2
libs = ("jinja2", "jsonschema", "aiohttp", "airspeed")
seen = []
for doc in json.loads(sys.argv[1]):
    compile_snapshot(json_format.ParseDict(doc, control_pb2.Snapshot()))
    seen.append([lib for lib in libs if lib in sys.modules])
print(json.dumps(seen))
"""


def test_template_and_model_libraries_load_with_the_first_snapshot_that_uses_them() -> None:
    plain = snapshot(bundle([mock_route("GET", "/x", '"x"')]))
    route = mock_route("POST", "/y", '"y"')
    route["requestModel"] = "Pet"
    route["integration"] = {
        "type": "http",
        "uri": "http://127.0.0.1:9/y",
        "requestTemplates": {"application/json": '{"n": {{ input.json("$.n") }}}'},
    }
    spec = {"models": [{"name": "Pet", "schemaJson": '{"type": "object"}'}]}
    rich = snapshot(bundle([route], api_spec=spec))
    docs = json.dumps([json_format.MessageToDict(plain), json_format.MessageToDict(rich)])
    done = subprocess.run([sys.executable, "-c", LAZY, docs], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[], ["jinja2", "jsonschema"]]  # aiohttp: only with a first call


def test_vtl_engine_loads_with_the_first_vtl_template_and_jinja_does_not() -> None:
    plain = snapshot(bundle([mock_route("GET", "/x", '"x"')]))
    vtl = http_route(
        "POST", "/y", "http://127.0.0.1:9/y", requestTemplates={"application/json": "$input.body"}
    )
    rich = snapshot(bundle([vtl], api_spec={"templateLanguage": "vtl"}))
    docs = json.dumps([json_format.MessageToDict(plain), json_format.MessageToDict(rich)])
    done = subprocess.run([sys.executable, "-c", LAZY, docs], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[], ["airspeed"]]
