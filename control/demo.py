"""`meshgate demo`: a whole local mesh on loopback in one command.

Starts a private etcd (unless --etcd is given), the control service, two
sample-app instances (HTTP, WebSocket and gRPC), applies the sample API
(demo_petstore.yaml), deploys it to stages prod and dev, starts one sidecar in
front of them (HTTP and gRPC listeners), prints the lines to try, and stops
everything on Ctrl-C. Logs, etcd data and sidecar state go to a temp dir that is
removed on stop (--keep keeps it; --work-dir chooses it and keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from meshgate.control.etcd_local import LocalEtcd
from meshgate.control.resources import load_documents
from meshgate.sidecar.credentials import cli_credentials
from meshgate.v1 import control_pb2, control_pb2_grpc

SAMPLE = Path(__file__).with_name("demo_petstore.yaml")
DEFAULT_CONTROL = "127.0.0.1:7070"  # the CLI's default: lines for it need no MESHGATE_CONTROL


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{_name(proc)} exited with {proc.returncode}")
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
    """The demo's child processes, stopped in reverse order; each logs to LOG_DIR/NAME.log."""

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


def _deploy(control: str, namespace: str, app_port: int, app_grpc_port: int) -> None:
    resources = load_documents(SAMPLE)
    backends = {"prod": app_port, "dev": app_port + 1}
    for res in resources:
        kind = res.WhichOneof("kind")
        if kind == "stage":
            port = backends[res.stage.metadata.name]
            res.stage.spec.variables["backend"] = f"127.0.0.1:{port}"
        elif kind == "api":
            for route in res.api.spec.routes:
                if route.integration.type == "grpc":  # a grpc URI takes a literal port
                    route.integration.uri = f"grpc://127.0.0.1:{app_grpc_port}"
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


@dataclass(frozen=True)
class Line:
    """One line the demo prints to try: what it shows, and the command (runs as printed from the repo
    root). `types` is what to type into an interactive command (a WebSocket client)."""

    title: str
    command: str
    types: str = ""

    def render(self) -> str:
        typed = f"; type: {self.types}" if self.types else ""
        return f"# {self.title}{typed}\n{self.command}\n"


def _bin_dir() -> str:
    """How to name the venv's bin directory from the current directory (the repo root under
    scripts/demo): `.venv/bin`, or the absolute path of a venv elsewhere."""
    bindir = os.path.abspath(os.path.dirname(sys.executable))
    rel = os.path.relpath(bindir, os.getcwd())
    return bindir if rel.startswith("..") else rel


def lines(
    listen: str = "127.0.0.1:8080",
    grpc_listen: str = "127.0.0.1:8081",
    admin: str = "127.0.0.1:15000",
    control: str = DEFAULT_CONTROL,
    canary_backend: str = "127.0.0.1:9002",
    bin_dir: str = ".venv/bin",
) -> list[Line]:
    """The lines to try, for these addresses (the defaults are the README's)."""
    env = "" if control == DEFAULT_CONTROL else f"MESHGATE_CONTROL={control} "
    mg = f"{env}{bin_dir}/meshgate"
    url = f"http://{listen}"
    call = f"{bin_dir}/meshgate demo-app call {grpc_listen}"
    return [
        Line("prod stage -> sample app v1", f"curl -s {url}/prod/pets/1"),
        Line("dev stage -> sample app v2", f"curl -s {url}/dev/pets"),
        Line("POST through the proxy", f'curl -s -XPOST -d \'{{"type":"bird"}}\' {url}/prod/pets'),
        Line("mock integration, no backend", f"curl -s {url}/prod/health"),
        Line("a VTL response template, as API Gateway writes them", f"curl -s {url}/prod/pets/1/card"),
        Line("gateway error: 404 with message, reason, requestId", f"curl -s {url}/nostage/pets"),
        Line(
            "WebSocket pass-through to the app's echo",
            f"{bin_dir}/python -m websockets ws://{listen}/prod/echo",
            "hi",
        ),
        Line(
            "a WebSocket API: the sidecar routes each message by its action",
            f"{bin_dir}/python -m websockets ws://{listen}/prod/chat",
            '{"action": "sendMessage", "text": "hi"}',
        ),
        Line("gRPC through the sidecar's gRPC listener", f"{call} GetPet '{{\"id\": 1}}' --stage prod"),
        Line("a gRPC server stream, served for the dev stage", f"{call} ListPets --stage dev"),
        Line("stages and their deployments", f"{mg} get stages"),
        Line("sidecars: applied version, NACKs, etcd change -> ACK latency", f"{mg} get sidecars"),
        Line(
            "20% canary to v2",
            f"{mg} canary set pets --stage prod --percent 20 --var backend={canary_backend}",
        ),
        Line(
            "see the split",
            f"for i in $(seq 20); do curl -s {url}/prod/pets/1; echo; done"
            ' | grep -o \'"service": "v."\' | sort | uniq -c',
        ),
        Line("promote the canary (or: canary remove)", f"{mg} canary promote pets --stage prod"),
        Line(
            "a new deployment, then back", f"{mg} deploy pets --stage dev && {mg} rollback pets --stage dev"
        ),
        Line("sidecar admin: ready once a snapshot is applied", f"curl -s http://{admin}/ready"),
        Line("counters and gauges (name: value); /metrics for Prometheus", f"curl -s http://{admin}/stats"),
    ]


