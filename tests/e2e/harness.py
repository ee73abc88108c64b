"""Real processes for end-to-end tests: control service, sidecar, sample backends."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
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
                    # /ready can say 200 (a persisted snapshot applied) a moment before the HTTP
                    # listener is bound: the tests' requests wait for both
                    wait_port(self.port, max(0.1, deadline - time.monotonic()), self.proc.popen)
                    return body
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.03)
        raise RuntimeError(f"sidecar not ready after {timeout}s: {last}; log: {self.proc.output()[-2000:]}")

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return http_get_json(self.port, path)


# A sidecar that exits at once on SIGTERM (the default drains for up to 5 s, ~1 s on an idle one):
# for module fixtures whose teardown does not test draining.
NO_DRAIN = ("--drain-seconds", "0")


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


def http_request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, headers (lower-cased names), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class AioServer:
    """An aiohttp app served on loopback from its own thread and loop, for the test's side of a
    feature: a JWKS endpoint, an authorizer service, a function. `with AioServer(app) as srv:
    srv.port`; handlers may record what they got in plain lists (read after the response)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from aiohttp import web

        runner = web.AppRunner(self.app, access_log=None)
        try:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()
            return
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> AioServer:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"test server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def mesh(etcd_endpoint: str, tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(etcd_endpoint, tmp_path)
    try:
        yield m
    finally:
        m.stop_all()
