"""`meshgate sidecar` as a real process loads no control-plane library (aetcd, kubernetes_asyncio), nor
any meshgate.control module but the CLI dispatcher itself: `--help`, and a sidecar serving a snapshot."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import json_format
from meshgate.control.etcd_local import free_port
from meshgate.v1 import control_pb2

FORBIDDEN = ("aetcd", "kubernetes_asyncio")
ALLOWED_CONTROL = {"meshgate.control", "meshgate.control.cli"}

# Runs `meshgate ARGS...` as the console script does and writes sorted(sys.modules) to OUT at exit
# (argparse's --help exits with SystemExit; a sidecar stopped by SIGTERM returns from main()).
WRAPPER = """
import atexit, json, sys
out, argv = sys.argv[1], sys.argv[2:]
def dump():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(dump)
from meshgate.control.cli import main
raise SystemExit(main(argv))
"""


def wrapped(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", WRAPPER, str(out), *args]


def offenders(modules: list[str]) -> list[str]:
    bad = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    bad += [m for m in modules if m.startswith("meshgate.control") and m not in ALLOWED_CONTROL]
    return bad


@pytest.mark.parametrize("args", [("sidecar", "--help"), ("--help",)])
def test_help_loads_no_control_plane_library(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = tmp_path / "modules.json"
    done = subprocess.run(wrapped(out, *args), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: meshgate" in done.stdout
    modules = json.loads(out.read_text())
    assert "meshgate.control.cli" in modules  # the wrapper really ran the CLI
    assert offenders(modules) == []


def _snapshot_file(tmp_path: Path) -> Path:
    snap = json_format.ParseDict(
        {
            "version": "imports-v1",
            "stages": [
                {
                    "api": {"metadata": {"name": "pets", "namespace": "default"}, "spec": {}},
                    "stage": {
                        "metadata": {"name": "prod", "namespace": "default"},
                        "spec": {"api": "pets", "deployment": 1},
                    },
                    "deployment": {
                        "id": 1,
                        "metadata": {"name": "pets-1", "namespace": "default"},
                        "spec": {
                            "api": "pets",
                            "apiSpec": {
                                "routes": [
                                    {
                                        "method": "GET",
                                        "path": "/hello",
                                        "integration": {"type": "mock", "mock": {"body": "hi"}},
                                    }
                                ]
                            },
                        },
                    },
                }
            ],
        },
        control_pb2.Snapshot(),
    )
    path = tmp_path / "snap.json"
    path.write_text(json_format.MessageToJson(snap))
    return path


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ready(proc: subprocess.Popen[str], admin: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sidecar exited with {proc.returncode}")
        try:
            if _get(admin, "/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the sidecar did not become ready")


def test_a_running_sidecar_loads_no_control_plane_library(tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    port, admin = free_port(), free_port()
    args = [
        "sidecar",
        "--snapshot-file",
        str(_snapshot_file(tmp_path)),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--drain-seconds",
        "0",
    ]
    proc = subprocess.Popen(wrapped(out, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, admin)
        assert _get(port, "/prod/hello") == (200, b"hi")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    modules = json.loads(out.read_text())
    assert "meshgate.sidecar.main" in modules  # it ran the sidecar
    assert offenders(modules) == []
    # nor what this snapshot does not use: templates (Jinja2, airspeed for VTL), models (jsonschema),
    # outbound calls (aiohttp), WebSockets, JWTs, an encrypted cache (cryptography), tracing
    # (OpenTelemetry); nor what no sidecar loads: grpcio (its gRPC is sidecar/grpc_client.py),
    # hpack (sidecar/h2wire.py)
    libs = {"jinja2", "airspeed", "jsonschema", "jsonschema_rs", "aiohttp", "websockets", "jwt"}
    libs |= {"cryptography", "opentelemetry", "grpc", "hpack"}
    assert {m.split(".")[0] for m in modules} & libs == set()