def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="meshgate-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    keep = bool(args.keep or args.work_dir)
    children = Children(work)
    control = f"127.0.0.1:{args.control_port}"
    listen = f"127.0.0.1:{args.port}"
    grpc_listen = f"127.0.0.1:{args.grpc_port}"
    admin = f"127.0.0.1:{args.admin_port}"
    app_grpc = args.app_grpc_port or args.app_port + 10
    stop_requested = False
    failed = True

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"logs            {work}/{{control,app-v1,app-v2,sidecar}}.log", flush=True)
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
                *("meshgate.control.cli", "control", "--etcd", etcd_endpoint, "--listen", control),
                *("--cluster-cidr", "127.0.0.0/8"),
            )
            _start_apps(children, args.app_port, app_grpc)
            _deploy(control, "default", args.app_port, app_grpc)
            print(f"control service {control}")
            v1, v2 = args.app_port, args.app_port + 1
            print(
                f"sample app      v1 http://127.0.0.1:{v1} grpc 127.0.0.1:{app_grpc}  "
                f"v2 http://127.0.0.1:{v2} grpc 127.0.0.1:{app_grpc + 1}"
            )
            sidecar = children.start(
                "sidecar",
                *("meshgate.control.cli", "sidecar", "--control", control, "--listen", listen),
                *("--grpc-listen", grpc_listen, "--admin", admin),
                *("--node-id", "demo-sidecar", "--pod", "demo-pod", "--namespace", "default"),
                *("--label", "app=pets", "--state-dir", str(work / "sidecar")),
            )
            _wait_http(f"http://{admin}/ready", 30, sidecar)
            print(f"sidecar         http {listen}  grpc {grpc_listen}  admin {admin}")
            shown = lines(listen, grpc_listen, admin, control, f"127.0.0.1:{v2}", _bin_dir())
            _print_lines(args, shown, listen, admin, control, work, keep)
            if not _watch(children, lambda: stop_requested):
                return 1
            print("\nstopping demo ...", flush=True)
            failed = False
    except (RuntimeError, OSError, grpc.RpcError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[attr-defined]
        print(f"error: demo failed: {detail}", file=sys.stderr)
        return 1
    finally:
        children.stop()
        if failed or keep:
            print(f"logs kept in {work}", file=sys.stderr if failed else sys.stdout, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            print(f"removed {work} (--keep keeps it)", flush=True)
    return 0


def _start_apps(children: Children, http_port: int, grpc_port: int) -> None:
    """The sample app's v1 and v2 (HTTP on http_port and the next, gRPC on grpc_port and the next)."""
    apps = []
    for name, port, gport in (("v1", http_port, grpc_port), ("v2", http_port + 1, grpc_port + 1)):
        apps.append(
            children.start(
                f"app-{name}",
                *("meshgate.control.demo_app", "--port", str(port), "--grpc-port", str(gport)),
                *("--name", name),
            )
        )
    for port, proc in zip((http_port, http_port + 1), apps, strict=True):
        _wait_http(f"http://127.0.0.1:{port}/pets", 20, proc)


def _watch(children: Children, stopped: Callable[[], bool]) -> bool:
    """Until a signal asks to stop (True) or a child exits (False, said on stderr)."""
    while not stopped():
        for proc in children.procs:
            if proc.poll() is not None:
                print(f"demo: {_name(proc)} exited with {proc.returncode}; stopping", file=sys.stderr)
                return False
        time.sleep(0.2)
    return True


def _print_lines(
    args: argparse.Namespace, shown: list[Line], listen: str, admin: str, control: str, work: Path, keep: bool
) -> None:
    print("\nmeshgate demo is up. Try (from the repo root):\n")
    for line in shown:
        print("".join(f"  {x}\n" for x in line.render().splitlines()))
    then = "kept" if keep else "removed on stop; --keep keeps them"
    print(f"logs: {work}/*.log ({then})    Ctrl-C stops everything.", flush=True)
    if args.json_ready:
        ready = {"listen": listen, "admin": admin, "control": control, "work": str(work)}
        print(json.dumps(ready), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshgate demo", description=__doc__)
    parser.add_argument("--etcd", help="use this etcd endpoint (HOST:PORT) instead of a private one")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MESHGATE_DEMO_PORT", "8080")))
    parser.add_argument("--grpc-port", type=int, default=8081, help="the sidecar's gRPC listener")
    parser.add_argument("--admin-port", type=int, default=15000)
    parser.add_argument(
        "--control-port", type=int, default=7070, help="control's mTLS port; its token port is the next one"
    )
    parser.add_argument("--app-port", type=int, default=9001, help="v1 on this port, v2 on the next")
    parser.add_argument(
        "--app-grpc-port",
        type=int,
        default=0,
        help="the apps' gRPC ports: v1 here, v2 next (default app port + 10)",
    )
    parser.add_argument("--work-dir", help="logs, etcd data and sidecar state (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, etcd data) on stop")
    parser.add_argument("--json-ready", action="store_true", help=argparse.SUPPRESS)
    return run(parser.parse_args(argv))
