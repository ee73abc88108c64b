"""`meshgate demo`: a whole local mesh on loopback in one command.

Starts a private etcd (unless --etcd is given), the control service, two
sample-app instances, applies the sample API (demo_petstore.yaml), deploys it
to stages prod and dev, starts one sidecar in front of them, prints the lines
to try, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.resources import load_documents
from meshgate.sidecar.credentials import cli_credentials
from meshgate.v1 import control_pb2, control_pb2_grpc

SAMPLE = Path(__file__).with_name("demo_petstore.yaml")


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


def _name(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return str(args[2]) if isinstance(args, list) and len(args) > 2 else str(args)


class Children:
    """The demo's child processes, stopped in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _deploy(control: str, namespace: str, app_port: int) -> None:
    resources = load_documents(SAMPLE)
    backends = {"prod": app_port, "dev": app_port + 1}
    for res in resources:
        if res.WhichOneof("kind") == "stage":
            port = backends[res.stage.metadata.name]
            res.stage.spec.variables["backend"] = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:  # control writes the CLI's credential once it serves
        try:
            creds = cli_credentials()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("control wrote no credential for the CLI") from None
            time.sleep(0.05)
    with grpc.secure_channel(control, creds.channel()) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = control_pb2_grpc.ControlServiceStub(channel)
        stub.Apply(control_pb2.ApplyRequest(resources=resources), timeout=10)
        for stage in ("prod", "dev"):
            stub.Deploy(
                control_pb2.DeployRequest(
                    namespace=namespace, api="pets", stage=stage, description=f"demo deploy to {stage}"
                ),
                timeout=10,
            )


@contextlib.contextmanager
def _etcd(endpoint: str | None, data_dir: Path) -> Iterator[str]:
    if endpoint:
        yield endpoint
        return
    with LocalEtcd(data_dir=data_dir / "etcd") as server:
        yield server.endpoint


def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="meshgate-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    children = Children(work)
    control = f"127.0.0.1:{args.control_port}"
    listen = f"127.0.0.1:{args.port}"
    admin = f"127.0.0.1:{args.admin_port}"
    stop_requested = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with _etcd(args.etcd, work) as etcd_endpoint:
            print(
                f"etcd            {etcd_endpoint}"
                + ("" if args.etcd else f"  (private, data in {work}/etcd)")
            )
            # One machine is the demo's cluster: loopback callers are inside its networks (they see
            # error reasons and reach private Apis, as a pod in the mesh would).
            children.start(
                "control",
                "meshgate.control.cli",
                "control",
                "--etcd",
                etcd_endpoint,
                "--listen",
                control,
                "--cluster-cidr",
                "127.0.0.0/8",
            )
            apps = []
            for name, port in (("v1", args.app_port), ("v2", args.app_port + 1)):
                apps.append(
                    children.start(
                        f"app-{name}", "meshgate.control.demo_app", "--port", str(port), "--name", name
                    )
                )
            for port, proc in zip((args.app_port, args.app_port + 1), apps, strict=True):
                _wait_http(f"http://127.0.0.1:{port}/pets", 20, proc)
            _deploy(control, "default", args.app_port)
            print(f"control service {control}")
            v1, v2 = args.app_port, args.app_port + 1
            print(f"sample app      v1 http://127.0.0.1:{v1}  v2 http://127.0.0.1:{v2}")
            sidecar = children.start(
                "sidecar",
                "meshgate.control.cli",
                "sidecar",
                "--control",
                control,
                "--listen",
                listen,
                "--admin",
                admin,
                "--node-id",
                "demo-sidecar",
                "--pod",
                "demo-pod",
                "--namespace",
                "default",
                "--label",
                "app=pets",
                "--state-dir",
                str(work / "sidecar"),
            )
            _wait_http(f"http://{admin}/ready", 30, sidecar)
            _print_lines(args, control, listen, admin, work)
            while not stop_requested:
                for proc in children.procs:
                    if proc.poll() is not None:
                        print(f"demo: {_name(proc)} exited with {proc.returncode}; stopping", file=sys.stderr)
                        return 1
                time.sleep(0.2)
            print("\nstopping demo ...")
    except (RuntimeError, grpc.RpcError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[attr-defined]
        print(f"error: demo failed: {detail} (logs in {work})", file=sys.stderr)
        return 1
    finally:
        children.stop()
    return 0


def _print_lines(args: argparse.Namespace, control: str, listen: str, admin: str, work: Path) -> None:
    env = f"MESHGATE_CONTROL={control}"
    lines = {
        "prod stage (backend v1)": f"curl -s http://{listen}/prod/pets/1",
        "dev stage (backend v2)": f"curl -s http://{listen}/dev/pets",
        "POST through the proxy": f'curl -s -XPOST -d \'{{"type":"bird"}}\' http://{listen}/prod/pets',
        "mock integration": f"curl -s http://{listen}/prod/health",
        "VTL response template": f"curl -s http://{listen}/prod/pets/1/card",
        'WebSocket API (then type {"action": "sendMessage", "text": "hi"})': (
            f"{sys.executable} -m websockets ws://{listen}/prod/chat"
        ),
        "gateway error (404)": f"curl -s http://{listen}/nostage/pets",
        "stages and sidecars": f"{env} meshgate get stages; {env} meshgate get sidecars",
        "20% canary to v2": f"{env} meshgate canary set pets --stage prod --percent 20 "
        f"--var backend=127.0.0.1:{args.app_port + 1}",
        "see the split": f"for i in $(seq 20); do curl -s http://{listen}/prod/pets/1; echo; done"
        " | grep -c v2",
        "promote / remove": f"{env} meshgate canary promote pets --stage prod   # or: canary remove",
        "new deployment, rollback": f"{env} meshgate deploy pets --stage dev; "
        f"{env} meshgate rollback pets --stage dev",
        "sidecar readiness": f"curl -s http://{admin}/ready",
    }
    print("\nmeshgate demo is up. Try:\n")
    for title, line in lines.items():
        print(f"  # {title}\n  {line}\n")
    print(f"logs: {work}    Ctrl-C stops everything.", flush=True)
    if args.json_ready:
        print(json.dumps({"listen": listen, "admin": admin, "control": control}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshgate demo", description=__doc__)
    parser.add_argument("--etcd", help="use this etcd endpoint (HOST:PORT) instead of a private one")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MESHGATE_DEMO_PORT", "8080")))
    parser.add_argument("--admin-port", type=int, default=15000)
    parser.add_argument("--control-port", type=int, default=7070)
    parser.add_argument("--app-port", type=int, default=9001, help="v1 on this port, v2 on the next")
    parser.add_argument("--work-dir", help="logs, etcd data and sidecar state (default: a temp dir)")
    parser.add_argument("--json-ready", action="store_true", help=argparse.SUPPRESS)
    return run(parser.parse_args(argv))
