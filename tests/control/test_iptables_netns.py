"""The injected init container's iptables rules, for real: a pod network namespace with the rules
installed by `meshgate iptables`, a client namespace across a veth pair. A connection to the app port
lands on the sidecar port with the original destination recoverable (SO_ORIGINAL_DST); the pod's own
loopback traffic to the app is not redirected. Needs root (CI has it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

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
