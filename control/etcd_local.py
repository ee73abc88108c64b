"""Starting a private, single-member etcd on loopback (demo, tests, bench).

Runs the real `etcd` binary (Debian's etcd-server) with its own data dir and
free loopback ports; never a mock store. Plaintext, or TLS with client
certificates from a CA of its own (tests of etcd TLS).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshgate.control.ca import Authority, generate_ca
from meshgate.control.etcd_client import EtcdTLS


class EtcdNotFound(RuntimeError):
    """The etcd binary is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port whose next one is free too (control's token port is its port + 1 by default)."""
    while True:
        port = free_port(host)
        try:
            with socket.create_server((host, port + 1)):
                return port
        except OSError:
            continue


def find_etcd() -> str:
    for candidate in (os.environ.get("MESHGATE_ETCD_BIN"), shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise EtcdNotFound("etcd binary not found: install Debian's etcd-server (apt-get install etcd-server)")


def write_cert(
    directory: Path, name: str, ca: tuple[bytes, bytes], hosts: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A certificate from `ca` (cert PEM, key PEM) for `name`: a client certificate, a server one too
    for `hosts` when given; written to directory/NAME.crt and NAME.key (0600). Returns both paths."""
    cert, key = Authority(*ca).peer_cert(name, hosts)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert)
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key)
    return cert_file, key_file


@dataclass
class LocalEtcd:
    """A private etcd process. Use as a context manager or call start()/stop().

    With `tls`, it makes a CA of its own, serves clients only over TLS and only to certificates from
    that CA (`--client-cert-auth`); `client_tls` is then a client's CA, certificate and key. Peers
    (one member, loopback) stay plaintext."""

    data_dir: Path | None = None
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    tls: bool = False
    client_tls: EtcdTLS | None = field(default=None, init=False)
    ca: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False)  # (cert, key) PEM
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def _tls_args(self, directory: Path) -> list[str]:
        """Make the CA, the server and the client certificates; etcd's TLS flags."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca = generate_ca("meshgate-local-etcd-ca")
        ca_file = directory / "ca.crt"
        ca_file.write_bytes(self.ca[0])
        cert, key = write_cert(directory, "server", self.ca, [self.host, "localhost"])
        client_cert, client_key = write_cert(directory, "client", self.ca)
        self.client_tls = EtcdTLS(ca=ca_file, cert=client_cert, key=client_key)
        return [
            *("--cert-file", str(cert), "--key-file", str(key)),
            *("--trusted-ca-file", str(ca_file), "--client-cert-auth"),
        ]

    def start(self, timeout: float = 15.0) -> LocalEtcd:
        binary = find_etcd()
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="meshgate-etcd-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        client, peer = self.client_url, f"http://{self.host}:{self.peer_port}"
        tls = self._tls_args(self.data_dir / "tls") if self.tls else []
        log = open(self.data_dir / "etcd.log", "ab")
        self._proc = subprocess.Popen(
            [
                binary,
                *("--name", "meshgate-local", "--data-dir", str(self.data_dir / "member-data")),
                *("--listen-client-urls", client, "--advertise-client-urls", client),
                *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                *("--initial-cluster", f"meshgate-local={peer}", "--initial-cluster-state", "new"),
                *tls,
                *("--log-level", "error"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_healthy(timeout)
        return self

    def _health_context(self) -> ssl.SSLContext | None:
        if self.client_tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.client_tls.ca))
        context.load_cert_chain(str(self.client_tls.cert), str(self.client_tls.key))
        return context

    def _wait_healthy(self, timeout: float) -> None:
        assert self._proc is not None
        context = self._health_context()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}; see {self.data_dir}/etcd.log")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1, context=context) as resp:
                    if b"true" in resp.read():
                        return
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
