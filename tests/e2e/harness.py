"""Real processes for end-to-end tests: control service, sidecar, sample backends."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from meshgate.control.etcd_local import free_port
from meshgate.sidecar.credentials import cli_credentials
from meshgate.v1 import control_pb2_grpc


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.args!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def http_get_json(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body else {}
    finally:
        conn.close()


@dataclass
class Proc:
    """A child process with its log file."""

    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env()
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        code = self.popen.returncode
        self.popen = None
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def meshgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshgate.control.cli", *args]


@dataclass
class Mesh:
    """etcd (shared) + control + sidecars + backends, all on loopback, for one test."""

    etcd_endpoint: str
    workdir: Path
    prefix: str = field(default_factory=lambda: f"/e2e-{uuid.uuid4().hex[:8]}/")
    procs: list[Proc] = field(default_factory=list)
    control_port: int = 0
    token_port: int = 0

    def start_control(self, port: int | None = None, extra: tuple[str, ...] = ()) -> Proc:
        self.control_port = port or self.control_port or free_port()
        self.token_port = self.token_port or free_port()
        proc = Proc(
            meshgate(
                "control",
                "--etcd",
                self.etcd_endpoint,
                "--listen",
                f"127.0.0.1:{self.control_port}",
                "--token-listen",
                f"127.0.0.1:{self.token_port}",
                "--prefix",
                self.prefix,
                *extra,
            ),
            self.workdir / f"control-{self.control_port}.log",
        ).start()
        self.procs.append(proc)
        wait_port(self.control_port, proc=proc.popen)
        return proc

    def start_backend(self, name: str) -> int:
        port = free_port()
        proc = Proc(
            [sys.executable, "-m", "meshgate.control.demo_app", "--port", str(port), "--name", name],
            self.workdir / f"app-{name}.log",
        ).start()
        self.procs.append(proc)
        wait_port(port, proc=proc.popen)
        return port

    def start_sidecar(
        self,
        node_id: str = "sc-1",
        labels: str = "app=pets",
        *,
        state_dir: Path | None = None,
        wait_ready: bool = True,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        namespace: str = "default",
    ) -> Sidecar:
        port = port or free_port()
        admin = free_port()
        state = state_dir or self.workdir / f"state-{node_id}"
        args = [
            "sidecar",
            "--control",
            f"127.0.0.1:{self.control_port}",
            "--control-token-address",
            f"127.0.0.1:{self.token_port}",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--node-id",
            node_id,
            "--pod",
            node_id,
            "--namespace",
            namespace,
            "--state-dir",
            str(state),
            *extra,
        ]
        for label in labels.split(","):
            if label:
                args += ["--label", label]
        proc = Proc(meshgate(*args), self.workdir / f"sidecar-{node_id}.log").start()
        self.procs.append(proc)
        sc = Sidecar(proc, port, admin, state)
        if wait_ready:
            sc.wait_ready()
        return sc

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`meshgate --control 127.0.0.1:PORT ARGS...` as a user runs it; check: exit code 0 or raise."""
        out = subprocess.run(
            meshgate("--control", f"127.0.0.1:{self.control_port}", *args),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"meshgate {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return out

    def apply(self, text: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Write the YAML a user would write to a file and `meshgate apply -f` it."""
        path = self.workdir / f"apply-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(text)
        return self.cli("apply", "-f", str(path), check=check)

    def stub(self) -> control_pb2_grpc.ControlServiceStub:
        channel = grpc.secure_channel(f"127.0.0.1:{self.control_port}", cli_credentials().channel())
        return control_pb2_grpc.ControlServiceStub(channel)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class Sidecar:
    proc: Proc
    port: int
    admin_port: int
    state_dir: Path

    def wait_ready(self, timeout: float = 20.0, version: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.popen is not None and self.proc.popen.poll() is not None:
                raise RuntimeError(f"sidecar exited: {self.proc.output()[-2000:]}")
            try:
                status, body = http_get_json(self.admin_port, "/ready", timeout=1)
                last = (status, body)
                if status == 200 and (version is None or body.get("version") == version):
                    return body
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.03)
        raise RuntimeError(f"sidecar not ready after {timeout}s: {last}; log: {self.proc.output()[-2000:]}")

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return http_get_json(self.port, path)


def wait_until(pred: Callable[[], object], timeout: float = 10.0, what: str = "") -> Any:
    """Poll pred until it returns something truthy (returned), for at most timeout seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (OSError, ValueError) as exc:  # not listening yet, a half-written line
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.03)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@contextmanager
def mesh(etcd_endpoint: str, tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(etcd_endpoint, tmp_path)
    try:
        yield m
    finally:
        m.stop_all()
