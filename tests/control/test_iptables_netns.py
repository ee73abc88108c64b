"""The injected init container's iptables rules, for real: a pod network namespace with the rules
installed by `meshgate iptables`, a client namespace across a veth pair. A connection to the app port
lands on the sidecar port with the original destination recoverable (SO_ORIGINAL_DST); the pod's own
loopback traffic to the app is not redirected. Needs root (CI has it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None,
    reason="needs root with ip (iproute2) and iptables to create network namespaces",
)

SERVER = r"""
import socket, struct, sys
port, tag = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        dport = struct.unpack("!H", raw[2:4])[0]
        dip = socket.inet_ntoa(raw[4:8])
        c.sendall(f"{tag} original-dst {dip}:{dport}".encode())
    except OSError:
        c.sendall(f"{tag} no-original-dst".encode())
    c.close()
"""

CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.recv(200).decode())
"""


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    pod, cli = f"mgpod{tag}", f"mgcli{tag}"
    va, vb = f"va{tag}", f"vb{tag}"
    sh("ip", "netns", "add", pod)
    sh("ip", "netns", "add", cli)
    try:
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", pod)
        sh("ip", "link", "set", vb, "netns", cli)
        sh("ip", "-n", pod, "addr", "add", "10.77.0.2/24", "dev", va)
        sh("ip", "-n", cli, "addr", "add", "10.77.0.1/24", "dev", vb)
        for ns, dev in ((pod, va), (cli, vb)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield pod, cli
    finally:
        subprocess.run(["ip", "netns", "del", pod], capture_output=True)
        subprocess.run(["ip", "netns", "del", cli], capture_output=True)


def serve(ns: str, port: int, tag: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port), tag],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def connect(ns: str, host: str, port: int) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_inbound_app_traffic_lands_on_the_sidecar(namespaces: tuple[str, str]) -> None:
    pod, cli = namespaces
    procs = [serve(pod, 15001, "sidecar"), serve(pod, 8080, "app")]
    try:
        assert connect(cli, "10.77.0.2", 8080).startswith("app")  # before the rules: straight to the app
        init = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pod,
                sys.executable,
                "-m",
                "meshgate.control.cli",
                "iptables",
                "--app-port",
                "8080",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert init.returncode == 0, init.stderr  # the rules are in the kernel once iptables returns
        assert connect(cli, "10.77.0.2", 8080) == "sidecar original-dst 10.77.0.2:8080"
        assert connect(pod, "127.0.0.1", 8080).startswith(
            "app"
        )  # the pod's own loopback traffic is not redirected
    finally:
        for p in procs:
            p.kill()
            p.wait()


APP = r"""
import socket, sys, threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import grpc

class Pets(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"pet {self.path} via {self.headers.get('x-meshgate-request-id') and 'meshgate'}".encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass

def tcp(port, greet):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept()
        if greet:
            c.sendall(b"220 smtp ready\r\n")
        data = c.recv(100)
        c.sendall(b"echo:" + data); c.close()

threading.Thread(target=ThreadingHTTPServer(("0.0.0.0", 8080), Pets).serve_forever, daemon=True).start()
threading.Thread(target=tcp, args=(7000, False), daemon=True).start()
threading.Thread(target=tcp, args=(7001, True), daemon=True).start()
server = grpc.server(futures.ThreadPoolExecutor(4))
unary = grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"grpc:" + req + b":" + dict(ctx.invocation_metadata()).get("x-meshgate-request-id", "-")[:4].encode())
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Unary": unary}),))
server.add_insecure_port("0.0.0.0:9090"); server.start()
print("ready", flush=True)
server.wait_for_termination()
"""

STATS = r"""
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:15000/stats", timeout=10).read().decode())
"""

