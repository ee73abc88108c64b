"""Starting a private, single-member etcd on loopback (demo, tests, bench).

Runs the real `etcd` binary (Debian's etcd-server) with its own data dir and
free loopback ports; never a mock store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class EtcdNotFound(RuntimeError):
    """The etcd binary is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_etcd() -> str:
    for candidate in (os.environ.get("MESHGATE_ETCD_BIN"), shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise EtcdNotFound("etcd binary not found: install Debian's etcd-server (apt-get install etcd-server)")


@dataclass
class LocalEtcd:
    """A private etcd process. Use as a context manager or call start()/stop()."""

    data_dir: Path | None = None
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, timeout: float = 15.0) -> LocalEtcd:
        binary = find_etcd()
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="meshgate-etcd-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        log = open(self.data_dir / "etcd.log", "ab")
        self._proc = subprocess.Popen(
            [
                binary,
                "--name",
                "meshgate-local",
                "--data-dir",
                str(self.data_dir / "member-data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"meshgate-local={peer}",
                "--initial-cluster-state",
                "new",
                "--log-level",
                "error",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}; see {self.data_dir}/etcd.log")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as resp:
                    if b"true" in resp.read():
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalEtcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