CALLS = r"""
import json, socket, sys, urllib.error, urllib.request
import grpc
host = sys.argv[1]
out = {}
out["http"] = urllib.request.urlopen(f"http://{host}:8080/prod/pets/7", timeout=10).read().decode()
try:
    out["admin_port"] = urllib.request.urlopen(f"http://{host}:8081/prod/admin/1", timeout=10).read().decode()
except urllib.error.HTTPError as exc:
    out["admin_port"] = f"{exc.code} {exc.read().decode()}"
try:
    urllib.request.urlopen(f"http://{host}:8080/prod/admin/1", timeout=10)
    out["admin_elsewhere"] = 200
except urllib.error.HTTPError as exc:
    out["admin_elsewhere"] = exc.code
with grpc.insecure_channel(f"{host}:9090") as ch:
    out["grpc"] = ch.unary_unary("/test.Echo/Unary")(b"hi", timeout=10).decode()
s = socket.create_connection((host, 7000), timeout=10); s.sendall(b"\x16\x03\x01 raw bytes")
out["tcp"] = s.recv(100).decode("latin-1"); s.close()
s = socket.create_connection((host, 7001), timeout=10)
greeting = s.recv(100); s.sendall(b"EHLO x\r\n"); out["server_first"] = (greeting + s.recv(100)).decode()
s.close()
s = socket.create_connection((host, 8080), timeout=10); s.sendall(b"\x16\x03\x01 not http\r\n\r\n")
out["garbage_on_http_port"] = s.recv(100).decode("latin-1").split("\r\n")[0]
print(json.dumps(out))
"""


def test_every_port_of_an_injected_pod_works_through_the_sidecar(
    namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """A pod with an HTTP port, a gRPC port, a client-first and a server-first TCP port, all
    redirected to the sidecar: HTTP and gRPC go through the gateway's routes (the app sees the
    request id the sidecar adds), TCP goes through untouched, and junk on an HTTP port gets 400."""
    from google.protobuf import json_format
    from sidecar.conftest import bundle, http_route, snapshot

    pod, cli = namespaces
    routes = [
        http_route("GET", "/pets/{id}", "http://127.0.0.1:8080/pets/{id}"),
        {
            "method": "POST",
            "path": "/test.Echo/{m}",
            "integration": {"type": "grpc", "uri": "grpc://127.0.0.1:9090"},
        },
        {**http_route("GET", "/admin/{id}", "http://127.0.0.1:8080/admin/{id}"), "ports": [8081]},
    ]
    snap = tmp_path / "snap.json"
    snap.write_text(json_format.MessageToJson(snapshot(bundle(routes))))
    app = subprocess.Popen(
        ["ip", "netns", "exec", pod, sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True
    )
    flags = ["--snapshot-file", str(snap), "--listen", "0.0.0.0:15001", "--admin", "127.0.0.1:15000"]
    flags += ["--http-ports", "8080,8081,9090", "--detect-timeout-ms", "200", "--drain-seconds", "0"]
    sidecar = subprocess.Popen(
        ["ip", "netns", "exec", pod, sys.executable, "-m", "meshgate.control.cli", "sidecar", *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        assert sidecar.stdout is not None and "listening" in sidecar.stdout.readline()
        init = ["ip", "netns", "exec", pod, sys.executable, "-m", "meshgate.control.cli", "iptables"]
        for port in (8080, 8081, 9090, 7000, 7001):
            init += ["--app-port", str(port)]
        assert subprocess.run(init, capture_output=True, timeout=30).returncode == 0
        out = subprocess.run(
            ["ip", "netns", "exec", cli, sys.executable, "-c", CALLS, "10.77.0.2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["http"] == "pet /pets/7 via meshgate"  # the route's integration, with the sidecar's id
        assert got["admin_port"] == "pet /admin/1 via meshgate"  # bound to 8081: served there
        assert got["admin_elsewhere"] == 404  # and only there
        assert got["grpc"].startswith("grpc:hi:") and got["grpc"] != "grpc:hi:-"  # the relay added its id
        assert got["tcp"] == "echo:\x16\x03\x01 raw bytes"
        assert got["server_first"] == "220 smtp ready\r\necho:EHLO x\r\n"
        assert got["garbage_on_http_port"] == "HTTP/1.1 400 Bad Request"
        stats = subprocess.run(
            ["ip", "netns", "exec", pod, sys.executable, "-c", STATS],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert "inbound.opaque: 2" in stats and "inbound.h2: 1" in stats, stats  # the two TCP ports; gRPC
    finally:
        for p in (sidecar, app):
            p.kill()
            p.wait()
